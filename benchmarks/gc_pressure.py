"""Cyclic-GC collections per 1,000 requests, and the collector's time: arenapool against
the same decoder without it.

    python benchmarks/gc_pressure.py                          # 200 KiB, both pairs, ~2 min
    python benchmarks/gc_pressure.py --sizes 1KiB,200KiB,1MiB --rounds 3
    python benchmarks/gc_pressure.py --sizes mixed --pairs orjson --no-freeze --connections 8
    python benchmarks/gc_pressure.py --sizes mixed,1MiB --pairs orjson --no-freeze --full-10
    python benchmarks/gc_pressure.py --sizes 1MiB,mixed --pairs orjson --young-700 --plus-gc
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
as a speed. The collector's own time is measured too (``gc.callbacks``: the clock read
as each collection starts and stops), per 1,000 requests and as a share of the
process's CPU time over the run.

``--sizes mixed`` sends the soak's bodies (1 KiB-4 MiB log-uniform, the seeded deck of
``arenapool soak``) instead of one size. ``--no-freeze`` adds each arenapool mode with
its governor leaving the collector as it is (``GovernorConfig(freeze_gc=False)``, as
``<mode>-no-gc-freeze``): what freezing the objects alive at the governor's start
(``arenapool.memory.freeze_startup_objects``) saves each full collection, which
otherwise walks every module, class and function the server holds.

``--full-10`` adds each arenapool mode whose governor freezes but leaves CPython's third
collection threshold at its 10 (``GovernorConfig(gc_full_every=None)``, as
``<mode>-gc-full-10``): how often full collections come after the freeze without the
governor spacing them out again (``arenapool.memory.space_full_collections``).

``--young-700`` adds each arenapool mode whose governor leaves CPython's first collection
threshold at its 700 (``GovernorConfig(gc_young_every=None)``, as
``<mode>-gc-young-700``), and ``--plus-gc`` each baseline with that threshold set as the
governor sets it (``+gc``: the example service's ``--gc-young-threshold``): how often
young collections come while requests decode their bodies, with and without the
governor's threshold, arenapool or not.

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
from harness.modes import BASELINES, GC_YOUNG_EVERY  # noqa: E402
from harness.run import SOAK_SETTINGS  # noqa: E402
from harness.server import free_port  # noqa: E402
from harness.workload import Body, get_workload, make_body  # noqa: E402
from harness.wrk import deck_files, need_wrk, run_wrk  # noqa: E402

#: each baseline decoder's arenapool mode (harness.modes.BASELINES, the other way round)
PAIRS = {base: mode for mode, base in BASELINES.items()}
#: the suffix of an arenapool variant whose governor does not freeze (``--no-freeze``)
NO_FREEZE = "-no-gc-freeze"
#: the suffix of an arenapool variant that freezes but keeps CPython's third threshold
#: (``--full-10``: ``GovernorConfig(gc_full_every=None)``)
FULL_10 = "-gc-full-10"
#: the suffix of an arenapool variant that keeps CPython's first threshold (``--young-700``:
#: ``GovernorConfig(gc_young_every=None)``)
YOUNG_700 = "-gc-young-700"
#: the suffix of a baseline with CPython's first threshold set as the governor sets it
#: (``--plus-gc``)
PLUS_GC = "+gc"
#: ``--sizes`` word for the soak's bodies
MIXED = "mixed"


def bodies(size: str) -> list[Body]:
    """The bodies wrk sends: the soak's seeded deck for ``mixed``, else 16 of ``size``."""
    if size == MIXED:
        return get_workload(MIXED).deck(SOAK_SETTINGS.seed)
    return [make_body(int(size), random.Random(i)) for i in range(16)]


class CollectorClock:
    """The collector's time per generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started


async def serve_and_count(
    tree: Path, mode: str, size: str, duration: float, connections: int
) -> dict[str, Any]:
    """In the child: serve ``mode`` from ``tree``'s example service, drive it with wrk,
    count this process's collections and time them over the measured run."""
    sys.path.insert(0, str(tree / "integrations" / "example_service"))
    import app as service  # type: ignore[import-not-found]  # the tree's own service

    service_mode = (
        mode.removesuffix(NO_FREEZE)
        .removesuffix(FULL_10)
        .removesuffix(YOUNG_700)
        .removesuffix(PLUS_GC)
    )
    options: dict[str, Any] = {}
    if mode.endswith(NO_FREEZE):
        options["freeze_gc"] = False
    elif mode.endswith(FULL_10):
        options["gc_full_every"] = None
    elif mode.endswith(YOUNG_700):
        options["gc_young_every"] = None
    elif mode.endswith(PLUS_GC):
        options["gc_young_threshold"] = GC_YOUNG_EVERY
    application = service.make_app(service_mode, **options)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    clock = CollectorClock()
    try:
        with deck_files(bodies(size)) as (script, paths):
            await run_wrk(port, script, paths, duration=duration, connections=connections)
            gc.callbacks.append(clock)
            before = [g["collections"] for g in gc.get_stats()]
            cpu = time.process_time()
            result = await run_wrk(port, script, paths, duration=duration, connections=connections)
            cpu = time.process_time() - cpu
            after = [g["collections"] for g in gc.get_stats()]
            gc.callbacks.remove(clock)
    finally:
        await runner.cleanup()
    requests = max(1, result.requests)
    return {
        "requests": result.requests,
        "errors": result.status_errors + result.socket_errors,
        "per_1000": [
            round((b - a) * 1000 / requests, 2) for a, b in zip(before, after, strict=True)
        ],
        "gc_ms_per_1000": [round(s * 1e6 / requests, 2) for s in clock.seconds],
        "gc_share": round(sum(clock.seconds) / cpu, 4) if cpu > 0 else None,
        "frozen": gc.get_freeze_count(),
        "cpu_us": round(cpu / requests * 1e6, 1),
        "threshold": list(gc.get_threshold()),
    }


