"""No threads while serving: the pools' maintenance and the governor's trims run on the
event loop, so glibc goes on running a served process as single-threaded
(``arenapool._ticks``; benchmarks/README.md, "No threads while serving")."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]
import pytest
from _memhelpers import poll_until
from _threadserver import ThreadServer

from arenapool import SlabPool
from arenapool.memory import libc_single_threaded
from harness.modes import resolve_modes
from harness.server import Server

KiB = 1024
MiB = 1024 * KiB


def body_of(size: int, rng: random.Random) -> bytes:
    """A JSON body of about ``size`` bytes: ``{"records": [{"value", "tag"}, ...]}``."""
    records = [{"value": rng.randrange(1000), "tag": "t" * 40} for _ in range(size // 64 + 1)]
    return orjson.dumps({"records": records})


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ThreadServer, Any]]:
    server = await ThreadServer.start(*getattr(request, "param", ()))
    try:
        async with aiohttp.ClientSession() as session:
            yield server, session
    finally:
        await server.stop()


async def load(server: ThreadServer, session: aiohttp.ClientSession) -> None:
    """Bodies of 1 KiB to 4 MiB, eight at a time, some of them chunked (no length)."""
    rng = random.Random(7)
    bodies = [body_of(size, rng) for size in (KiB, 200 * KiB, MiB, 4 * MiB) for _ in range(4)]

    async def post(i: int, body: bytes) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(body), 64 * KiB):
                yield body[at : at + 64 * KiB]

        data: Any = chunks() if i % 3 == 0 else body
        async with session.post(f"{server.url}/ingest", data=data) as response:
            assert 200 == response.status, await response.text()
            assert len(orjson.loads(body)["records"]) == (await response.json())["count"]

    for start in range(0, len(bodies), 8):
        await asyncio.gather(*(post(i, b) for i, b in enumerate(bodies[start : start + 8], start)))


async def threads_of(server: ThreadServer, session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get(f"{server.url}/threads") as response:
        assert 200 == response.status
        result: dict[str, Any] = await response.json()
        return result


async def trim(server: ThreadServer, session: aiohttp.ClientSession, reason: str) -> None:
    async with session.post(f"{server.url}/trim", params={"reason": reason}) as response:
        assert 200 == response.status


async def test_a_loaded_server_with_its_trims_starts_no_thread(
    served: tuple[ThreadServer, aiohttp.ClientSession],
) -> None:
    """Under bodies of 1 KiB to 4 MiB, with a busy and an idle trim, and while its pool's
    maintenance gives idle blocks back, the server runs on one thread, and glibc still
    counts it single-threaded (``malloc`` and ``free`` take no lock)."""
    server, session = served
    await load(server, session)
    await trim(server, session, "busy")
    await trim(server, session, "idle")
    await load(server, session)

    async def decayed() -> dict[str, Any] | None:
        seen = await threads_of(server, session)
        return seen if seen["returned_bytes"] > 0 else None

    # the maintenance's ticks (decay 0.2 s) give the idle blocks back, on the loop
    seen, _ = await poll_until(decayed, timeout=10.0, what="the maintenance's decay")
    assert 2 == seen["trims"]
    assert (1, ["MainThread"], True) == (
        seen["python"],
        seen["names"],
        seen["libc_single_threaded"],
    )


@pytest.mark.parametrize("served", [("--trim-in-thread",)], indirect=True)
async def test_trims_in_a_thread_leave_the_process_multi_threaded_for_good(
    served: tuple[ThreadServer, aiohttp.ClientSession],
) -> None:
    """``trim_in_thread`` trims in the loop's executor: the thread stays, and glibc runs
    the process as multi-threaded from then on (what the default avoids)."""
    server, session = served
    await load(server, session)
    before = await threads_of(server, session)
    await trim(server, session, "busy")
    after = await threads_of(server, session)

    assert (1, True) == (before["python"], before["libc_single_threaded"])
    assert (2, False) == (after["python"], after["libc_single_threaded"])


def pool_threads(name: str) -> list[str]:
    """The names of the threads of the pool named ``name`` (other tests' pools may have
    theirs)."""
    return [t.name for t in threading.enumerate() if t.name.endswith(f"-{name}")]


def test_a_pool_made_before_the_loop_is_maintained_on_it(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A pool made before its loop runs (at import, in ``setup()``) starts its
    maintenance with its first return, on the loop that served it: its decay gives the
    blocks back with no thread of arenapool's. Once that loop is gone, the pool's next
    slab (a lend from plain code) moves the maintenance to a thread, and decay goes on."""
    pool = make_pool(budget="8MiB", decay=0.05, name="before-loop")

    async def unmapped() -> bool:
        return pool.stats()["mapped_bytes"] == 0

    async def serve() -> None:
        pool.give_back([pool.lend(MiB)])
        await poll_until(unmapped, timeout=5.0, interval=0.01, what="decay on the loop")
        assert [] == pool_threads("before-loop")

    asyncio.run(serve())
    returned = pool.stats()["returned_bytes"]
    assert returned >= MiB

    # no loop now: the lend maps a slab afresh, and a thread takes the maintenance over
    pool.give_back([pool.lend(MiB)])

    deadline = time.monotonic() + 5.0
    while pool.stats()["mapped_bytes"] > 0:
        assert time.monotonic() < deadline, "decay did not run on the thread"
        time.sleep(0.01)
    assert pool.stats()["returned_bytes"] >= returned + MiB
    assert ["arenapool-decay-before-loop"] == pool_threads("before-loop")


