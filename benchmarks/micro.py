"""Micro benchmarks for the core (issue 2): arena allocation and ObjectPool reuse.

Run: ``python benchmarks/micro.py`` (``--repeat 7 --min-time 0.05`` are the defaults).

Every case is timed against its baseline in the same run: medians of ``--repeat``
``timeit`` runs, each long enough to last ``--min-time`` seconds (the number of
iterations is calibrated once per case). ``speedup`` is baseline time / case time, so
above 1 means arenapool is faster.

- ``arena.batch.<n>``: one arena, K allocations of n bytes, one bulk release; per
  allocation. Baseline ``bytearray.batch.<n>``: K ``bytearray(n)`` kept in a list,
  then dropped; per allocation. This is the allocation measure the issue's targets
  are checked against.
- ``arena.per_arena.<n>``: ``with pool.arena() as a: a.alloc(n)`` per iteration.
  Baseline ``bytearray.per_arena.<n>``: ``bytearray(n)`` per iteration. The arena's
  whole lifecycle (create, enter, allocate, release) is in every iteration: reported
  as information, with no target.
- ``objectpool.<obj>.<leak>.<borrow|acquire>``: ``with op.borrow()`` or
  ``op.release(op.acquire())``. Baseline ``construct.<obj>``: building the object.

The pool is warm, as in a server's steady state: blocks are mapped and their pages
touched before timing, and decay is off. Arena views are not zeroed, while
``bytearray(n)`` zero-fills: that difference is part of what is measured. Prints a
table, then one JSON line ``{"benchmark": "micro", "cases": [...], ...}``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arenapool import ObjectPool, SlabPool, __version__, format_size

SIZES = [256, 4096, 64 * 1024, 1024 * 1024, 4 * 1024 * 1024]
LIFECYCLE = "arena lifecycle included"
BATCH_BYTES = 64 * 1024 * 1024  # K * n stays at or under this (K at most 64)


def batch_count(nbytes: int) -> int:
    return max(4, min(64, BATCH_BYTES // nbytes))


def measure(fn: Callable[[], object], *, repeat: int, min_time: float, per: int = 1) -> float:
    """Median seconds per operation over ``repeat`` calibrated timeit runs."""
    timer = timeit.Timer(fn)
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= min_time / 5 or number >= 1 << 22:
            break
        number *= 2
    number = max(1, int(number * min_time / max(elapsed, 1e-9)))
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number / per


def touch(view: memoryview) -> None:
    probe = ctypes.c_char.from_buffer(view)
    ctypes.memset(ctypes.addressof(probe), 0xAB, view.nbytes)
    del probe


# -- arena cases ----------------------------------------------------------------------


def arena_cases(pool: SlabPool, repeat: int, min_time: float) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for nbytes in SIZES:
        size = format_size(nbytes).replace(" ", "").replace(".0", "")
        k = batch_count(nbytes)

        def arena_batch(nbytes: int = nbytes, k: int = k) -> None:
            with pool.arena() as arena:
                alloc = arena.alloc
                for _ in range(k):
                    alloc(nbytes)

        def bytearray_batch(nbytes: int = nbytes, k: int = k) -> None:
            kept = [bytearray(nbytes) for _ in range(k)]
            del kept

        def arena_single(nbytes: int = nbytes) -> None:
            with pool.arena() as arena:
                arena.alloc(nbytes)

        def bytearray_single(nbytes: int = nbytes) -> None:
            bytearray(nbytes)

        # warm: map the blocks these shapes use and commit their pages
        with pool.arena() as arena:
            for view in [arena.alloc(nbytes) for _ in range(k)]:
                touch(view)
        with pool.arena() as arena:
            touch(arena.alloc(nbytes))

        shapes = [
            ("batch", arena_batch, bytearray_batch, k),
            ("per_arena", arena_single, bytearray_single, 1),
        ]
        for shape, case_fn, base_fn, per in shapes:
            base = measure(base_fn, repeat=repeat, min_time=min_time, per=per)
            took = measure(case_fn, repeat=repeat, min_time=min_time, per=per)
            extra: dict[str, Any] = {"n": nbytes, "k": per, "shape": shape}
            if shape == "per_arena":
                extra["note"] = LIFECYCLE
            cases.append(case(f"bytearray.{shape}.{size}", "arena", base, **extra))
            cases.append(
                case(
                    f"arena.{shape}.{size}",
                    "arena",
                    took,
                    baseline=f"bytearray.{shape}.{size}",
                    baseline_seconds=base,
                    **extra,
                )
            )
    return cases


# -- ObjectPool cases -----------------------------------------------------------------


class Costly:
    """Builds a 64 KiB buffer and a small dict: costly enough to be worth pooling."""

    def __init__(self) -> None:
        self.buffer = bytearray(64 * 1024)
        self.headers = {f"x-header-{i}": str(i) for i in range(16)}


class Cheap:
    """Two attributes: cheaper to build than to pool."""

    def __init__(self) -> None:
        self.count = 0
        self.name = ""


def object_cases(repeat: int, min_time: float) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for label, factory in (("costly", Costly), ("cheap", Cheap)):
        base = measure(factory, repeat=repeat, min_time=min_time)
        cases.append(case(f"construct.{label}", "objectpool", base))
        for leak in ("off", "sample"):
            op: ObjectPool[Any] = ObjectPool(factory, maxsize=8, prealloc=1, leak_detection=leak)

            def borrow(op: ObjectPool[Any] = op) -> None:
                with op.borrow():
                    pass

            def acquire_release(op: ObjectPool[Any] = op) -> None:
                op.release(op.acquire())

            for shape, fn in (("borrow", borrow), ("acquire", acquire_release)):
                took = measure(fn, repeat=repeat, min_time=min_time)
                cases.append(
                    case(
                        f"objectpool.{label}.{leak}.{shape}",
                        "objectpool",
                        took,
                        baseline=f"construct.{label}",
                        baseline_seconds=base,
                    )
                )
            op.close()
    return cases


# -- reporting ------------------------------------------------------------------------


def case(
    name: str,
    group: str,
    seconds: float,
    *,
    baseline: str | None = None,
    baseline_seconds: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "group": group, "seconds_per_op": seconds, **extra}
    if baseline is not None and baseline_seconds is not None:
        entry["baseline"] = baseline
        entry["speedup"] = baseline_seconds / seconds
    return entry


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, checked against this run.

    The allocation targets are checked on the batch shape (allocation plus its share of
    one bulk release); the per-arena shape is in :func:`information`.
    """
    by_name = {c["name"]: c for c in cases}
    checks: list[dict[str, Any]] = []
    for size in ("1MiB", "4MiB"):
        got = by_name[f"arena.batch.{size}"]["speedup"]
        checks.append(
            {"target": f"arena.batch.{size} >= 20x bytearray", "value": got, "met": got >= 20}
        )
    got = by_name["arena.batch.4KiB"]["speedup"]
    checks.append(
        {
            "target": "arena.batch.4KiB no slower than 1.5x bytearray",
            "value": got,
            "met": got >= 1 / 1.5,
        }
    )
    for c in cases:
        if c["name"].startswith("objectpool.") and c["name"].endswith(".borrow"):
            us = c["seconds_per_op"] * 1e6
            checks.append({"target": f"{c['name']} under 1 us", "value": us, "met": us < 1.0})
    return checks


