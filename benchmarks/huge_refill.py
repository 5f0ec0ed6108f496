"""What a block given back costs when it is filled again: small pages against huge ones.

arenapool gives idle memory back with ``madvise(MADV_DONTNEED)``; the next fill of those
pages faults them in again and the kernel clears each one first. In 4 KiB pages that is
one fault per 4 KiB; in transparent huge pages (``madvise(MADV_HUGEPAGE)``, THP mode
``madvise`` or ``always``) one fault per 2 MiB, the clear being the same bytes. This is
what ``SlabPool(keep_huge_warm=False)`` (the default) rests on: a block of 2 MiB or more
in huge pages is cheap enough to fault in again that keeping it resident between large
bodies buys little.

Each run is a fresh interpreter that maps ``--size`` bytes on a 2 MiB boundary, small
pages or huge, fills it once, then times ``--fills`` fills of warm pages and ``--fills``
fills after giving the pages back (``memoryview`` slice assignment: one ``memcpy``),
reading its own minor faults (``getrusage``). It prints, per page kind, the median over
``--runs`` of the time per fill (warm, refilled) and the faults per refill; the
ratio that matters is a refill's extra time (refilled minus warm) in small pages
against huge ones, both from the same run.

    .venv/bin/python benchmarks/huge_refill.py                # 16 MiB, 40 fills, 5 runs
    .venv/bin/python benchmarks/huge_refill.py --size 4MiB --runs 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from arenapool import parse_size

# One run, in a fresh interpreter: argv = size in bytes, fills, "huge" or "small".
RUN = """
import ctypes, json, mmap, resource, sys, time
size, fills, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
HUGE = 2 * 1024 * 1024
m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
address = ctypes.addressof(ctypes.c_char.from_buffer(m))
offset = (-address) % HUGE
m.madvise(mmap.MADV_HUGEPAGE if kind == "huge" else mmap.MADV_NOHUGEPAGE, offset, size)
view = memoryview(m)[offset : offset + size]
source = bytes([0xAB]) * size
view[:] = source
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def timed(give_back):
    spent, faulted = 0.0, 0
    for _ in range(fills):
        if give_back:
            m.madvise(mmap.MADV_DONTNEED, offset, size)
        before, start = faults(), time.perf_counter()
        view[:] = source
        spent += time.perf_counter() - start
        faulted += faults() - before
    return spent / fills, faulted / fills
warm, _ = timed(False)
refill, refaults = timed(True)
huge = 0
with open("/proc/self/smaps_rollup") as f:
    for line in f:
        if line.startswith("AnonHugePages:"):
            huge = int(line.split()[1]) * 1024
print(json.dumps({"warm": warm, "refill": refill, "faults": refaults, "huge_bytes": huge}))
"""


def run_once(size: int, fills: int, kind: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(size), str(fills), kind],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16MiB", help="bytes to fill (16MiB)")
    parser.add_argument("--fills", type=int, default=40, help="fills timed per kind (40)")
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per kind (5)")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "(no THP on this kernel)"
    runs: dict[str, list[dict[str, Any]]] = {"small": [], "huge": []}
    for run in range(args.runs):
        for kind in ("small", "huge") if run % 2 == 0 else ("huge", "small"):
            runs[kind].append(run_once(size, args.fills, kind))
    print(f"{args.size} filled {args.fills} times per kind, median of {args.runs} runs")
    print(f"THP mode: {mode}")
    extra = {}
    for kind, found in runs.items():
        warm = statistics.median(r["warm"] for r in found)
        refill = statistics.median(r["refill"] for r in found)
        faults = statistics.median(r["faults"] for r in found)
        extra[kind] = statistics.median(r["refill"] - r["warm"] for r in found)
        print(
            f"  {kind:5s} pages: warm fill {warm * 1e3:7.2f} ms, refill {refill * 1e3:7.2f} ms "
            f"(+{extra[kind] * 1e3:.2f} ms), {faults:7.0f} faults per refill, "
            f"{max(r['huge_bytes'] for r in found) >> 20} MiB in huge pages"
        )
    if extra["huge"] > 0:
        ratio = extra["small"] / extra["huge"]
        print(f"  a refill's extra time, small pages / huge pages: {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "fills": args.fills, "runs": runs}))


if __name__ == "__main__":
    main()
