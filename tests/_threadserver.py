"""A server for the thread tests: arenapool's ``setup()`` with its governor, nothing more.

Run as a script it serves on 127.0.0.1 (port 0) and prints one JSON line ``{"port",
"pid"}`` once listening. The pool is made before the event loop runs, as an app's is
(``decay=0.2``, so its maintenance returns idle blocks within a second). Handlers:

- ``POST /ingest``: ``read_json`` and a summary of the records, as the example service.
- ``POST /trim?reason=busy|idle``: one governor trim, awaited; answers its result.
- ``GET /threads``: ``{"python": threading.active_count(), "names": [...],
  "libc_single_threaded": ..., "returned_bytes": ..., "trims": ...}``.

``--trim-in-thread`` runs the governor with ``GovernorConfig(trim_in_thread=True)``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

HELPER = Path(__file__).resolve()
ROOT = HELPER.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _serverproc import HelperServer, serve_until_sigterm  # noqa: E402
from aiohttp import web  # noqa: E402 - after the path fix so the checkout's arenapool wins

from arenapool import Governor, GovernorConfig, SlabPool  # noqa: E402
from arenapool.aiohttp import json_response, read_json, setup  # noqa: E402
from arenapool.memory import libc_single_threaded  # noqa: E402


def make_app(trim_in_thread: bool) -> web.Application:
    app = web.Application()
    pool = SlabPool("64MiB", decay=0.2, name="threads")
    governor = Governor(GovernorConfig(trim_in_thread=trim_in_thread), pools=[pool])

    async def ingest(request: web.Request) -> web.Response:
        doc = await read_json(request)
        records = doc["records"]
        return json_response({"count": len(records), "sum": sum(r["value"] for r in records)})

    async def trim(request: web.Request) -> web.Response:
        result = await governor.trim(reason=request.query.get("reason", "manual"))
        return web.json_response({"freed": result["freed"], "seconds": result["seconds"]})

    async def threads(request: web.Request) -> web.Response:
        stats: dict[str, Any] = pool.stats()
        return web.json_response(
            {
                "python": threading.active_count(),
                "names": sorted(t.name for t in threading.enumerate()),
                "libc_single_threaded": libc_single_threaded(),
                "returned_bytes": stats["returned_bytes"],
                "trims": governor.stats()["trims"],
            }
        )

    app.router.add_post("/ingest", ingest)
    app.router.add_post("/trim", trim)
    app.router.add_get("/threads", threads)
    setup(app, pool=pool, governor=governor, limit="8MiB")
    return app


async def serve(app: web.Application) -> None:
    await serve_until_sigterm(web.AppRunner(app, access_log=None))


class ThreadServer(HelperServer):
    """The thread tests' server in a subprocess (``python tests/_threadserver.py``)."""

    SCRIPT = HELPER
    WHAT = "thread test server"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a server for the thread tests")
    parser.add_argument("--trim-in-thread", action="store_true")
    # the app (and its pool) made before the loop runs, as web.run_app's callers do
    asyncio.run(serve(make_app(parser.parse_args().trim_in_thread)))
