"""Instructions of the example service's ``/ingest`` route per request, against the same
decoder without arenapool and without any middleware: exact, in one process.

    python benchmarks/callgrind_handler.py                  # 1 KiB, 2000 requests, ~3 min
    python benchmarks/callgrind_handler.py --size 64KiB --modes msgspec,arenapool-msgspec
    python benchmarks/callgrind_handler.py --cache-sim      # + simulated cache misses

``callgrind_request.py`` counts a whole server, event loop and idle timers included, so
two runs of one variant differ by a few percent. This one counts only what the route
runs for a request: in one process under callgrind, collection is on only inside
CPython's ``map_next`` (``--collect-atstart=no --toggle-collect=map_next``), and what
runs there is, per request, the route's handler (as the app runs it after start-up:
for the arenapool modes, ``serve_route`` with the route's entry) driven to completion
with ``send(None)`` on a request made beforehand: ``make_mocked_request`` given the
router's real match, a ``StreamReader`` holding the whole body (as aiohttp's parser
leaves a small body) and stand-ins for the protocol and the transport (plain objects:
a ``Mock`` would charge its own attribute machinery to the request). No event loop,
socket or parser is in the count; every answer is checked to be a 200. Modes:
``orjson`` and ``msgspec`` (the throughput benchmarks' baselines: ``request.read()``
then the decoder), ``arenapool`` and ``arenapool-msgspec``. Exactly reproducible from
run to run on one build; prints Ir per request and each arenapool mode over its
baseline, then one JSON line. ``--cache-sim`` adds callgrind's simulated L1 instruction
and data cache misses and mispredicted branches per request (this machine's cache
geometry): what the instruction count does not show of a request's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # harness/ of this checkout

from arenapool import parse_size  # noqa: E402
from harness.benchkit import callgrind_map_next_events  # noqa: E402

MODES = ("orjson", "arenapool", "msgspec", "arenapool-msgspec")
BASELINE = {"arenapool": "orjson", "arenapool-msgspec": "msgspec"}

CHILD = """
import asyncio, gc, random, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {service!r})
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from app import make_app
from harness.workload import make_body
from arenapool import _ext

class Protocol:  # what a request and its stream ask of aiohttp's protocol
    _messages = ()
    _reading_paused = False
    transport = ssl_context = peername = sockname = None
    def resume_reading(self, *args, **kwargs): pass
    def pause_reading(self, *args, **kwargs): pass

class Transport:
    def is_closing(self): return False
    def get_extra_info(self, name, default=None): return default

body = make_body({size}, random.Random(1)).data
headers = {{"Content-Type": "application/json", "Content-Length": str(len(body))}}
app = make_app({mode!r})
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
runner = web.AppRunner(app)
loop.run_until_complete(runner.setup())  # start-up: setup() binds the routes
PROTOCOL, TRANSPORT = Protocol(), Transport()

def request():
    r = make_mocked_request("POST", "/ingest", headers=headers, app=app, loop=loop,
                            protocol=PROTOCOL, transport=TRANSPORT)
    stream = StreamReader(PROTOCOL, 2**16, loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    r._payload = stream
    return r

try:
    app.router.resolve(request()).send(None)
except StopIteration as done:
    match = done.value
handler = match.handler

def made(n):
    out = []
    for _ in range(n):
        r = request()
        r._match_info = match  # the router's real match, as the server sets it
        out.append(r)
    return out

def op(r):
    coro = handler(r)
    try:
        coro.send(None)
    except StopIteration as stop:
        assert stop.value.status == 200, stop.value.text
        return
    raise AssertionError("the handler waited on something")

list(map(op, made(300)))  # warm-up: counted too, and subtracted (a run with n = 0)
requests = made({n})
gc.collect()
list(map(op, requests))
print("LOADED", sorted(_ext.LOADED))
"""


#: what ``--cache-sim`` reports per request, of callgrind's simulated events
CACHE_EVENTS = ("I1mr", "D1mr", "D1mw", "Bcm", "Bim")


def per_request(
    mode: str, requests: int, size: int, *, cache_sim: bool = False
) -> tuple[dict[str, float], bool]:
    """Events per request of ``mode`` (``Ir``, and with ``cache_sim`` the simulated
    cache misses and mispredicted branches; the warm-up subtracted), and whether the
    build was compiled."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    service = str(ROOT / "integrations" / "example_service")
    runs = []
    for n in (0, requests):  # the warm-up alone, then with the measured requests
        code = CHILD.format(root=str(ROOT), service=service, mode=mode, size=size, n=n)
        counts, stdout = callgrind_map_next_events(code, env, cache_sim=cache_sim)
        runs.append((counts, "LOADED []" not in stdout))
    (warm, _), (total, compiled) = runs
    return {name: (total[name] - warm[name]) / requests for name in total}, compiled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests (2000)")
    parser.add_argument("--size", default="1KiB", help="body size (1KiB)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"({','.join(MODES)})")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the caches and branch predictor (callgrind --cache-sim=yes "
        "--branch-sim=yes): L1 instruction and data misses, mispredicted branches",
    )
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    result: dict[str, float] = {}
    simulated: dict[str, dict[str, float]] = {}
    compiled = False
    for mode in [m for m in args.modes.split(",") if m]:
        events, built = per_request(mode, args.requests, size, cache_sim=args.cache_sim)
        compiled = compiled or built
        per = events["Ir"]
        result[mode] = round(per, 1)
        line = f"{mode:<20} {per:10,.0f} Ir/request"
        if args.cache_sim:
            simulated[mode] = {name: round(events[name], 1) for name in CACHE_EVENTS}
            line += "".join(f"  {name} {events[name]:7,.0f}" for name in CACHE_EVENTS)
        print(line, flush=True)
    ratios = {}
    for mode, base in BASELINE.items():
        if mode in result and base in result:
            ratios[mode] = round(result[mode] / result[base], 4)
            extra = result[mode] - result[base]
            print(f"{mode} / {base}: {ratios[mode]:.4f}x ({extra:+,.0f} Ir/request)")
    print(
        json.dumps(
            {
                "benchmark": "callgrind_handler",
                "size": args.size,
                "requests": args.requests,
                "compiled": compiled,
                "ir_per_request": result,
                "simulated_per_request": simulated,
                "ratio": ratios,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