def test_returns_from_another_thread_are_maintained_on_the_loop(
    make_pool: Callable[..., SlabPool],
) -> None:
    """Blocks given back past ``retain`` by a thread with no loop, while the pool ticks
    on a loop elsewhere, are decommitted down to ``retain`` by a pass on that loop: the
    pool starts no thread of its own for them."""
    # ticks every 900 s (decay / 4): within the test only the handed-over pass can run
    pool = make_pool(budget="32MiB", decay=3600, retain="1MiB", name="hand-off")

    def give_back_many() -> None:  # in the loop's executor: a thread with no loop
        pool.give_back([pool.lend(MiB) for _ in range(8)])

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        pool.give_back([pool.lend(64 * KiB)])  # the first return: ticks on this loop
        await loop.run_in_executor(None, give_back_many)

        async def held() -> bool:
            return pool.stats()["idle_committed_bytes"] <= MiB

        await poll_until(held, timeout=5.0, interval=0.01, what="retain held on the loop")
        assert [] == pool_threads("hand-off")

    asyncio.run(serve())


def test_libc_single_threaded_reads_glibcs_own_flag(run_python: Callable[..., Any]) -> None:
    """True in a fresh interpreter, false for good once a thread has run, even after it
    ended (glibc 2.32 and later, as here)."""
    assert libc_single_threaded() is not None
    out = run_python(
        "import json, threading\n"
        "from arenapool.memory import libc_single_threaded as single\n"
        "before = single()\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print(json.dumps([before, single(), threading.active_count()]))\n"
    )
    assert [True, False, 1] == out


@pytest.mark.parametrize(("name", "threads"), [("orjson", 1), ("orjson+thread", 2)])
async def test_the_thread_modes_serve_with_one_thread_more(name: str, threads: int) -> None:
    """The benchmarks' ``+thread`` modes (the example service's ``--idle-thread``) answer
    as their service does, from a process with one thread more than it: what a thread
    costs a server is then measured beside the same server without it."""
    mode = {m.name: m for m in resolve_modes([name])[0]}[name]
    body = body_of(100 * KiB, random.Random(3))
    with Server(mode) as running:
        assert running.proc is not None
        process = psutil.Process(running.proc.pid)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{running.url}/ingest", data=body) as response,
        ):
            assert 200 == response.status
            assert len(orjson.loads(body)["records"]) == (await response.json())["count"]
        assert threads == process.num_threads()
