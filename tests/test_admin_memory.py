"""Issue 14 on the admin routes: the breakdown in /stats, /history, /trace, per-route
arena bytes, the verdict on two contrived servers, and the shedding log line."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _contrived import ContrivedServer
from _memhelpers import poll_until
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from arenapool import Governor, GovernorConfig, SlabPool
from arenapool.aiohttp import AdminConfig, add_admin_routes, read_body, setup
from arenapool.memory import PARTS

ServerFactory = Callable[..., Awaitable[TestServer]]
TOKEN = "memory-token"
MiB = 1024 * 1024
kept: list[bytes] = []


async def call(
    url: str, method: str = "GET", *, token: str | None = TOKEN, data: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=data) as resp,
    ):
        body = await resp.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body.decode()
        return resp.status, dict(resp.headers), parsed


def admin_app(**config: Any) -> web.Application:
    app = web.Application()
    add_admin_routes(app, AdminConfig(token=TOKEN, **config))
    return app


async def test_stats_carry_a_breakdown_that_sums_to_rss(aiohttp_server: ServerFactory) -> None:
    """GET /stats has "breakdown": every part, summing exactly to "rss"; the old
    "unaccounted" figure is gone; the monitor's verdict is there."""
    server = await aiohttp_server(admin_app())
    status, _, doc = await call(f"http://127.0.0.1:{server.port}/_arenapool/stats")
    assert 200 == status
    assert list(PARTS) == list(doc["breakdown"])
    assert doc["rss"] == sum(doc["breakdown"].values())
    assert "unaccounted" not in doc
    assert doc["monitor"]["verdict"]["kind"] in {
        "unknown",
        "steady",
        "live_growth",
        "retention",
        "idle_slabs",
        "unexplained_growth",
    }


async def test_history_is_there_from_the_start(aiohttp_server: ServerFactory) -> None:
    """The app's start takes a reading, so /history has a point at once; since= in the
    future returns none; a bad since= is a 400."""
    server = await aiohttp_server(admin_app(history_interval=60))
    base = f"http://127.0.0.1:{server.port}/_arenapool/history"
    status, _, doc = await call(base)
    assert 200 == status
    assert len(doc["time"]) >= 1
    assert ["rss", *PARTS] == doc["fields"]
    assert doc["rss"][0] == sum(doc[p][0] for p in PARTS)
    assert "kind" in doc["verdict"]
    _, _, later = await call(base + f"?since={doc['time'][-1] + 3600}")
    assert [] == later["time"]
    status, _, bad = await call(base + "?since=yesterday")
    assert 400 == status
    assert "invalid_parameter" == bad["error"]


async def test_history_needs_the_token(aiohttp_server: ServerFactory) -> None:
    """/history and /trace sit behind the same gate as every admin route."""
    server = await aiohttp_server(admin_app())
    base = f"http://127.0.0.1:{server.port}/_arenapool"
    assert 401 == (await call(base + "/history", token=None))[0]
    assert 401 == (await call(base + "/trace?seconds=1", "POST", token=None))[0]


def _line_of(marker: str) -> int:
    source = Path(__file__).read_text().splitlines()
    return next(n for n, text in enumerate(source, 1) if marker in text and "_line_of" not in text)


async def test_trace_window_names_the_allocating_line(aiohttp_server: ServerFactory) -> None:
    """POST /trace while a handler keeps allocating: the top growth site is that line;
    tracemalloc is off afterwards; a second window at once is rate limited (429)."""
    stop = asyncio.Event()

    async def churn() -> None:
        while not stop.is_set():
            kept.append(bytes(8192))  # THE_LINE_THAT_ALLOCATES
            await asyncio.sleep(0.001)

    server = await aiohttp_server(admin_app(trace_min_interval=3600))
    task = asyncio.create_task(churn())
    try:
        url = f"http://127.0.0.1:{server.port}/_arenapool/trace?seconds=0.5&frames=3"
        status, _, result = await call(url, "POST")
        again, headers, _ = await call(url, "POST")
    finally:
        stop.set()
        await task
        kept.clear()
    assert 200 == status, result
    assert tracemalloc.is_tracing() is False
    assert result["tracing_after"] is False
    line = _line_of("THE_LINE_THAT_ALLOCATES")
    assert result["top"][0]["site"].endswith(f"test_admin_memory.py:{line}")
    assert 429 == again
    assert int(headers["Retry-After"]) > 3000


async def test_bad_trace_parameters_are_refused(aiohttp_server: ServerFactory) -> None:
    """Non-numbers are a 400; a window longer than allowed is a 409."""
    server = await aiohttp_server(admin_app(trace_max_seconds=5))
    base = f"http://127.0.0.1:{server.port}/_arenapool/trace"
    assert 400 == (await call(base + "?seconds=ten", "POST"))[0]
    status, _, body = await call(base + "?seconds=30", "POST")
    assert 409 == status
    assert "trace_unavailable" == body["error"]
    assert tracemalloc.is_tracing() is False


