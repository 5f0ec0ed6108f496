"""Chaos soak: integrity at scale, then a fault mix, against one real aiohttp server.

Two phases, each ``--requests`` requests at ``--concurrency`` in flight, from the
hostile-client harness (``harness/http.py``, ``harness/hostile.py``, ``harness/mix.py``;
raw sockets on 127.0.0.1):

- ``integrity``: valid requests only: small JSON bodies, 2% large ones (256 KiB to
  1.5 MiB), 1% slow readers (4 KiB SO_RCVBUF, reading 4 KiB at a time) of a large
  echoed response, a fifth sent chunked. Every answer is checked against what was sent
  (SHA-256 and length of the body the server read into its arena, item count of what
  it parsed, the echoed document).
- ``faults``: 5% aborted uploads (FIN or RST mid-body), 5% handler exceptions, 2%
  cancellations (client leaves mid-handler / the handler's task is cancelled), 5%
  malformed JSON, 2% oversize (declared / chunked past the limit), the rest as above.
  Each request must get its documented outcome.

Each phase runs a fresh server in a child process (this script with ``--serve``), so
its RSS is the server's alone; the client samples it every 250 requests and reports the
drift as the least-squares slope after the first quarter (warm-up), in MiB per 1,000
requests. After the phase the server waits (up to 30 s) until its pool has nothing lent
or quarantined and the ObjectPool its handlers borrow from has nothing out, then
reports its state and what it logged at ERROR (the injected handler faults are counted
apart from anything else).

Usage: python benchmarks/chaos.py [--requests 20000] [--concurrency 32] [--seed 0]
       [--phase both|integrity|faults]
Prints a table and one JSON line; exits 1 if anything was corrupted, unexpected or
leaked, or the server logged an error that was not injected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psutil
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from arenapool import SlabPool
from arenapool.aiohttp import ROUTE_STATS_KEY
from harness.hostile import OBJECTS_KEY, hostile_app
from harness.http import Conn, build_request
from harness.idle import wait_idle
from harness.mix import FAULT_MIX, OUTCOME, run_mix
from harness.server import serve

MiB = 1024 * 1024
LIMIT = 2 * MiB
#: the server under test: arenapool's defaults except a 2 MiB limit and 5 s queue
SETUP: dict[str, Any] = {"limit": LIMIT, "body_timeout": 10.0, "queue_timeout": 5.0}
POOL: dict[str, Any] = {"budget": "256MiB", "decay": 10.0}
SAMPLE_EVERY = 250
#: a child server exits by itself after this long, whatever happens to its parent
SERVER_LIFETIME = 3600.0


# -- the server (child process) ------------------------------------------------------


class ServerLog(logging.Handler):
    """Counts what the server logs at ERROR: injected faults vs anything else."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.injected = 0
        self.http = 0
        self.other: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RuntimeError) and "injected" in str(exc):
            self.injected += 1
        elif isinstance(exc, HttpProcessingError):
            self.http += 1
        else:
            self.other.append(f"{record.name}: {record.getMessage()} {exc!r}"[:300])


async def serve_forever() -> None:
    log = ServerLog()
    logging.getLogger().addHandler(log)
    logging.getLogger("aiohttp.server").propagate = False
    logging.getLogger("aiohttp.server").addHandler(log)
    pool = SlabPool(name="chaos", **POOL)
    app = hostile_app(pool, **SETUP)
    done = asyncio.Event()

    async def stats(request: web.Request) -> web.StreamResponse:
        """Wait (bounded) until idle, then report pool, objects, routes and the log."""
        objects = request.app[OBJECTS_KEY]
        with contextlib.suppress(AssertionError):  # not idle in time: the stats say how
            await wait_idle(pool, [objects], timeout=float(request.query.get("wait", "30")))
        counted: dict[str, int] = {}
        for counters in request.app[ROUTE_STATS_KEY].snapshot().values():
            for key, value in counters.items():
                if key.startswith("status_") or key in ("requests", "escapes"):
                    counted[key] = counted.get(key, 0) + value
        answer = {
            "pool": pool.stats(),
            "objects_out": objects.in_use,
            "routes": counted,
            "log": {"injected": log.injected, "http": log.http, "other": log.other},
        }
        if request.query.get("quit"):
            done.set()
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app.router.add_get("/_chaos/stats", stats)
    async with serve(app, handler_cancellation=True) as port:
        print(port, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SERVER_LIFETIME)
    pool.close()


# -- the client (this process) ---------------------------------------------------------


