"""What arenapool costs resident before the first request: the example service's RSS
at rest, per mode, each a fresh server process on 127.0.0.1.

    python benchmarks/startup_rss.py                       # about 1 minute
    python benchmarks/startup_rss.py --modes orjson+trim,arenapool --runs 5

Each round starts every mode once, in turn: the server answers ``/health``, rests for
``--settle`` seconds (its governor and decay threads have started, nothing is served),
and its RSS is read from the OS (psutil) with its ``smaps`` buckets
(``arenapool.memory.read_buckets``: ``file`` for mapped code, ``heap`` for glibc's
main heap, ``generic`` for other anonymous memory, which holds Python's object
arenas). Medians over ``--runs``, and each mode's difference to the first one.

Why it matters: the soak's "RSS after load" (``arenapool soak``) compares servers that
have given back what the load took. What is left between two modes then is what each
holds at rest, and most of that is code: the modules each imports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from harness.benchkit import print_json_line
from harness.modes import resolve_modes
from harness.report import fmt_mib_delta, machine_info
from harness.rss import buckets_of
from harness.server import Server

MiB = 1024 * 1024
BUCKETS = ("file", "heap", "generic")


def measure(names: list[str], runs: int, settle: float) -> dict[str, list[dict[str, int]]]:
    modes, notes = resolve_modes(names)
    for note in notes:
        print(note, file=sys.stderr)
    readings: dict[str, list[dict[str, int]]] = {m.name: [] for m in modes}
    for run in range(runs):
        for mode in modes:
            with Server(mode) as server:
                time.sleep(settle)  # at rest: nothing is sent meanwhile
                rss = server.rss()
                buckets = buckets_of(server)
            if rss is None or buckets is None:
                msg = f"could not read the memory of the {mode.name} server"
                raise RuntimeError(msg)
            reading = {"rss": rss, **{name: buckets.get(name, 0) for name in BUCKETS}}
            readings[mode.name].append(reading)
            print(
                f"  round {run + 1} {mode.name:20s} RSS {rss / MiB:6.1f} MiB  "
                + "  ".join(f"{name} {reading[name] / MiB:5.1f}" for name in BUCKETS),
                flush=True,
            )
    return readings


def medians(readings: dict[str, list[dict[str, int]]]) -> dict[str, dict[str, float]]:
    return {
        mode: {key: statistics.median(r[key] for r in rows) for key in ("rss", *BUCKETS)}
        for mode, rows in readings.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        default="orjson+trim,orjson,arenapool",
        help="comma-separated modes; differences are to the first (orjson+trim,orjson,arenapool)",
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds (3)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds at rest (3)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.modes.split(",") if name.strip()]
    print(f"RSS at rest: {', '.join(names)}; {args.runs} round(s), {args.settle:g} s each")
    table = medians(measure(names, args.runs, args.settle))
    first = next(iter(table))
    print(
        f"{'mode':20s} {'RSS':>9s} "
        + " ".join(f"{name:>9s}" for name in BUCKETS)
        + "   vs "
        + first
    )
    for mode, row in table.items():
        diff = row["rss"] - table[first]["rss"]
        print(
            f"{mode:20s} {row['rss'] / MiB:7.1f}Mi "
            + " ".join(f"{row[name] / MiB:7.1f}Mi" for name in BUCKETS)
            + f"   {fmt_mib_delta(diff)}"
        )
    result: dict[str, Any] = {
        "benchmark": "startup_rss",
        "arenapool": arenapool.__version__,
        "machine": machine_info(),
        "runs": args.runs,
        "settle_s": args.settle,
        "median_bytes": table,
    }
    print_json_line(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
