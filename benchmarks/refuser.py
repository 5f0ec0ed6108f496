"""The floor of a refusal: an aiohttp app that answers every POST with 503 unread.

``benchmarks/burst.py`` runs it beside arenapool (mode ``refuse-floor``) so the shed
scenario's 503 latency is read against the least any aiohttp server can do on this
machine: no admission, no arena, no parsing; a fixed 503 with ``Retry-After`` and the
body left unread (the connection closed after the answer, as arenapool closes a
refused one). With 2,048 heads arriving at once a single event loop still answers them
one after another, so this is the latency that only more processes can lower.

Run as the example service is (``--port``; its other options are accepted and ignored);
``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
import os
import sys

from aiohttp import web

from arenapool.aiohttp._responses import close_unread, error_response


async def refuse(request: web.Request) -> web.StreamResponse:
    response = error_response(
        "budget_exhausted", "refused without looking (the floor)", status=503, retry_after=1.0
    )
    close_unread(request, response)
    return response


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--backlog", type=int, default=2048)
    args, _ignored = parser.parse_known_args(argv)
    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    app.router.add_get("/health", health)
    ready = f"refuser on http://{args.host}:{args.port} pid {os.getpid()}"
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=None,
        print=lambda _: print(ready, file=sys.stderr, flush=True),
    )


if __name__ == "__main__":
    main()
