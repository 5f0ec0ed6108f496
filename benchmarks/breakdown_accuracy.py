"""How much of a real server's RSS the breakdown explains, at rest and under load.

A JSON-ingest server (aiohttp + arenapool's ``setup``/``read_json``, one SlabPool) runs
in a subprocess on 127.0.0.1 and answers ``GET /breakdown`` with its own reading
(``read_breakdown([pool])``, taken in a worker thread). The client reads it:

- ``rest``: ``--readings`` readings after start-up and one warm-up request per size;
- ``load``: ``--concurrency`` clients posting JSON bodies of 1 KiB to 2 MiB
  (log-uniform, seeded) for ``--seconds`` seconds, a reading every 0.5 s meanwhile;
- ``after``: ``--readings`` readings once the load stopped (nothing trims: no governor).

Per phase: median RSS, median and worst ``unexplained`` as a share of RSS, the worst
``overclaimed`` share (counter bytes the clamp cut: mapped but untouched; see
``arenapool._breakdown``), and the median of each part. The target (issue 14) is
``unexplained`` under 10% everywhere.

Usage: python benchmarks/breakdown_accuracy.py [--seconds 10] [--concurrency 8]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024


def serve() -> None:
    """The server side (run with --serve): prints {"port"} once listening."""
    from aiohttp import web

    from arenapool import SlabPool
    from arenapool._breakdown import read_breakdown
    from arenapool.aiohttp import read_json, setup

    pool = SlabPool("256MiB", name="accuracy")

    async def ingest(request: web.Request) -> web.Response:
        doc = await read_json(request)
        return web.json_response({"records": len(doc["records"])})

    async def breakdown(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        reading = await loop.run_in_executor(None, read_breakdown, [pool])
        return web.json_response(reading.as_dict())

    async def main() -> None:
        app = web.Application(client_max_size=8 * MiB)
        app.router.add_post("/ingest", ingest)
        app.router.add_get("/breakdown", breakdown)
        setup(app, pool=pool, limit="8MiB")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def body(size: int, rng: random.Random) -> bytes:
    records = []
    total = 0
    while total < size:
        msg = "m" * rng.randint(40, 400)
        records.append({"id": len(records), "level": "info", "value": rng.random(), "msg": msg})
        total += len(msg) + 60
    return json.dumps({"records": records}).encode()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    url = f"http://127.0.0.1:{json.loads(line)['port']}"
    rng = random.Random(14)
    sizes = [int(math.exp(rng.uniform(math.log(1024), math.log(2 * MiB)))) for _ in range(64)]
    bodies = [body(size, rng) for size in sizes]
    phases: dict[str, list[dict[str, Any]]] = {"rest": [], "load": [], "after": []}
    try:
        async with aiohttp.ClientSession() as session:

            async def reading(phase: str) -> None:
                async with session.get(url + "/breakdown") as resp:
                    phases[phase].append(await resp.json())

            for b in bodies[:8]:
                async with session.post(url + "/ingest", data=b) as resp:
                    assert resp.status == 200
            for _ in range(args.readings):
                await reading("rest")
            deadline = asyncio.get_running_loop().time() + args.seconds
            sent = 0

            async def client(seed: int) -> None:
                nonlocal sent
                local = random.Random(seed)
                while asyncio.get_running_loop().time() < deadline:
                    async with session.post(url + "/ingest", data=local.choice(bodies)) as resp:
                        assert resp.status == 200
                        await resp.read()
                    sent += 1

            async def sampler() -> None:
                while asyncio.get_running_loop().time() < deadline:
                    await reading("load")
                    await asyncio.sleep(0.5)  # the sampling period, bounded by the deadline

            await asyncio.gather(sampler(), *(client(i) for i in range(args.concurrency)))
            await asyncio.sleep(3)  # let in-flight work finish before the "after" readings
            for _ in range(args.readings):
                await reading("after")
    finally:
        proc.terminate()
        await proc.wait()
    return {"phases": phases, "requests": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--readings", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    result = asyncio.run(run(args))
    summary: dict[str, Any] = {}
    print(
        f"{'phase':<6} {'n':>3} {'rss MiB':>8} {'unexpl. med':>11} {'unexpl. max':>11} "
        f"{'overcl. max':>11}  parts (MiB, median)"
    )
    for phase, readings in result["phases"].items():
        ratios = [r["parts"]["unexplained"] / r["rss"] for r in readings]
        over = [r["details"]["overclaimed"] / r["rss"] for r in readings]
        parts = {
            k: statistics.median(r["parts"][k] for r in readings) / MiB
            for k in readings[0]["parts"]
        }
        rss = statistics.median(r["rss"] for r in readings) / MiB
        summary[phase] = {
            "readings": len(readings),
            "rss_mib": round(rss, 1),
            "unexplained_median": round(statistics.median(ratios), 4),
            "unexplained_max": round(max(ratios), 4),
            "overclaimed_max": round(max(over), 4),
            "parts_mib": {k: round(v, 1) for k, v in parts.items()},
            "reading_ms_median": round(statistics.median(r["duration"] for r in readings) * 1e3, 2),
        }
        shown = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if v >= 0.05)
        print(
            f"{phase:<6} {len(readings):>3} {rss:>8.1f} {statistics.median(ratios):>11.1%} "
            f"{max(ratios):>11.1%} {max(over):>11.1%}  {shown}"
        )
    print(f"({result['requests']} requests under load; python {sys.version.split()[0]})")
    print(
        json.dumps({"benchmark": "breakdown_accuracy", "requests": result["requests"], **summary})
    )


if __name__ == "__main__":
    main()
