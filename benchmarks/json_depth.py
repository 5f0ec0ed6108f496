"""How deep each JSON decoder goes, measured (issue 12, defect 1).

Prints, for orjson and msgspec: the deepest array that decodes at a module's top level,
and inside an aiohttp handler under arenapool's middleware on 127.0.0.1 (what a
request meets), with what arenapool answers one level past it. Then one JSON line.

    .venv/bin/python benchmarks/json_depth.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import orjson
from aiohttp import web

from arenapool import SlabPool
from arenapool.aiohttp import read_json, setup


def deepest(loads: Callable[[bytes], Any]) -> int:
    """The deepest plain array ``loads`` decodes, by bisection (0 .. 65536)."""
    low, high = 0, 1 << 16
    while high - low > 1:
        middle = (low + high) // 2
        try:
            loads(b"[" * middle + b"]" * middle)
        except (RecursionError, ValueError):
            high = middle
        else:
            low = middle
    return low


async def in_handler() -> dict[str, Any]:
    """The same bisection inside a handler, and arenapool's answer one level past it."""
    found: dict[str, Any] = {}

    async def probe(request: web.Request) -> web.Response:
        decoder = request.match_info["decoder"]
        loads = orjson.loads if decoder == "orjson" else msgspec.json.decode
        await read_json(request, decoder=decoder)  # the body is a small valid document
        found[decoder] = deepest(loads)
        return web.Response(text="ok")

    async def parse(request: web.Request) -> web.Response:
        await read_json(request, decoder=request.match_info["decoder"])
        return web.Response(text="ok")

    with SlabPool("64MiB", decay=None) as pool:
        app = web.Application()
        setup(app, pool, limit="4MiB")
        app.router.add_post("/probe/{decoder}", probe)
        app.router.add_post("/parse/{decoder}", parse)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        answers: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as session:
                for decoder in ("orjson", "msgspec"):
                    url = f"http://127.0.0.1:{port}"
                    async with session.post(f"{url}/probe/{decoder}", data=b"[]") as resp:
                        assert resp.status == 200
                    past = found[decoder] + 1
                    doc = b"[" * past + b"]" * past
                    async with session.post(f"{url}/parse/{decoder}", data=doc) as resp:
                        answers[decoder] = {"status": resp.status, **await resp.json()}
        finally:
            await runner.cleanup()
    return {"handler": found, "answers": answers}


def main() -> None:
    top = {"orjson": deepest(orjson.loads), "msgspec": deepest(msgspec.json.decode)}
    handler = asyncio.run(in_handler())
    print(f"python {sys.version.split()[0]}, recursion limit {sys.getrecursionlimit()}")
    print(f"orjson {orjson.__version__}, msgspec {msgspec.__version__}")
    print(f"{'decoder':<8} {'top level':>10} {'in handler':>11}  answer one level past")
    for name in ("orjson", "msgspec"):
        answer = handler["answers"][name]
        print(
            f"{name:<8} {top[name]:>10} {handler['handler'][name]:>11}  "
            f"{answer['status']} {answer['error']}: {answer['detail']}"
        )
    print(json.dumps({"top_level": top, **handler}))


if __name__ == "__main__":
    main()
