"""What a cold lend costs: an allocation from a block whose pages were given back.

A pool that gives idle memory back under load (``retain=0``, ``warm_rate``,
``keep_huge_warm=False``, or any block after its decay) lends some blocks cold: their
pages are gone, and the fill that follows faults each 4 KiB page in as it first touches
it. ``SlabPool(populate=True)`` (the default) has the arena fault the allocation in with
one ``madvise(MADV_POPULATE_WRITE)`` first: the kernel clears and maps the same pages
in one pass, without a trap per page. The fault count stays the same (the kernel counts
the pages it maps for the call as faults of the process); the time is what changes.

Each round times ``--cycles`` cycles of: give every idle block back (``pool.trim()``),
take an arena, allocate ``size`` bytes, fill them (``memoryview`` slice assignment: one
``memcpy``), release the arena; once with ``populate=True`` and once with ``False``,
the order alternating between rounds. It prints, per size, the median over ``--rounds``
of each setting's median cycle, their ratio (demand faults / populate: above 1 means
populate is faster) and the minor faults per cycle (``getrusage``), then one JSON
line. A warm cycle (no trim between) is printed for the floor: what the same allocation
and fill cost with the pages resident.

    .venv/bin/python benchmarks/cold_lend.py                      # 64 KiB-4 MiB, 7 rounds
    .venv/bin/python benchmarks/cold_lend.py --sizes 1MiB --rounds 11
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any

from arenapool import SlabPool, parse_size


def cycles(size: int, count: int, *, populate: bool, cold: bool) -> tuple[float, float]:
    """(median seconds, median minor faults) per cycle of one setting."""
    pool = SlabPool("256MiB", populate=populate, decay=None, retain=None, calibrate=False)
    source = b"\xab" * size
    times: list[float] = []
    faults: list[int] = []
    try:
        for _ in range(count):
            if cold:
                pool.trim()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            arena = pool.arena()
            view = arena.alloc(size)
            view[:] = source
            del view
            arena.release()
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    finally:
        pool.close()
    return statistics.median(times), statistics.median(faults)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64KiB,256KiB,1MiB,4MiB", help="allocation sizes")
    parser.add_argument("--cycles", type=int, default=40, help="cycles timed per setting (40)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (7)")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {}
    print(
        f"cold lends: {args.cycles} cycles per setting, median of {args.rounds} rounds "
        "(alternating order)"
    )
    print(f"{'size':>8} {'warm':>10} {'populate':>10} {'demand':>10} {'ratio':>7} {'faults':>8}")
    for size in sizes:
        rounds: dict[str, list[tuple[float, float]]] = {"populate": [], "demand": [], "warm": []}
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for populate in order:
                name = "populate" if populate else "demand"
                rounds[name].append(cycles(size, args.cycles, populate=populate, cold=True))
            rounds["warm"].append(cycles(size, args.cycles, populate=True, cold=False))
        med = {k: statistics.median(t for t, _ in v) for k, v in rounds.items()}
        ratios = [d[0] / p[0] for p, d in zip(rounds["populate"], rounds["demand"], strict=True)]
        faults = statistics.median(f for _, f in rounds["demand"])
        print(
            f"{args.sizes.split(',')[sizes.index(size)]:>8} {med['warm'] * 1e6:8.1f}us "
            f"{med['populate'] * 1e6:8.1f}us {med['demand'] * 1e6:8.1f}us "
            f"{statistics.median(ratios):6.2f}x {faults:8.0f}"
        )
        results[str(size)] = {"median_s": med, "ratio": statistics.median(ratios)}
    print("ratio: demand faults / populate, the median of the rounds' ratios (> 1: faster)")
    print(json.dumps({"benchmark": "cold_lend", "cycles": args.cycles, "sizes": results}))


if __name__ == "__main__":
    main()
