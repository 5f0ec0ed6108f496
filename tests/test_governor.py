"""The governor returns memory when idle and sheds load past the hard watermark."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # psutil ships no types
import pytest
from _governed import hand_calibrated, lend_and_calibrate, scrape
from _memhelpers import MiB, ServerProcess, allocate, poll_until
from aiohttp import web
from aiohttp.test_utils import TestClient

from arenapool import SlabPool
from arenapool._errors import InvalidSize
from arenapool._governor import Governor, GovernorConfig
from arenapool._memory import current_rss
from arenapool._units import format_size
from arenapool.aiohttp import AdminConfig, add_admin_routes, governor_middleware, setup

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

#: After a 200 MiB burst the governed server must be back within this much of its
#: baseline RSS (the burst leaves ~3 MiB of 1 KiB pins alive on purpose)...
SETTLED_SLACK = 40 * MiB
#: ...within this many seconds, without any further request (interval 0.1 s,
#: idle_after 0.3 s: the trim lands in about 0.4 s; the rest is room for a busy machine).
SETTLE_DEADLINE = 10.0


def test_config_rejects_soft_above_hard() -> None:
    """A soft watermark above the hard one is refused, naming both sizes."""
    with pytest.raises(InvalidSize, match=r"soft_limit \(2.0 GiB\) must not exceed"):
        GovernorConfig(soft_limit="2GiB", hard_limit="1GiB")


def test_config_rejects_mmap_threshold_above_glibc_cap() -> None:
    """glibc takes mmap thresholds up to 32 MiB; a larger one is refused up front."""
    with pytest.raises(InvalidSize, match="at most 32 MiB"):
        GovernorConfig(mmap_threshold="64MiB")


@pytest.mark.parametrize(
    ("options", "held"),
    [
        ({}, True),
        ({"hold_heap": False}, False),
        ({"busy_trim_threshold": None}, False),  # nothing would trim the heap under load
        ({"heap_trim_every": 1.0}, False),  # the plain periodic trim leaves glibc be
        ({"mmap_threshold": "1MiB"}, False),  # a low threshold, pinned on purpose
    ],
)
def test_a_governor_that_trims_under_load_holds_the_heap(
    run_python: Callable[..., Any], options: dict[str, Any], held: bool
) -> None:
    """By default a running governor holds the C heap (GovernorConfig.hold_heap): an
    8 MiB buffer then comes from the heap, where a fresh process would map it; not
    when told not to, without busy trims, or with an mmap threshold of its own."""
    out = run_python(
        f"""
import asyncio, json
from arenapool import Governor, GovernorConfig
from arenapool.memory import heap_info
async def main():
    governor = Governor(GovernorConfig(use_cgroup=False, **{options!r}))
    governor.start()
    before = heap_info().mmapped
    big = bytearray(8 * 1024 * 1024)
    mapped = heap_info().mmapped - before
    held = governor.stats()["heap_held"]
    await governor.stop()
    return {{"held": held, "mapped": mapped}}
