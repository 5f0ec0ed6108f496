"""What the memory breakdown, its history and a trace window cost (issue 14).

Cases (microseconds per call: median over ``--repeats`` runs of ``--calls`` calls):

- ``statm-rss``: ``psutil`` RSS alone, the baseline every reading already pays;
- ``smaps-read``: reading ``/proc/self/smaps`` (the kernel's page-table walk);
- ``smaps-parse``: reading and parsing it into mappings;
- ``pymalloc_stats``: ``sys._debugmallocstats`` captured in memory, then parsed;
- ``mallinfo2``: glibc's counters;
- ``mincore-64MiB``: residency of one 64 MiB slab pool (through ``regions()`` when the
  pool has it);
- ``breakdown-bare`` / ``breakdown-pool``: a whole ``read_breakdown()``;
- the same ``-big`` with ``--objects`` MiB of small Python objects alive.

History: the storage of a full default ``History`` (``nbytes``) and the process's RSS
before and after building and filling one; ``history-add`` per point; ``history-query``
of every point.

Trace: an allocation-heavy loop (dicts and strings) timed with tracemalloc off, during
a window (``tracemalloc.start(frames)``, as ``Tracer.run`` does) at 1 and 25 frames,
and after ``tracemalloc.stop()``; ratios against "off", medians of interleaved runs.

Usage: python benchmarks/breakdown_cost.py [--calls 200] [--repeats 7] [--objects 200]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from arenapool import SlabPool
from arenapool._breakdown import (
    PARTS,
    _glibc,
    _read_smaps,
    _slab_parts,
    pymalloc_stats,
    read_breakdown,
)
from arenapool._history import History
from harness.benchkit import per_call_runs

MiB = 1024 * 1024


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median (over the repeats) microseconds per call."""
    return statistics.median(per_call_runs(fn, calls, repeats))


def _smaps_read() -> bytes:
    with open("/proc/self/smaps", "rb") as f:
        return f.read()


def _workload() -> int:
    rows = [{"id": i, "name": str(i) * 3, "tags": [i, i + 1]} for i in range(20_000)]
    return len(rows)


def trace_overhead(repeats: int) -> dict[str, float]:
    """Seconds per workload run, median over rounds, per tracing state.

    Each round runs every state once, in a rotated order (so no state always runs
    first, on colder memory), after one untimed warm-up run.
    """
    states = ["off", "frames1", "frames25", "after"]
    runs: dict[str, list[float]] = {state: [] for state in states}
    for round_ in range(repeats):
        order = states[round_ % 4 :] + states[: round_ % 4]
        _workload()
        for state in order:
            if state == "frames1":
                tracemalloc.start(1)
            elif state == "frames25":
                tracemalloc.start(25)
            elif state == "after":  # a window just closed: on, then off again
                tracemalloc.start(1)
                _workload()
                tracemalloc.stop()
            gc.collect()
            started = time.perf_counter()
            _workload()
            runs[state].append(time.perf_counter() - started)
            if tracemalloc.is_tracing():
                tracemalloc.stop()
    assert not tracemalloc.is_tracing()
    return {state: statistics.median(times) for state, times in runs.items()}


def history_cost() -> dict[str, float]:
    proc = psutil.Process()
    fields = ("rss", *PARTS)
    gc.collect()
    before = proc.memory_info().rss
    history = History(fields, peak_field="rss")
    row = dict.fromkeys(fields, 123_456_789)
    for i in range(3600 + 1440 * 60):  # fills both rings: an hour of seconds, a day of minutes
        history.add(float(i), row)
    gc.collect()
    after = proc.memory_info().rss
    add_us = per_call_us(lambda: history.add(1e9, row), 2000, 5)
    query_us = per_call_us(lambda: history.query(since=None), 5, 5)
    return {
        "nbytes": history.nbytes,
        "rss_delta": after - before,
        "points": len(history),
        "add_us": add_us,
        "query_all_us": query_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--objects", type=int, default=200, help="MiB of small objects")
    args = parser.parse_args()
    calls, repeats = args.calls, args.repeats

    results: dict[str, float] = {}
    proc = psutil.Process()
    mallinfo2 = _glibc().mallinfo2
    results["statm-rss"] = per_call_us(lambda: proc.memory_info().rss, calls, repeats)
    results["smaps-read"] = per_call_us(_smaps_read, calls, repeats)
    results["smaps-parse"] = per_call_us(_read_smaps, calls, repeats)
    results["pymalloc_stats"] = per_call_us(pymalloc_stats, calls, repeats)
    if mallinfo2 is not None:
        results["mallinfo2"] = per_call_us(mallinfo2, calls, repeats)
    results["breakdown-bare"] = per_call_us(read_breakdown, calls, repeats)

    pool = SlabPool("128MiB", decay=None, retain=None, name="bench")
    arena = pool.arena(limit="128MiB")
    views = [arena.alloc(MiB) for _ in range(64)]
    for view in views[:32]:
        view[::4096] = b"x" * len(view[::4096])
    vmas = _read_smaps()
    from arenapool._breakdown import _bucket_of, _Take

    buckets_of = _bucket_of(vmas)

    def slabs_only() -> object:
        take = _Take({"file": 0, "heap": 1 << 40, "stacks": 0, "other": 0, "generic": 1 << 40})
        return _slab_parts([pool], vmas, buckets_of, take)

    results["mincore-64MiB"] = per_call_us(slabs_only, calls, repeats)
    results["breakdown-pool"] = per_call_us(lambda: read_breakdown([pool]), calls, repeats)
    slab_source = read_breakdown([pool]).details["slab_source"]

    keep = [(i, i + 1) for i in range(args.objects * MiB // 120)]
    results["pymalloc_stats-big"] = per_call_us(pymalloc_stats, calls, repeats)
    results["breakdown-big"] = per_call_us(lambda: read_breakdown([pool]), calls, repeats)
    big = read_breakdown([pool])
    del keep, views, view
    arena.release()
    pool.close()

    history = history_cost()
    trace = trace_overhead(max(repeats, 12))

    width = max(len(name) for name in results)
    print(f"{'case':<{width}}  {'median us':>10}")
    for name, median in results.items():
        print(f"{name:<{width}}  {median:>10.1f}")
    print(
        f"(big: {args.objects} MiB of small objects, rss {big.rss / MiB:.0f} MiB, "
        f"{big.details['mappings']} mappings, unexplained {big.unexplained_ratio:.1%}; "
        f"slabs read by {slab_source}; python {sys.version.split()[0]})"
    )
    print(
        f"history: {history['points']:.0f} points, storage {history['nbytes'] / 1024:.0f} KiB, "
        f"RSS grew {history['rss_delta'] / 1024:.0f} KiB building and filling it; "
        f"add {history['add_us']:.1f} us, query all {history['query_all_us'] / 1000:.1f} ms"
    )
    off = trace["off"]
    print(
        "trace window overhead (workload time / off): "
        + ", ".join(f"{state} {t / off:.2f}x" for state, t in trace.items())
    )
    print(
        json.dumps(
            {
                "benchmark": "breakdown_cost",
                "calls": calls,
                "repeats": repeats,
                "median_us": {name: round(m, 2) for name, m in results.items()},
                "slab_source": slab_source,
                "big_unexplained_ratio": round(big.unexplained_ratio, 4),
                "history": {k: round(v, 2) for k, v in history.items()},
                "trace_ratio": {state: round(t / off, 3) for state, t in trace.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
