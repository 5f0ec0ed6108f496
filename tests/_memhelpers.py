"""Shared helpers for the memory-layer tests, and a governed test server.

Run as a script it serves an aiohttp app on 127.0.0.1 (port 0) with a Governor, its
middleware and the admin routes, and prints one JSON line ``{"port", "pid",
"baseline_rss"}`` once listening. Handlers:

- ``GET /burst?mb=N``: allocate N MiB in 64 KiB chunks with a 1 KiB *pin* after each
  (pins outlive the request), free the chunks, answer the RSS measured after the free.
  The pins keep the freed holes inside the heap, so glibc keeps them resident until
  ``malloc_trim`` (the shape a burst of large bodies leaves behind).
- ``GET /hold?mb=N`` / ``GET /release``: the same, but the chunks stay alive until
  ``/release``.
- ``POST /echo``: read the body, answer its length.
- ``GET /rss``: the server's own snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HELPER = Path(__file__).resolve()
ROOT = HELPER.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _serverproc import HelperServer, serve_until_sigterm  # noqa: E402
from aiohttp import web  # noqa: E402 - after the path fix so the checkout's arenapool wins

from arenapool._governor import Governor, GovernorConfig  # noqa: E402
from arenapool._memory import current_rss, snapshot  # noqa: E402
from arenapool.aiohttp import AdminConfig, add_admin_routes, governor_middleware  # noqa: E402

MiB = 1024 * 1024
CHUNK = 64 * 1024
PIN = 1024

_pins: list[bytes] = []
_held: list[bytes] = []


def allocate(nbytes: int, *, keep: list[bytes] | None = None) -> int:
    """Allocate ``nbytes`` of touched 64 KiB chunks with pins between; return RSS after.

    With ``keep`` the chunks are appended there; without, they are freed before the
    RSS reading, so the reading shows what the heap kept resident after the free.
    """
    chunks: list[bytes] = []
    for i in range(max(1, nbytes // CHUNK)):
        chunks.append(bytes([i & 0xFF]) * CHUNK)  # written, so resident
        _pins.append(bytes([i & 0xFF]) * PIN)
    if keep is not None:
        keep.extend(chunks)
    del chunks
    return current_rss()


async def burst(request: web.Request) -> web.Response:
    mb = int(request.query.get("mb", "100"))
    return web.json_response({"rss_after_free": allocate(mb * MiB)})


async def hold(request: web.Request) -> web.Response:
    mb = int(request.query.get("mb", "100"))
    return web.json_response({"rss": allocate(mb * MiB, keep=_held)})


async def release(request: web.Request) -> web.Response:
    _held.clear()
    return web.json_response({"rss": current_rss()})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"len": len(body)})


async def rss(request: web.Request) -> web.Response:
    return web.json_response(snapshot().as_dict())


def build_app(governor: Governor, token: str | None) -> web.Application:
    app = web.Application(middlewares=[governor_middleware(governor)], client_max_size=64 * MiB)
    app.router.add_get("/burst", burst)
    app.router.add_get("/hold", hold)
    app.router.add_get("/release", release)
    app.router.add_post("/echo", echo)
    app.router.add_get("/rss", rss)
    add_admin_routes(app, AdminConfig(token=token, census_min_interval=0), governor=governor)

    async def run_governor(app: web.Application) -> AsyncIterator[None]:
        async with governor:
            yield

    app.cleanup_ctx.append(run_governor)
    return app


async def serve(args: argparse.Namespace) -> None:
    # Warm the paths the handlers use so the baseline is not taken before imports.
    allocate(4 * MiB)
    _pins.clear()
    baseline = current_rss()
    soft = None if args.soft_mb is None else baseline + args.soft_mb * MiB
    hard = None if args.hard_mb is None else baseline + args.hard_mb * MiB
    config = GovernorConfig(
        interval=args.interval,
        idle_after=args.idle_after,
        trim_threshold=args.trim_threshold_mb * MiB,
        soft_limit=soft,
        hard_limit=hard,
        use_cgroup=False,
        trim_cooldown=args.interval,
        retry_after=3,
    )
    governor = Governor(config)
    runner = web.AppRunner(build_app(governor, args.token), access_log=None)
    await serve_until_sigterm(runner, baseline_rss=baseline)


class ServerProcess(HelperServer):
    """A governed server in a subprocess (``python tests/_memhelpers.py ...``)."""

    SCRIPT = HELPER

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        super().__init__(proc, info)
        self.pid: int = info["pid"]
        self.baseline_rss: int = info["baseline_rss"]


async def poll_until(
    probe: Any, *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> tuple[Any, float]:
    """Await ``probe()`` until it returns something truthy; return it and the seconds taken.

    Bounded in time (``timeout``) and so in count; fails naming ``what`` and the last value.
    """
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        last = await probe()
        if last:
            return last, time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s; last value {last!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--idle-after", type=float, default=0.3)
    parser.add_argument("--trim-threshold-mb", type=int, default=16)
    parser.add_argument("--soft-mb", type=int, default=None, help="soft watermark above baseline")
    parser.add_argument("--hard-mb", type=int, default=None, help="hard watermark above baseline")
    parser.add_argument("--token", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