def slope(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) against requests, per 1,000 requests."""
    if len(samples) < 2:
        return 0.0
    xs = [x / 1000 for x, _ in samples]
    ys = [y for _, y in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


async def server_stats(port: int) -> dict[str, Any]:
    conn = await Conn.open(port)
    try:
        await conn.send(build_request("/_chaos/stats?wait=30&quit=1", method="GET"))
        response = await conn.response(timeout=60)
    finally:
        conn.close()
    result: dict[str, Any] = response.json()
    return result


async def drive(name: str, args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    """Send the phase's requests; returns the tally and the server's final state."""
    proc = psutil.Process(pid)
    samples: list[tuple[int, float]] = []
    warmup = args.requests // 4

    def progress(done: int) -> None:
        if done % SAMPLE_EVERY == 0 and done >= warmup:
            samples.append((done, proc.memory_info().rss / MiB))

    started = time.monotonic()
    tally = await run_mix(
        port,
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        faults={} if name == "integrity" else FAULT_MIX,
        limit=LIMIT,
        progress=progress,
    )
    elapsed = time.monotonic() - started
    final = await server_stats(port)
    stats = final["pool"]
    return {
        "requests": tally.requests,
        "seconds": round(elapsed, 1),
        "sent": dict(sorted(tally.sent.items())),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "by_kind": {kind: tally.by_kind[kind] for kind in sorted(tally.by_kind)},
        "corrupted": tally.corrupted,
        "unexpected": tally.unexpected,
        "examples": tally.examples,
        "leaked_bytes": stats["lent_bytes"] + stats["quarantined_bytes"],
        "quarantined_blocks": stats["quarantined_blocks"],
        "waiting": stats["waiting"],
        "objects_out": final["objects_out"],
        "high_water_lent_bytes": stats["high_water_lent_bytes"],
        "escapes": stats["escapes"],
        "server_counted": final["routes"],
        "server_errors_injected": final["log"]["injected"],
        "server_errors_http": final["log"]["http"],
        "server_errors_other": final["log"]["other"],
        "rss_first_mib": round(samples[0][1], 1) if samples else None,
        "rss_last_mib": round(samples[-1][1], 1) if samples else None,
        "rss_drift_mib_per_1k": round(slope(samples), 3),
    }


def phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One phase against a fresh server in a child process."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        result = asyncio.run(drive(name, args, port, child.pid))
        child.wait(timeout=30)  # the stats request told it to quit
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    return result


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'phase':<10} {'requests':>8} {'secs':>6} {'corrupted':>9} {'unexpected':>10} "
        f"{'leaked B':>8} {'quar.':>5} {'obj out':>7} {'server RSS MiB':>15} {'drift/1k':>9}"
    )
    for name, r in results.items():
        rss = f"{r['rss_first_mib']} -> {r['rss_last_mib']}"
        print(
            f"{name:<10} {r['requests']:>8} {r['seconds']:>6} {r['corrupted']:>9} "
            f"{r['unexpected']:>10} {r['leaked_bytes']:>8} {r['quarantined_blocks']:>5} "
            f"{r['objects_out']:>7} {rss:>15} {r['rss_drift_mib_per_1k']:>9}"
        )
    print()
    print(f"{'phase':<10} {'kind':<18} {'sent':>6}  {'documented':<20} got")
    for name, r in results.items():
        for kind, count in r["sent"].items():
            got = ", ".join(f"{o}: {n}" for o, n in r["by_kind"][kind].items())
            print(f"{name:<10} {kind:<18} {count:>6}  {OUTCOME[kind]:<20} {got}")
        got = ", ".join(f"{o}: {n}" for o, n in r["outcomes"].items())
        print(f"{name:<10} {'(all)':<18} {r['requests']:>6}  {'':<20} {got}")
    for name, r in results.items():
        for example in r["examples"]:
            print(f"{name}: unexpected: {example}")
        for line in r["server_errors_other"]:
            print(f"{name}: server logged: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", choices=["both", "integrity", "faults"], default="both")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_forever())
        return 0

    phases = ["integrity", "faults"] if args.phase == "both" else [args.phase]
    results = {name: phase(name, args) for name in phases}
    print_tables(results)
    line = {
        "bench": "chaos",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seed": args.seed,
        **{f"{name}.{key}": value for name, r in results.items() for key, value in r.items()},
    }
    print(json.dumps(line))
    bad = any(
        r["corrupted"]
        or r["unexpected"]
        or r["leaked_bytes"]
        or r["objects_out"]
        or r["server_errors_other"]
        for r in results.values()
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
