"""What one memory reading costs: is ``snapshot()`` cheap enough to call every second?

Cases, each timed in this process as the median over ``--repeats`` runs of ``--calls``
calls (microseconds per call):

- ``rss``: ``current_rss()`` alone (one /proc read);
- ``heap_info``: glibc ``mallinfo2()`` alone, on the heap as it is;
- ``snapshot-bare``: ``snapshot()`` with no pools;
- ``snapshot-pools``: ``snapshot()`` with one SlabPool (a few classes in use) and one
  ObjectPool;
- ``heap_info-fragmented`` / ``snapshot-fragmented``: the same after leaving
  ``--holes`` free 1 KiB chunks in the C heap (``mallinfo2`` walks the free lists, so
  this is its worst case: a heap shredded by a burst);
- ``metrics-scrape``: a full Prometheus scrape (``generate_latest``) of the collector.

Usage: python benchmarks/snapshot_cost.py [--calls 2000] [--repeats 7] [--holes 100000]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arenapool._memory import current_rss, heap_info, snapshot
from harness.benchkit import per_call_runs


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> tuple[float, float]:
    """Median and worst (of the repeats) microseconds per call."""
    runs = per_call_runs(fn, calls, repeats)
    return statistics.median(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--holes", type=int, default=100_000)
    args = parser.parse_args()

    from arenapool._objectpool import ObjectPool
    from arenapool._slabpool import SlabPool

    results: dict[str, tuple[float, float]] = {}
    results["rss"] = per_call_us(current_rss, args.calls, args.repeats)
    results["heap_info"] = per_call_us(heap_info, args.calls, args.repeats)
    results["snapshot-bare"] = per_call_us(
        lambda: snapshot(slab_pools=(), object_pools=()), args.calls, args.repeats
    )

    pool = SlabPool(budget="64MiB", name="bench", decay=None)
    objects: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(1024), maxsize=8, name="bufs")
    arena = pool.arena()
    for size in (1000, 10_000, 100_000, 1_000_000):
        arena.alloc(size)
    results["snapshot-pools"] = per_call_us(
        lambda: snapshot(slab_pools=[pool], object_pools=[objects]), args.calls, args.repeats
    )
    arena.release()

    # Shred the heap: 2 * holes chunks of 1 KiB (malloc, not pymalloc), free every other.
    chunks = [bytes([i & 255]) * 1024 for i in range(2 * args.holes)]
    del chunks[::2]
    info = heap_info()
    free_chunks_bytes = 0 if info is None else info.free
    slow_calls = max(10, args.calls // 20)
    results["heap_info-fragmented"] = per_call_us(heap_info, slow_calls, args.repeats)
    results["snapshot-fragmented"] = per_call_us(
        lambda: snapshot(slab_pools=[pool], object_pools=[objects]), slow_calls, args.repeats
    )
    del chunks

    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from arenapool.metrics import register
    except ImportError:
        pass
    else:
        registry = CollectorRegistry()
        register(registry, slab_pools=[pool], object_pools=[objects])
        results["metrics-scrape"] = per_call_us(
            lambda: generate_latest(registry), max(10, args.calls // 10), args.repeats
        )
    pool.close()
    objects.close()

    width = max(len(name) for name in results)
    print(f"{'case':<{width}}  {'median us':>10}  {'worst us':>10}")
    for name, (median, worst) in results.items():
        print(f"{name:<{width}}  {median:>10.1f}  {worst:>10.1f}")
    print(
        f"(fragmented: {args.holes} free 1 KiB chunks, C heap free "
        f"{free_chunks_bytes / 2**20:.1f} MiB; python {sys.version.split()[0]})"
    )
    print(
        json.dumps(
            {
                "benchmark": "snapshot_cost",
                "calls": args.calls,
                "repeats": args.repeats,
                "holes": args.holes,
                "median_us": {name: round(m, 2) for name, (m, _) in results.items()},
                "worst_us": {name: round(w, 2) for name, (_, w) in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