async def test_arena_bytes_per_request_by_route(aiohttp_server: ServerFactory) -> None:
    """Each request's arena high water is observed per route: /stats rows count and
    sum them, and /metrics exports a histogram per route."""

    async def upload(request: web.Request) -> web.Response:
        body = await read_body(request)
        return web.json_response({"n": len(body)})

    app = web.Application()
    app.router.add_post("/upload", upload)
    pool = SlabPool("64MiB", decay=None, name="routes")
    setup(app, pool=pool, admin=AdminConfig(token=TOKEN))
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for size in (1000, 100_000, 1_000_000):
            status, _, _ = await call(base + "/upload", "POST", data=b"x" * size, token=None)
            assert 200 == status
        _, _, doc = await call(base + "/_arenapool/stats")
        _, _, text = await call(base + "/_arenapool/metrics")
    finally:
        pool.close()
    row = doc["routes"]["POST /upload"]
    assert 3 == row["arena_bytes_count"]
    assert row["arena_bytes_sum"] >= 1_101_000
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["arenapool_route_arena_bytes"]
    count = next(
        s.value
        for s in hist.samples
        if s.name.endswith("_count") and s.labels["route"] == "POST /upload"
    )
    assert 3 == count


async def test_memory_metrics(aiohttp_server: ServerFactory) -> None:
    """/metrics has one gauge per breakdown part, the verdict as a state set, and the
    number of leak suspects."""
    server = await aiohttp_server(admin_app())
    _, _, text = await call(f"http://127.0.0.1:{server.port}/_arenapool/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    parts = {s.labels["part"] for s in families["arenapool_memory_part_bytes"].samples}
    assert set(PARTS) == parts
    verdicts = [s for s in families["arenapool_memory_verdict"].samples if s.value == 1]
    assert 1 == len(verdicts)
    assert "arenapool_leak_suspects" in families


async def _verdict_of(mode: str, steps: int) -> dict[str, Any]:
    """Drive a contrived server ``steps`` times, each step after a fresh reading."""
    server = await ContrivedServer.start("--interval", "0.1")
    try:
        admin = server.url + "/_arenapool"

        async def readings() -> int:  # history points so far (cheap: no snapshot)
            _, _, doc = await call(admin + "/history", token=None)
            return len(doc["time"])

        for step in range(1, steps + 1):
            before = await readings()
            status, _, _ = await call(f"{server.url}/{mode}?step={step}", token=None)
            assert 200 == status

            async def advanced(before: int = before) -> bool:
                return await readings() >= before + 2

            await poll_until(advanced, timeout=30, interval=0.05, what="two new readings")
        _, _, history = await call(admin + "/history?window=3600", token=None)
    finally:
        await server.stop()
    verdict: dict[str, Any] = history["verdict"]
    return verdict


@pytest.mark.slow
async def test_a_server_that_leaks_dicts_is_live_growth() -> None:
    """A server keeping 8 MiB more dicts per request: the verdict is live growth."""
    verdict = await _verdict_of("leak", 10)
    assert "live_growth" == verdict["kind"], verdict
    assert verdict["changes"]["python_in_use"] > 40 * MiB


@pytest.mark.slow
async def test_a_fragmented_heap_without_trim_is_retention() -> None:
    """A server freeing ever larger bursts around a few kept chunks, never trimming:
    the verdict is retention and it names the trim."""
    verdict = await _verdict_of("fragment", 10)
    assert "retention" == verdict["kind"], verdict
    assert "Governor" in verdict["action"]


async def test_one_log_line_per_shedding_episode(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """While shedding, the first refused request logs the breakdown and the top routes;
    the ones after it in the same episode log nothing more."""

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"n": len(await read_body(request))})

    governor = Governor(GovernorConfig(hard_limit=MiB, soft_limit=MiB // 2, use_cgroup=False))
    app = web.Application()
    app.router.add_post("/upload", upload)
    pool = SlabPool("16MiB", decay=None, name="shed")
    setup(app, pool=pool, governor=governor)
    server = await aiohttp_server(app)
    try:
        await governor.check()  # RSS is far above 1 MiB: shedding starts
        assert governor.shedding
        caplog.set_level(logging.WARNING, logger="arenapool")
        for _ in range(3):
            status, _, _ = await call(
                f"http://127.0.0.1:{server.port}/upload", "POST", data=b"x" * 10, token=None
            )
            assert 503 == status
    finally:
        pool.close()
    messages = [r.getMessage() for r in caplog.records]
    dumps = [m for m in messages if "top routes by arena memory" in m]
    assert 1 == len(dumps), dumps
    assert "unexplained" in dumps[0] or "code_and_libs" in dumps[0]
