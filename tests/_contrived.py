"""Two contrived servers whose memory misbehaves in known ways, for the verdict tests.

Run as a script it serves on 127.0.0.1 (port 0) with the admin routes (history sampled
every ``--interval`` seconds, no governor, so nothing trims) and prints one JSON line
``{"port", "pid"}`` once listening. Handlers:

- ``GET /leak?step=N``: keeps 40,000 more small dicts (about 8 MiB) alive for good: the
  shape of a cache that never evicts. Live growth.
- ``GET /fragment?step=N``: allocates ``N * 8`` MiB in 2 KiB ``bytes`` (malloc, not
  pymalloc), keeps one in 64 of them for good and frees the rest. Each step's burst is
  larger than the last, so the heap grows and every step leaves more free-but-held
  memory in the holes between the kept chunks; the kept ones grow by 1/64 only. Without
  a trim nothing returns it: retention.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

HELPER = Path(__file__).resolve()
ROOT = HELPER.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _serverproc import HelperServer, serve_until_sigterm  # noqa: E402
from aiohttp import web  # noqa: E402 - after the path fix so the checkout's arenapool wins

from arenapool.aiohttp import AdminConfig, add_admin_routes  # noqa: E402

MiB = 1024 * 1024
CHUNK = 2048
_kept: list[Any] = []


async def leak(request: web.Request) -> web.Response:
    step = int(request.query.get("step", "0"))
    _kept.append([{"step": step, "i": i, "tag": "x"} for i in range(40_000)])
    return web.json_response({"kept": len(_kept)})


async def fragment(request: web.Request) -> web.Response:
    step = int(request.query.get("step", "1"))
    chunks = [bytes([i & 0xFF]) * CHUNK for i in range(step * 8 * MiB // CHUNK)]
    _kept.extend(chunks[::64])
    del chunks
    return web.json_response({"kept": len(_kept)})


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    app.router.add_get("/leak", leak)
    app.router.add_get("/fragment", fragment)
    add_admin_routes(app, AdminConfig(token=None, history_interval=args.interval))
    runner = web.AppRunner(app, access_log=None)
    await serve_until_sigterm(runner)


class ContrivedServer(HelperServer):
    """One contrived server in a subprocess (``python tests/_contrived.py``)."""

    SCRIPT = HELPER
    WHAT = "contrived server"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a contrived server for the verdict tests")
    parser.add_argument("--interval", type=float, default=0.1)
    asyncio.run(serve(parser.parse_args()))
