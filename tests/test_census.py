"""Heap census: pympler summaries and diffs in a forked child, without stalling the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # psutil ships no types
import pytest
from _memhelpers import poll_until
from aiohttp import web
from aiohttp.test_utils import TestServer

from arenapool._census import Census, _suspects
from arenapool._errors import CensusFailed, CensusRateLimited
from arenapool.aiohttp import AdminConfig, add_admin_routes
from harness.steady import SteadyGets

ServerFactory = Callable[..., Awaitable[TestServer]]


class LeakedWidget:
    """The type the tests leak on purpose, so the census diff must name it."""

    def __init__(self, n: int) -> None:
        self.n = n


def grew(result: dict[str, Any], suffix: str) -> dict[str, Any] | None:
    assert result["diff"] is not None
    return next((r for r in result["diff"]["grew"] if r["type"].endswith(suffix)), None)


async def test_census_summarises_and_diffs_by_type() -> None:
    """The first census has no diff; the next names the leaked type and its exact growth."""
    census = Census(min_interval=0, top=10)
    first = await census.run()
    assert ("fork", None) == (first["mode"], first["diff"])
    assert first["objects"] > 1000
    assert 10 == len(first["top_by_size"])
    assert {"type", "count", "size"} == set(first["top_by_size"][0])
    leaked = [LeakedWidget(i) for i in range(50_000)]
    second = await census.run()
    row = grew(second, ".LeakedWidget")
    assert row is not None, second["diff"]["grew"]
    assert 50_000 == row["count_delta"]
    assert row["size_delta"] > 0
    assert census.last is second
    del leaked


async def test_census_is_rate_limited() -> None:
    """A second census inside min_interval is refused with the seconds to wait."""
    census = Census(min_interval=60)
    await census.run()
    with pytest.raises(CensusRateLimited, match=r"rate limited: one per 60 s, retry in 5\d\.\d s"):
        await census.run()


async def test_one_census_at_a_time() -> None:
    """A census started while another runs is refused rather than queued."""
    census = Census(min_interval=0)
    first = asyncio.ensure_future(census.run())
    await poll_until(
        lambda: asyncio.sleep(0, census.running), timeout=5, what="the first census to start"
    )
    with pytest.raises(CensusRateLimited, match="already running"):
        await census.run()
    assert (await first)["objects"] > 0


async def test_thread_fallback_gives_the_same_shape() -> None:
    """Without fork the census runs in a worker thread and says so."""
    census = Census(min_interval=0, use_fork=False)
    await census.run()
    leaked = [LeakedWidget(i) for i in range(1000)]
    result = await census.run()
    assert "thread" == result["mode"]
    row = grew(result, ".LeakedWidget")
    assert row is not None
    assert 1000 == row["count_delta"]
    del leaked


async def test_tracemalloc_sites_when_tracing() -> None:
    """With tracemalloc on, the census lists the top allocation sites."""
    tracemalloc.start()
    try:
        keep = [bytes(1000) for _ in range(2000)]
        result = await Census(min_interval=0, trace_top=5).run()
    finally:
        tracemalloc.stop()
    assert result["tracemalloc"] is not None
    assert 5 == len(result["tracemalloc"])
    assert any("test_census.py" in s["site"] for s in result["tracemalloc"])
    del keep


async def test_overrunning_child_is_killed_and_reaped() -> None:
    """A census past its timeout fails clearly, and its child leaves no zombie behind."""
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    with pytest.raises(CensusFailed, match=r"overran its 0\.001 s timeout"):
        await Census(min_interval=0, timeout=0.001).run()

    async def reaped() -> bool:
        return not ({p.pid for p in me.children()} - before)

    await poll_until(reaped, timeout=10, what="the census child to be reaped")


async def test_connections_closed_during_a_census_really_close() -> None:
    """A socket the parent closes mid-census reaches the peer as EOF before the census ends.

    The child drops its inherited descriptors first; otherwise its copy would keep the
    connection open (no FIN) until it exits.
    """
    ballast = [{"i": i} for i in range(150_000)]  # a census long enough to close inside
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
    server_side = await asyncio.wait_for(accepted, 5)
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    census = Census(min_interval=0)
    running = asyncio.ensure_future(census.run())

    def live_children() -> set[int]:
        alive = {p.pid for p in me.children() if p.status() != psutil.STATUS_ZOMBIE}
        return alive - before

    try:
        await poll_until(
            lambda: asyncio.sleep(0.01, live_children()), timeout=5, what="the census child"
        )
        server_side.close()
        assert b"" == await asyncio.wait_for(client_reader.read(), 5)
        assert live_children(), "EOF arrived only once the census child had exited"
    finally:
        await running
        client_writer.close()
        server.close()
        await server.wait_closed()
    del ballast


@pytest.mark.slow
async def test_census_under_load_keeps_serving(aiohttp_server: ServerFactory) -> None:
    """Under steady load, responses keep flowing while each census runs in its child,
    and a leak between two censuses shows in the second one's diff.

    Four keep-alive clients each send a request every ~5 ms (a steady few hundred
    requests a second, not a saturating flood that would leave the child no CPU). The
    heap carries ~400k extra objects, so each census walks for a while (seconds, here)
    in its forked child while the loop serves. How long the loop stalls is a measured
    figure (``benchmarks/census_stall.py``), not a timed assertion here.
    """
    ballast = [{"i": i, "s": str(i)} for i in range(200_000)]
    gc.freeze()  # the ballast is long-lived: keep the test's own GC passes out of the census
    token = "census-token"

    async def work(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/work", work)
    add_admin_routes(app, AdminConfig(token=token, census_min_interval=0))
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"

    async def census(session: aiohttp.ClientSession) -> tuple[dict[str, Any], int]:
        """The census's result and the responses served while it ran."""
        served = load.answered
        async with session.post(
            base + "/_arenapool/census", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert 200 == resp.status, await resp.text()
            result = await resp.json()
        return result, load.answered - served

    try:
        async with aiohttp.ClientSession() as session:
            load = SteadyGets(session, base + "/work", clients=4, pace=0.005)
            load.start()
            await poll_until(
                lambda: asyncio.sleep(0, load.answered > 50), timeout=10, what="load to start"
            )
            first, served1 = await census(session)
            leaked = [LeakedWidget(i) for i in range(50_000)]
            second, served2 = await census(session)
            await load.stop()
    finally:
        gc.unfreeze()
    report = (
        f"census took {first['seconds']:.2f} s / {second['seconds']:.2f} s over "
        f"{first['objects']} objects; {served1} / {served2} responses served meanwhile"
    )
    print("\n" + report)
    assert ("fork", "fork") == (first["mode"], second["mode"])
    assert min(served1, served2) >= 20, report
    row = grew(second, ".LeakedWidget")
    assert row is not None, second["diff"]["grew"][:5]
    assert row["count_delta"] >= 50_000
    del leaked, ballast
    with contextlib.suppress(Exception):
        gc.collect()


class SuspectWidget:
    """A type that grows in every census: the suspects list must name it."""


async def test_a_type_grown_in_each_of_the_last_censuses_is_a_suspect() -> None:
    """With suspect_censuses=2, a type grown before each of the last two censuses is a
    suspect (with its counts), one grown once then dropped is not, and the first two
    censuses have no suspects list yet."""
    census = Census(min_interval=0, top=50, suspect_censuses=2)
    kept: list[SuspectWidget] = []
    once = [LeakedWidget(i) for i in range(5_000)]
    results = []
    for _ in range(3):
        kept.extend(SuspectWidget() for _ in range(1_000))
        results.append(await census.run())
        once = []
    assert results[0]["suspects"] is None
    assert results[1]["suspects"] is None
    suspects = {r["type"].rsplit(".", 1)[-1]: r for r in results[2]["suspects"]}
    assert "SuspectWidget" in suspects
    assert [1_000, 2_000, 3_000] == suspects["SuspectWidget"]["counts"]
    assert 2_000 == suspects["SuspectWidget"]["growth"]
    assert "LeakedWidget" not in suspects
    del kept, once


def test_suspects_need_growth_at_every_step() -> None:
    """The rule alone: strictly more at every census, counting an absent type as 0."""
    frames = [[["a", 1, 0], ["b", 5, 0]], [["a", 2, 0], ["b", 4, 0]]]
    rows = [["a", 3, 0], ["b", 6, 0], ["c", 9, 0]]
    found = _suspects(frames, rows, 2, 10)
    assert [{"type": "a", "count": 3, "growth": 2, "counts": [1, 2, 3]}] == found
    assert _suspects(frames[:1], rows, 2, 10) is None
