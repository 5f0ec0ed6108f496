"""How long a heap census stalls a serving event loop, against the same loop without one.

A census walks every Python object. Run forked (the default), the walk happens in a
child and the parent pays only for ``fork()`` (the kernel copies the page tables of its
private memory); run in a thread (``Census(use_fork=False)``), the walk holds the GIL
and the loop waits. This measures both on a loop that serves requests meanwhile.

In this process: an aiohttp server on 127.0.0.1 (one route answering ``{"ok": true}``),
``--clients`` keep-alive aiohttp clients each sending a request every ~5 ms (a steady
few hundred requests a second, not a flood that would leave the loop no time), and a
heap carrying ``--objects`` extra dicts, so each census walks for a while. A task
sleeping ``--tick`` seconds in a loop records how late each wake-up comes: the loop's
stall. Per round, three windows on the same loop under the same load:

- ``quiet``: no census, 1 s;
- ``fork``: one forked census (``Census(use_fork=True)``), from its start to its result;
- ``thread``: one census in a worker thread (``--no-thread`` skips it).

The cyclic collector is off during the windows (its full passes over the extra
objects would stall every window alike).

Per window: the longest stall, the requests answered, the census's own seconds. The
table shows medians over ``--rounds`` rounds and the fork census's worst stall over the
quiet window's, from the same round.

Usage: python benchmarks/census_stall.py [--objects 400000] [--rounds 5] [--clients 4]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # psutil ships no types
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arenapool.memory import Census
from harness.steady import SteadyGets


class LagProbe:
    """The loop's longest stall: how late a ``tick``-second sleep wakes up."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick)
            self.worst = max(self.worst, loop.time() - before - self.tick)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async def work(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/work", work)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/work"

    probe = LagProbe(args.tick)
    windows: dict[str, list[dict[str, float]]] = {"quiet": [], "fork": []}
    if args.thread:
        windows["thread"] = []
    loop = asyncio.get_running_loop()
    censuses = {"fork": Census(min_interval=0, use_fork=True)}
    if args.thread:
        censuses["thread"] = Census(min_interval=0, use_fork=False)
    try:
        async with aiohttp.ClientSession() as session:
            load = SteadyGets(session, url, clients=args.clients)
            load.start()
            lag = asyncio.ensure_future(probe.run())
            for _ in range(600):  # the load under way: 200 answers, within 30 s
                if load.answered >= 200 or load.failed:
                    break
                await asyncio.sleep(0.05)
            if load.answered < 200:
                msg = f"the load did not start: {load.answered} answers"
                raise RuntimeError(msg)
            for _ in range(args.rounds):
                for name, rows in windows.items():
                    probe.worst = 0.0
                    served = load.answered
                    started = loop.time()
                    seconds = 0.0
                    if name == "quiet":
                        await asyncio.sleep(1.0)
                    else:
                        result = await censuses[name].run()
                        seconds = float(result["seconds"])
                    rows.append(
                        {
                            "stall_ms": probe.worst * 1000,
                            "answered": load.answered - served,
                            "window_s": loop.time() - started,
                            "census_s": seconds,
                        }
                    )
            await load.stop()
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
    finally:
        await runner.cleanup()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tick", type=float, default=0.002)
    parser.add_argument("--no-thread", dest="thread", action="store_false")
    args = parser.parse_args()

    ballast = [{"i": i, "s": str(i)} for i in range(args.objects // 2)]
    # The collector is off while the windows run: its own full passes over the ballast
    # would show as stalls in any window. (Not gc.freeze(): a census in a thread does
    # not see frozen objects, and would walk less than the forked one.)
    gc.disable()
    private = psutil.Process().memory_full_info().uss
    started = time.monotonic()
    windows = asyncio.run(measure(args))
    elapsed = time.monotonic() - started
    del ballast

    def med(name: str, key: str) -> float:
        return statistics.median(w[key] for w in windows[name])

    print(f"{'window':<8}  {'stall ms':>9}  {'worst':>7}  {'census s':>9}  {'answered':>9}")
    for name, rows in windows.items():
        print(
            f"{name:<8}  {med(name, 'stall_ms'):>9.1f}  "
            f"{max(w['stall_ms'] for w in rows):>7.1f}  {med(name, 'census_s'):>9.2f}  "
            f"{med(name, 'answered'):>9.0f}"
        )
    ratios = [
        f["stall_ms"] / q["stall_ms"] if q["stall_ms"] else float("inf")
        for f, q in zip(windows["fork"], windows["quiet"], strict=True)
    ]
    print(
        f"fork census stall / quiet stall, per round: "
        f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}x); "
        f"private memory {private / 2**20:.0f} MiB, {args.objects} extra objects, "
        f"{elapsed:.0f} s, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        json.dumps(
            {
                "benchmark": "census_stall",
                "objects": args.objects,
                "rounds": args.rounds,
                "clients": args.clients,
                "private_bytes": private,
                "median_stall_ms": {name: round(med(name, "stall_ms"), 2) for name in windows},
                "worst_stall_ms": {
                    name: round(max(w["stall_ms"] for w in rows), 2)
                    for name, rows in windows.items()
                },
                "median_census_s": {
                    name: round(med(name, "census_s"), 3) for name in windows if name != "quiet"
                },
                "median_answered": {name: med(name, "answered") for name in windows},
                "fork_over_quiet": round(statistics.median(ratios), 3),
                "windows": windows,
            }
        )
    )


if __name__ == "__main__":
    main()