def run_child(
    tree: Path, mode: str, size: str, duration: float, connections: int
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
    parser.add_argument(
        "--sizes",
        default="200KiB",
        help="comma-separated body sizes, or 'mixed' for the soak's bodies (200KiB)",
    )
    parser.add_argument("--pairs", default="orjson,msgspec", help="orjson, msgspec, or both")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, modes alternating (3)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (4)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--tree", default=None, help="another checkout to measure as well")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="also each arenapool mode with GovernorConfig(freeze_gc=False)",
    )
    parser.add_argument(
        "--full-10",
        action="store_true",
        help="also each arenapool mode that freezes but keeps CPython's third threshold "
        "(GovernorConfig(gc_full_every=None))",
    )
    parser.add_argument(
        "--young-700",
        action="store_true",
        help="also each arenapool mode that keeps CPython's first threshold "
        "(GovernorConfig(gc_young_every=None))",
    )
    parser.add_argument(
        "--plus-gc",
        action="store_true",
        help="also each baseline with CPython's first threshold set as the governor sets it",
    )
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tree, mode, size, duration, connections = args.child.split("|")
        result = asyncio.run(
            serve_and_count(Path(tree), mode, size, float(duration), int(connections))
        )
        print(json.dumps(result))
        return
    need_wrk()
    other = None if args.tree is None else Path(args.tree).resolve()
    variants: list[tuple[str, Path, str]] = []
    for pair in args.pairs.split(","):
        variants.append((pair, ROOT, pair))
        if args.plus_gc:
            variants.append((pair + PLUS_GC, ROOT, pair + PLUS_GC))
        variants.append((PAIRS[pair], ROOT, PAIRS[pair]))
        if args.young_700:
            variants.append((PAIRS[pair] + YOUNG_700, ROOT, PAIRS[pair] + YOUNG_700))
        if args.no_freeze:
            variants.append((PAIRS[pair] + NO_FREEZE, ROOT, PAIRS[pair] + NO_FREEZE))
        if args.full_10:
            variants.append((PAIRS[pair] + FULL_10, ROOT, PAIRS[pair] + FULL_10))
        if other is not None:
            variants.append((f"{PAIRS[pair]}@{args.tree}", other, PAIRS[pair]))
    report: dict[str, Any] = {"sizes": {}, "rounds": args.rounds, "connections": args.connections}
    for size_text in args.sizes.split(","):
        size = size_text if size_text == MIXED else str(parse_size(size_text))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for name, tree, mode in order:
                runs[name].append(run_child(tree, mode, size, args.duration, args.connections))
        table: dict[str, Any] = {}
        print(
            f"{size_text}: young / middle / full collections per 1,000 requests, the "
            "collector's ms per 1,000 requests by generation and its share of the CPU "
            "(medians)"
        )
        for name, results in runs.items():
            medians = [statistics.median(r["per_1000"][g] for r in results) for g in range(3)]
            ms = [statistics.median(r["gc_ms_per_1000"][g] for r in results) for g in range(3)]
            share = statistics.median(r["gc_share"] or 0.0 for r in results)
            table[name] = {
                "per_1000": medians,
                "gc_ms_per_1000": ms,
                "gc_share": share,
                "frozen": [r["frozen"] for r in results],
                "rounds": [r["per_1000"] for r in results],
                "requests": [r["requests"] for r in results],
                "errors": sum(r["errors"] for r in results),
                "cpu_us": statistics.median(r["cpu_us"] for r in results),
                "threshold": results[0].get("threshold"),
            }
            young, middle, full = medians
            print(
                f"  {name:32s} {young:8.2f} {middle:7.2f} {full:6.2f}   ms "
                f"{ms[0]:7.1f} {ms[1]:7.1f} {ms[2]:7.1f}   {share:6.2%} of CPU"
                f"   {table[name]['cpu_us']:8.1f} us CPU/request"
                f"   (young per round: {', '.join(str(r['per_1000'][0]) for r in results)})"
            )
        report["sizes"][size_text] = table
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