print(json.dumps(asyncio.run(main())))
"""
    )
    assert held is out["held"]
    if held:
        assert 0 == out["mapped"], "held: the buffer came from the heap"
    else:
        assert out["mapped"] >= 8 * MiB, "not held: the first large buffer is mapped"


def test_limits_default_from_cgroup(tmp_path: Path) -> None:
    """With no explicit watermarks, soft/hard are 80%/90% of the cgroup limit."""
    (tmp_path / "memory.max").write_text("1073741824\n")
    config = GovernorConfig(cgroup_root=str(tmp_path))
    soft, hard, source = config.resolve_limits()
    assert (int(0.8 * 1024 * MiB), int(0.9 * 1024 * MiB), "cgroup") == (soft, hard, source)


def test_explicit_limits_win_and_absent_means_off(tmp_path: Path) -> None:
    """Config beats the cgroup; no config and no cgroup limit disables watermarks."""
    (tmp_path / "memory.max").write_text("1073741824\n")
    config = GovernorConfig(soft_limit="100MiB", hard_limit="200MiB", cgroup_root=str(tmp_path))
    assert (100 * MiB, 200 * MiB, "config") == config.resolve_limits()
    (tmp_path / "memory.max").write_text("max\n")
    assert (None, None, None) == GovernorConfig(cgroup_root=str(tmp_path)).resolve_limits()


async def test_lifecycle_and_repr() -> None:
    """start/stop are idempotent, `async with` runs it, and the repr shows live state."""
    governor = Governor(GovernorConfig(interval=0.05, use_cgroup=False))
    assert repr(governor).startswith("<Governor [stopped | rss -, soft -, hard -")
    async with governor:
        governor.start()
        assert governor.running
        await poll_until(
            lambda: asyncio.sleep(0, governor.stats()["checks"] >= 2),
            timeout=5,
            what="two governor checks",
        )
        assert "running" in repr(governor)
    assert governor.stats()["running"] is False
    await governor.stop()
    assert repr(governor).startswith("<Governor [stopped | rss ")


async def test_busy_server_is_not_trimmed_until_idle(caplog: pytest.LogCaptureFixture) -> None:
    """With busy trims off (``busy_trim_threshold=None``), reclaimable heap is left alone
    while a request is in flight, then trimmed and logged."""
    caplog.set_level(logging.INFO, logger="arenapool.governor")
    governor = Governor(
        GovernorConfig(
            interval=1,
            idle_after=0,
            trim_threshold="8MiB",
            use_cgroup=False,
            busy_trim_threshold=None,
        )
    )
    await governor.trim()  # start from a trimmed heap: the reclaim floor is set
    governor.note_request_start()
    allocate(64 * MiB)  # freed at once, the pins keep the holes in the heap
    await governor.check()
    assert 1 == governor.stats()["trims"]
    governor.note_request_end()
    await governor.check()
    stats = governor.stats()
    assert 2 == stats["trims"]
    assert "idle" == stats["actions"][-1]["reason"]
    assert stats["trimmed_bytes"] >= 32 * MiB
    assert any("trim (idle)" in r.getMessage() for r in caplog.records)
    await governor.check()  # nothing new to reclaim: no further trim
    assert 2 == governor.stats()["trims"]


def test_config_rejects_a_heap_trim_period_that_is_not_positive() -> None:
    with pytest.raises(InvalidSize, match="heap_trim_every must be None or positive"):
        GovernorConfig(heap_trim_every=0)


async def test_heap_trim_every_gives_the_heap_back_under_load() -> None:
    """With ``heap_trim_every``, a check under load calls ``malloc_trim(0)`` itself, at
    most once a period, and nothing else: no trim action, no busy-trim policy, the pools
    left alone. The heap a request freed goes back while it is still in flight."""
    governor = Governor(
        GovernorConfig(interval=1, idle_after=60, use_cgroup=False, heap_trim_every=1.0)
    )
    await governor.trim()  # start from a trimmed heap
    governor.note_request_start()
    try:
        freed_resident = allocate(64 * MiB)  # freed at once, the pins keep the holes
        await governor.check()
        after = current_rss()
        first = governor.stats()
        await governor.check()  # the same period: no second call
        second = governor.stats()
    finally:
        governor.note_request_end()
    assert (1, 1) == (first["heap_trims"]["count"], second["heap_trims"]["count"])
    assert first["heap_trims"]["every"] == 1.0
    assert (1, None) == (second["trims"], second["busy_trim"])  # only the trim above
    assert freed_resident - after >= 32 * MiB
    # its yield, read from the main heap's pages; the next check found none of it back
    # (nothing ran between the two checks)
    heap = second["heap_returns"]["heap"]
    assert 1 == heap["trims"]
    assert heap["returned_bytes"] >= 32 * MiB
    assert (heap["returned_bytes"], 0) == (
        heap["judged_bytes"],
        first["heap_returns"]["heap"]["judged_bytes"],
    )
    assert 0 <= heap["back_bytes"] < MiB
    scraped = scrape(governor)
    assert 1 == scraped["arenapool_governor_heap_trims_total"]
    assert scraped["arenapool_governor_heap_trims_seconds_total"] > 0
    returned = "arenapool_governor_heap_returned_bytes_total{reason=heap}"
    assert heap["returned_bytes"] == scraped[returned]
    assert heap["back_bytes"] == scraped["arenapool_governor_heap_back_bytes_total{reason=heap}"]
    assert scraped["arenapool_c_heap_resident_bytes"] > 0


@pytest.mark.parametrize("every", [0, -3, 2.5, True])
def test_config_rejects_a_gc_full_every_that_is_not_a_count(every: object) -> None:
    with pytest.raises(InvalidSize, match="gc_full_every must be None or a whole number"):
        GovernorConfig(gc_full_every=every)  # type: ignore[arg-type]


@pytest.mark.parametrize("every", [0, -700, 700.0, False])
def test_config_rejects_a_gc_young_every_that_is_not_a_count(every: object) -> None:
    with pytest.raises(InvalidSize, match="gc_young_every must be None or a whole number"):
        GovernorConfig(gc_young_every=every)  # type: ignore[arg-type]


def test_config_rejects_a_spread_trim_period_that_is_not_positive() -> None:
    with pytest.raises(InvalidSize, match="spread_trim_every must be None or positive"):
        GovernorConfig(spread_trim_every=-1.0)


async def test_spread_sizes_trim_the_heap_on_the_clock_and_a_steady_size_trims_busy() -> None:
    """``spread_trim_every`` (the default, 1 s): while a pool's sizes are spread
    (``SlabPool.spread``, judged from real lends at a real calibration pass), a check
    under load calls ``malloc_trim(0)`` on its clock, in place of the busy trims, and the
    freed heap goes back while the request is in flight. Under one steady size the busy
    rule trims instead; ``spread_trim_every=None`` keeps the busy rule for any sizes."""

    async def run(
        sizes: list[int], every: float | None, *, trim_first: bool
    ) -> tuple[dict[str, Any], dict[str, float], int, int]:
        with SlabPool("64MiB", decay=None, retain=0) as pool:
            lend_and_calibrate(pool, sizes, 10, hand_calibrated(pool) + 1.0)
            governor = Governor(
                GovernorConfig(
                    interval=1, idle_after=60, use_cgroup=False, spread_trim_every=every
                ),
                pools=[pool],
            )
            if trim_first:  # start from a trimmed heap (the busy rule then waits 1 s)
                await governor.trim()
            governor.note_request_start()
            try:
                freed_resident = allocate(64 * MiB)  # freed at once, the pins keep the holes
                await governor.check()
                after = current_rss()
            finally:
                governor.note_request_end()
            return governor.stats(), scrape(governor), freed_resident, after

    spread = [64 * 1024 << i for i in range(5)] + [5 * MiB // 4, 3 * MiB // 2]
    stats, scraped, freed_resident, after = await run(spread, 1.0, trim_first=True)
    assert (True, 1, 1) == (
        stats["heap_trims"]["spread"],
        stats["heap_trims"]["spread_count"],
        stats["heap_trims"]["count"],
    )
    assert 1 == stats["heap_returns"]["spread"]["trims"]
    assert stats["heap_returns"]["spread"]["returned_bytes"] >= 32 * MiB
    assert freed_resident - after >= 32 * MiB
    # the manual trim above only (the busy rule records every trim's yield)
    assert (1, 1) == (stats["trims"], stats["busy_trim"]["trims"])
    assert (1, 1) == (
        scraped["arenapool_governor_heap_trims_spread_total"],
        scraped["arenapool_governor_heap_trims_total"],
    )

    for sizes, every in (([1 * MiB] * 3, 1.0), (spread, None)):
        stats, _, freed_resident, after = await run(sizes, every, trim_first=False)
        periodic = stats["heap_trims"] or {"spread": False, "count": 0}  # None: off
        assert (False, 0) == (periodic["spread"], periodic["count"])
        assert "spread" not in stats["heap_returns"]
        # the busy rule took the free heap instead: a trim of its own, busy
        assert (1, 1) == (stats["trims"], stats["busy_trim"]["trims"])
        assert "busy" in stats["heap_returns"]
        assert freed_resident - after >= 32 * MiB


async def test_heap_trims_count_what_the_traffic_faults_back_in() -> None:
    """A trim's pages that requests touch again before the next reading are counted as
    back: under a steady load that reuses the heap, a periodic trim returns nothing that
    lasts, and ``heap_returns`` shows it. (A period of an hour: the first check trims at
    once, and no second trim can come however slowly the second check follows.)"""
    governor = Governor(
        GovernorConfig(interval=1, idle_after=60, use_cgroup=False, heap_trim_every=3600.0)
    )
    await governor.trim()  # start from a trimmed heap
    governor.note_request_start()
    try:
        allocate(32 * MiB)  # a request's heap, freed into holes
        await governor.check()  # the heap trim gives it back
        allocate(32 * MiB)  # the next requests touch as much again
        await governor.check()  # within the period: no trim; the last one judged
    finally:
        governor.note_request_end()
    heap = governor.stats()["heap_returns"]["heap"]
    assert 1 == heap["trims"]
    assert heap["returned_bytes"] >= 16 * MiB
    assert heap["judged_bytes"] == heap["returned_bytes"]  # the second check judged it
    assert heap["back_bytes"] >= heap["judged_bytes"] // 2
    assert heap["back_bytes"] <= heap["judged_bytes"]


async def test_an_idle_server_trims_what_the_last_requests_freed() -> None:
    """Idle, the default threshold (1 MiB) trims again for a few MiB freed after the
    last trim (a burst's last requests, connections closing): left alone they would stay
    resident until the next burst. Below it, nothing happens."""
    governor = Governor(GovernorConfig(interval=1, idle_after=0, use_cgroup=False))
    await governor.trim()  # start from a trimmed heap: the reclaim floor is set
    allocate(4 * MiB)  # freed at once; the pins keep the holes in the heap
    await governor.check()
    after_leftover = governor.stats()
    await governor.check()  # nothing new freed: no further trim

    assert 2 == after_leftover["trims"]
    assert "idle" == after_leftover["actions"][-1]["reason"]
    assert 2 == governor.stats()["trims"]


async def eight_idle_blocks(pool: SlabPool, config: GovernorConfig) -> tuple[Governor, int]:
    """A governor over ``pool``, after one trim, and the pool's returned bytes once eight
    committed 1 MiB blocks sit idle in it (the three tests below)."""
    # no maintenance thread: its calibration would make the blocks a warm reserve
    pool._maintainer = threading.current_thread()
    governor = Governor(config, pools=[pool])
    await governor.trim()  # start from a trimmed heap
    blocks = [pool.lend(1 * MiB) for _ in range(8)]
    for block in blocks:
        assert block.view is not None
        block.view[:] = b"\x5a" * MiB  # commit every page
    pool.give_back(blocks)
    returned: int = pool.stats()["returned_bytes"]
    return governor, returned


async def test_a_busy_trim_leaves_the_pools_warm_blocks_committed() -> None:
    """Under load a trim returns freed C heap but not the idle blocks the traffic reuses
    (their pages would only fault back in on the next requests); once idle, a trim
    returns those too. The pool's own counter says what it gave back."""
    config = GovernorConfig(
        interval=1,
        idle_after=0,
        use_cgroup=False,
        busy_trim_threshold=0,  # always worth it: this test is about what it does
        busy_trim_interval=1e-6,  # no back-off to wait out after the first trim
    )
    with SlabPool("64MiB", decay=10.0, retain=None) as pool:
        governor, returned_before = await eight_idle_blocks(pool, config)
        governor.note_request_start()
        await governor.check()
        busy = governor.stats()["actions"][-1]["reason"]
        returned_busy = pool.stats()["returned_bytes"] - returned_before
        governor.note_request_end()
        await governor.trim(reason="idle")
        returned_idle = pool.stats()["returned_bytes"] - returned_before

    assert ("busy", 0, 8 * MiB) == (busy, returned_busy, returned_idle)


async def test_a_trim_between_two_requests_is_a_busy_one() -> None:
    """A loaded server has nothing in flight for an instant between two requests. A trim
    the busy rule makes then is still a busy one: the pool's idle blocks stay committed
    for the next request. Only ``idle_after`` without a request makes a trim a full one
    (the test above)."""
    config = GovernorConfig(
        interval=1,
        idle_after=3600,  # the request below keeps the server busy for the whole test
        use_cgroup=False,
        busy_trim_threshold=0,
        busy_trim_interval=1e-6,
    )
    with SlabPool("64MiB", decay=10.0, retain=None) as pool:
        governor, returned_before = await eight_idle_blocks(pool, config)
        governor.note_request_start()
        governor.note_request_end()  # one served, none in flight at the reading
        await governor.check()
        reason = governor.stats()["actions"][-1]["reason"]
        returned = pool.stats()["returned_bytes"] - returned_before

    assert ("busy", 0) == (reason, returned)


async def test_the_blocks_a_busy_trim_kept_warm_go_back_once_idle() -> None:
    """A busy trim leaves the idle blocks committed for the traffic; when the load ends,
    the next reading that finds the server idle trims them, although nothing grew since
    that busy trim (the blocks sat under its floor all along)."""
    # busy trims off as a rule, so that only the idle rule can act on the last reading;
    # the busy trim is asked for by hand
    config = GovernorConfig(interval=1, idle_after=0, use_cgroup=False, busy_trim_threshold=None)
    with SlabPool("64MiB", decay=10.0, retain=None) as pool:
        governor, returned_before = await eight_idle_blocks(pool, config)
        await governor.trim(reason="busy")  # the 8 blocks stay committed
        returned_busy = pool.stats()["returned_bytes"] - returned_before
        await governor.check()  # idle: nothing grew since, yet the warm blocks go
        actions = [(a["action"], a["reason"]) for a in governor.stats()["actions"]]
        returned_idle = pool.stats()["returned_bytes"] - returned_before

    assert [("trim", "manual"), ("trim", "busy"), ("trim", "idle")] == actions
    assert (0, 8 * MiB) == (returned_busy, returned_idle)


def shedding_app(governor: Governor, wiring: str = "middleware") -> web.Application:
    """/work under the governor: its own middleware, or fed by setup(governor=...)."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"in_flight": governor.in_flight})

    if wiring == "middleware":
        app = web.Application(middlewares=[governor_middleware(governor)])
        add_admin_routes(app, AdminConfig(token=None), governor=governor)
    else:
        app = web.Application()
        setup(app, governor=governor, admin=AdminConfig(token=None))
    app.router.add_route("*", "/work", ok)
    return app


WIRINGS = ["middleware", "setup"]


@pytest.mark.parametrize("wiring", WIRINGS)
async def test_middleware_sheds_only_requests_with_a_body(
    aiohttp_client: ClientFactory, wiring: str
) -> None:
    """While shedding: bodies get 503 + Retry-After; bodiless, empty and admin requests pass."""
    governor = Governor(GovernorConfig(soft_limit=1, hard_limit=1, retry_after=3, use_cgroup=False))
    await governor.check()  # RSS is always above one byte
    assert governor.shedding
    client = await aiohttp_client(shedding_app(governor, wiring))

    resp = await client.post("/work", data=b"x" * 1000)
    assert 503 == resp.status
    assert "3" == resp.headers["Retry-After"]
    body = await resp.json()
    assert {"error", "detail", "retry_after"} == set(body)
    assert ("overloaded", 3) == (body["error"], body["retry_after"])

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    resp = await client.post("/work", data=chunks())
    assert 503 == resp.status, "a chunked body is a body"
    assert 200 == (await client.get("/work")).status
    assert 200 == (await client.post("/work", data=b"")).status
    assert 200 == (await client.post("/_arenapool/trim", data=b"{}")).status
    assert 2 == governor.stats()["shed_count"]


@pytest.mark.parametrize("wiring", WIRINGS)
async def test_middleware_counts_in_flight_but_not_admin(
    aiohttp_client: ClientFactory, wiring: str
) -> None:
    """Requests are counted in flight while they run; admin requests are not counted."""
    governor = Governor(GovernorConfig(use_cgroup=False))
    client = await aiohttp_client(shedding_app(governor, wiring))
    assert 1 == (await (await client.get("/work")).json())["in_flight"]
    stats = await (await client.get("/_arenapool/stats")).json()
    assert 0 == stats["governor"]["in_flight"]
    assert 0 == governor.in_flight


@pytest.mark.slow
async def test_governor_returns_burst_memory_without_further_requests() -> None:
    """A real server's RSS falls back near baseline after a 200 MiB burst, on its own."""
    server = await ServerProcess.start("--interval", "0.1", "--idle-after", "0.3")
    try:
        proc = psutil.Process(server.pid)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/burst?mb=200") as resp:
                held = (await resp.json())["rss_after_free"]
            assert held - server.baseline_rss >= 150 * MiB, (
                f"the burst should stay resident: baseline {format_size(server.baseline_rss)}, "
                f"after the burst {format_size(held)}"
            )

            async def settled() -> int | None:
                rss = int(proc.memory_info().rss)
                return rss if rss <= server.baseline_rss + SETTLED_SLACK else None

            async def governor_stats() -> dict[str, Any]:
                async with session.get(server.url + "/_arenapool/stats") as resp:
                    stats: dict[str, Any] = (await resp.json())["governor"]
                    return stats

            try:
                rss, seconds = await poll_until(
                    settled, timeout=SETTLE_DEADLINE, what="RSS back near baseline"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; governor: {await governor_stats()}") from None
            governor = await governor_stats()
        report = (
            f"governor: baseline {format_size(server.baseline_rss)}, after burst "
            f"{format_size(held)}, settled {format_size(rss)} in {seconds:.2f} s"
        )
        print("\n" + report)
        # the governor's own trims, busy or idle: the first reading after the burst's
        # request ended, within idle_after, makes a busy one, and the burst is free C
        # heap, which a busy trim returns as an idle one does
        own_trims = [
            a
            for a in governor["actions"]
            if a["action"] == "trim" and a["reason"] in ("busy", "idle")
        ]
        assert own_trims, f"{report}; actions {governor['actions']}"
        print(
            "trims (reason, freed, seconds):",
            [(a["reason"], a["freed"], a["seconds"]) for a in own_trims],
        )
        assert sum(a["freed"] for a in own_trims) >= 150 * MiB, f"{report}; {own_trims}"
    finally:
        await server.stop()


@pytest.mark.slow
async def test_hard_watermark_sheds_and_recovers() -> None:
    """Past hard, bodies get 503 (JSON, Retry-After); once RSS is back under soft they pass."""
    server = await ServerProcess.start(
        "--interval", "0.1", "--idle-after", "0.3", "--soft-mb", "100", "--hard-mb", "150"
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def shedding() -> bool:
                async with session.get(server.url + "/_arenapool/stats") as resp:
                    return bool((await resp.json())["governor"]["shedding"])

            async with session.get(server.url + "/hold?mb=200") as resp:
                assert 200 == resp.status
            await poll_until(shedding, timeout=10, what="shedding past the hard watermark")

            async with session.post(server.url + "/echo", data=b"x" * 4096) as resp:
                assert 503 == resp.status
                assert "3" == resp.headers["Retry-After"]
                body = await resp.json()
            assert "overloaded" == body["error"]
            assert "shedding load" in body["detail"]
            async with session.get(server.url + "/rss") as resp:
                assert 200 == resp.status, "bodiless requests still pass"

            async with session.get(server.url + "/release") as resp:
                assert 200 == resp.status

            async def recovered() -> bool:
                return not await shedding()

            _, seconds = await poll_until(recovered, timeout=10, what="shedding to stop")
            async with session.post(server.url + "/echo", data=b"x" * 4096) as resp:
                assert 200 == resp.status
                assert {"len": 4096} == await resp.json()
            async with session.get(server.url + "/_arenapool/stats") as resp:
                governor = (await resp.json())["governor"]
        actions = [(a["action"], a["reason"]) for a in governor["actions"]]
        assert ("shed_on", "hard") in actions
        assert ("shed_off", "soft") in actions
        assert 1 == governor["shed_count"]
        print(f"\nshedding stopped {seconds:.2f} s after /release")
    finally:
        await server.stop()
