"""Instructions arenapool's middleware adds to a request, compiled build against the twin.

    python benchmarks/callgrind_hotpath.py                  # 2000 requests per variant
    python benchmarks/callgrind_hotpath.py --requests 5000

A server measurement (``callgrind_request.py``) counts everything the server process
does, idle polling and timers included, so two rounds of the same variant differ by a
few percent. This one isolates the middleware: in one process under callgrind,
collection is on only inside CPython's ``map_next`` (``--collect-atstart=no
--toggle-collect=map_next``), and what runs there is, per request, one mocked aiohttp
request (``aiohttp.test_utils.make_mocked_request``, made beforehand and given the
router's real match, so the route is resolved as in a server) driven through

- ``noop``: a do-nothing ``async def`` middleware, then a handler returning a small
  ``web.Response``;
- ``arenapool``: ``arenapool.aiohttp.arena_middleware`` (``_hotpath.serve``) around
  the same handler;

each coroutine run to completion with ``send(None)`` (nothing in it waits on I/O), no
event loop in the count. Variants run in separate processes, each both ways: the
compiled ``_hotpath`` (as installed) and the twin (``ARENAPOOL_NO_EXTENSIONS=1``).
Prints Ir per request and the middleware's own cost (arenapool minus noop), then one
JSON line. Exactly reproducible from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # harness/ of this checkout

from harness.benchkit import callgrind_map_next  # noqa: E402

CHILD = """
import sys
sys.path.insert(0, {root!r})
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from arenapool import SlabPool, _ext
from arenapool.aiohttp import arena_middleware

pool = SlabPool("64MiB", decay=None, retain=None)

async def handler(request):
    return web.Response(body=b"ok")

async def noop(request, handler):
    return await handler(request)

middleware = arena_middleware(pool=pool, limit="1MiB") if {variant!r} == "arenapool" else noop
app = web.Application()
app.router.add_get("/x", handler)
def resolved():
    # the router's real match (route and handler), as the server sets it
    probe = make_mocked_request("GET", "/x", app=app)
    try:
        app.router.resolve(probe).send(None)
    except StopIteration as done:
        return make_mocked_request("GET", "/x", app=app, match_info=done.value)
    raise AssertionError("the router waited on something")

request = resolved()  # one request, served again and again

def op(request):
    coro = middleware(request, handler)
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("the middleware waited on something")

for _ in range(200):  # warm
    op(request)
list(map(op, [request] * {n}))  # the only code run inside map_next: what is counted
print("LOADED", sorted(_ext.LOADED))
"""


def ir(variant: str, requests: int, twin: bool) -> tuple[float, str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("ARENAPOOL_NO_EXTENSIONS", None)
    if twin:
        env["ARENAPOOL_NO_EXTENSIONS"] = "1"
    code = CHILD.format(root=str(ROOT), variant=variant, n=requests)
    total, stdout = callgrind_map_next(code, env)
    build = "twin" if "LOADED []" in stdout else "compiled"
    return total / requests, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    result: dict[str, dict[str, float]] = {}
    for twin in (False, True):
        for variant in ("noop", "arenapool"):
            per, build = ir(variant, args.requests, twin)
            result.setdefault(build, {})[variant] = round(per, 1)
            print(f"{build:9} {variant:10} {per:10.1f} Ir/request", flush=True)
    for build, row in result.items():
        row["middleware"] = round(row["arenapool"] - row["noop"], 1)
        print(f"{build:9} arenapool - noop: {row['middleware']:.1f} Ir/request")
    print(json.dumps({"benchmark": "callgrind_hotpath", "requests": args.requests, **result}))


if __name__ == "__main__":
    main()
