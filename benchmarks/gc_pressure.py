"""Cyclic-GC collections per 1,000 requests: arenapool against the same decoder without it.

    python benchmarks/gc_pressure.py                          # 200 KiB, both pairs, ~2 min
    python benchmarks/gc_pressure.py --sizes 1KiB,200KiB,1MiB --rounds 3
    python benchmarks/gc_pressure.py --tree /tmp/old          # also an older checkout

CPython's cyclic collector runs a young collection when the objects allocated since the
last one, less those freed, pass 700 (``gc.get_threshold()[0]``). A decoded 200 KiB
document allocates about 550 of them at once, so how many objects a server's requests
keep between two decodes decides whether nearly every decode sets a collection off or
almost none does. Each collection walks the young objects (the half-built tree
included) and moves the survivors on, where the older generations' collections walk
them again: time that shows in a throughput ratio only as a few percent, and here as a
count.

Method: each mode of the example service (``integrations/example_service/app.py``) is
served in a process of its own (``--child``), on 127.0.0.1, with its body read by the
same code as ``benchmarks/request_path.py``'s; Debian's ``wrk`` (outside the process)
sends ``--duration`` seconds of warm-up, then ``--duration`` seconds are measured with
``--connections`` connections. The server process counts its own collections
(``gc.get_stats()``) and requests over the measured run. Modes alternate within each
round; the figure reported is the median over ``--rounds``. Counts, not times: the
machine's load does not change them much, and the ratio of two counts is not claimed
as a speed.

``--tree PATH`` measures the arenapool modes of another checkout too (its
``arenapool`` package and example service), as ``arenapool@PATH``: an older commit
side by side with this one in the same run (``git worktree add PATH COMMIT``). Its
compiled extension is used if that checkout has one built, else its pure Python.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the checkout whose arenapool (and harness) this process imports: a child started for
# --tree is told its own
sys.path.insert(0, os.environ.get("GC_PRESSURE_TREE", str(ROOT)))

from aiohttp import web  # noqa: E402

from arenapool import parse_size  # noqa: E402
from harness.modes import BASELINES  # noqa: E402
from harness.server import free_port  # noqa: E402
from harness.workload import make_body  # noqa: E402
from harness.wrk import deck_files, need_wrk, run_wrk  # noqa: E402

#: each baseline decoder's arenapool mode (harness.modes.BASELINES, the other way round)
PAIRS = {base: mode for mode, base in BASELINES.items()}


async def serve_and_count(
    tree: Path, mode: str, size: int, duration: float, connections: int
) -> dict[str, Any]:
    """In the child: serve ``mode`` from ``tree``'s example service, drive it with wrk,
    count this process's collections over the measured run."""
    sys.path.insert(0, str(tree / "integrations" / "example_service"))
    import app as service  # type: ignore[import-not-found]  # the tree's own service

    application = service.make_app(mode)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    deck = [make_body(size, random.Random(i)) for i in range(16)]
    try:
        with deck_files(deck) as (script, paths):
            await run_wrk(port, script, paths, duration=duration, connections=connections)
            before = [g["collections"] for g in gc.get_stats()]
            cpu = time.process_time()
            result = await run_wrk(port, script, paths, duration=duration, connections=connections)
            cpu = time.process_time() - cpu
            after = [g["collections"] for g in gc.get_stats()]
    finally:
        await runner.cleanup()
    requests = max(1, result.requests)
    return {
        "requests": result.requests,
        "errors": result.status_errors + result.socket_errors,
        "per_1000": [
            round((b - a) * 1000 / requests, 2) for a, b in zip(before, after, strict=True)
        ],
        "cpu_us": round(cpu / requests * 1e6, 1),
        "threshold": gc.get_threshold()[0],
    }


def run_child(
    tree: Path, mode: str, size: int, duration: float, connections: int
) -> dict[str, Any]:
    env = dict(os.environ, GC_PRESSURE_TREE=str(tree), PYTHONPATH=str(tree))
    if tree != ROOT and not any((tree / "arenapool" / "aiohttp").glob("_hotpath_c*.so")):
        env["ARENAPOOL_NO_EXTENSIONS"] = "1"
    command = [
        sys.executable,
        __file__,
        "--child",
        f"{tree}|{mode}|{size}|{duration}|{connections}",
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        msg = f"{mode} ({tree}) failed:\n{done.stderr[-2000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200KiB", help="comma-separated body sizes (200KiB)")
    parser.add_argument("--pairs", default="orjson,msgspec", help="orjson, msgspec, or both")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, modes alternating (3)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (4)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--tree", default=None, help="another checkout to measure as well")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tree, mode, size, duration, connections = args.child.split("|")
        result = asyncio.run(
            serve_and_count(Path(tree), mode, int(size), float(duration), int(connections))
        )
        print(json.dumps(result))
        return
    need_wrk()
    other = None if args.tree is None else Path(args.tree).resolve()
    variants: list[tuple[str, Path, str]] = []
    for pair in args.pairs.split(","):
        variants.append((pair, ROOT, pair))
        variants.append((PAIRS[pair], ROOT, PAIRS[pair]))
        if other is not None:
            variants.append((f"{PAIRS[pair]}@{args.tree}", other, PAIRS[pair]))
    report: dict[str, Any] = {"sizes": {}, "rounds": args.rounds, "connections": args.connections}
    for size_text in args.sizes.split(","):
        size = parse_size(size_text)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for name, tree, mode in order:
                runs[name].append(run_child(tree, mode, size, args.duration, args.connections))
        table: dict[str, Any] = {}
        print(f"{size_text}: young / middle / full collections per 1,000 requests (median)")
        for name, results in runs.items():
            medians = [statistics.median(r["per_1000"][g] for r in results) for g in range(3)]
            table[name] = {
                "per_1000": medians,
                "rounds": [r["per_1000"] for r in results],
                "requests": [r["requests"] for r in results],
                "errors": sum(r["errors"] for r in results),
                "cpu_us": statistics.median(r["cpu_us"] for r in results),
            }
            young, middle, full = medians
            print(
                f"  {name:32s} {young:8.2f} {middle:7.2f} {full:6.2f}"
                f"   (young per round: {', '.join(str(r['per_1000'][0]) for r in results)})"
            )
        report["sizes"][size_text] = table
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