def information(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios reported without a target: one whole arena per allocation."""
    return [
        {"case": c["name"], "value": c["speedup"], "note": LIFECYCLE}
        for c in cases
        if c["name"].startswith("arena.per_arena.")
    ]


def table(
    cases: list[dict[str, Any]], checks: list[dict[str, Any]], info: list[dict[str, Any]]
) -> str:
    lines = [f"{'case':<38} {'per op':>12} {'vs baseline':>12}"]
    for c in cases:
        speed = f"{c['speedup']:.2f}x" if "speedup" in c else "(baseline)"
        note = f"  ({c['note']})" if "note" in c else ""
        lines.append(f"{c['name']:<38} {format_time(c['seconds_per_op']):>12} {speed:>12}{note}")
    lines.append("")
    lines.append("targets (speedup = baseline time / arenapool time):")
    for check in checks:
        mark = "met" if check["met"] else "MISSED"
        lines.append(f"  {mark:<7} {check['target']} (got {check['value']:.2f})")
    lines.append("")
    lines.append(f"information, no target ({LIFECYCLE}):")
    for item in info:
        lines.append(f"  {item['case']}: {item['value']:.2f}x bytearray")
    return "\n".join(lines)


def format_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e9:.0f} ns"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs per case (median)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timeit run")
    args = parser.parse_args(argv)

    pool = SlabPool("1GiB", max_class="16MiB", decay=None, retain=None)
    gc.collect()
    cases = arena_cases(pool, args.repeat, args.min_time)
    pool.close()
    cases += object_cases(args.repeat, args.min_time)
    checks = targets(cases)
    info = information(cases)
    print(
        f"arenapool {__version__} micro benchmark, Python {platform.python_version()}, "
        f"{platform.machine()}; warm pool (blocks mapped and touched), decay off; "
        f"median of {args.repeat} runs"
    )
    print(table(cases, checks, info))
    record = {
        "benchmark": "micro",
        "python": platform.python_version(),
        "arenapool": __version__,
        "repeat": args.repeat,
        "warm_pool": True,
        "cases": cases,
        "targets": checks,
        "information": info,
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
