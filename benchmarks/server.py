"""Issue 3's benchmark, like for like (issue 11): the example service six ways, one run.

    python benchmarks/server.py                      # about 12 minutes on 2 cores
    python benchmarks/server.py --client wrk --connections 32      # wrk drives the load
    python benchmarks/server.py --repeats 1 --duration 3 --scale 0.1   # a quick look

Each mode (``plain``; ``orjson`` and ``orjson+trim``, the same with a once-a-second
``malloc_trim(0)`` task; ``msgspec``, plain aiohttp decoding into the ``Ingest`` Struct;
``arenapool`` with orjson; ``arenapool-msgspec`` with the same Struct) runs in a fresh
server process on 127.0.0.1 for each workload (``small`` 1 KiB, ``large`` 1-4 MiB,
``mixed`` 1 KiB-4 MiB log-uniform) and is driven by one bounded client run with the
same seed: the Python client of this process, or ``--client wrk``. Reported per case:
requests/s, p50 and p99 latency (client-side), peak, steady and final RSS (psutil, the
server process; final = after ``--idle`` seconds without load), minor faults and CPU per
request (the server's ``/proc/PID/stat``), medians over ``--repeats``, and ratios to
``orjson`` and to the *same decoder without arenapool* (``arenapool`` / ``orjson``,
``arenapool-msgspec`` / ``msgspec``), measured in the same run. The last line is one
JSON object.

Targets (reported, not enforced), against the same decoder without arenapool:
small-body throughput >= 0.98x, large-body throughput >= 1.05x, mixed steady RSS <=
0.90x of the trim loop's (``orjson+trim``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from harness.bench import measure_matrix
from harness.benchkit import print_json_line
from harness.modes import resolve_modes
from harness.report import machine_info
from harness.run import Progress, RunSettings
from harness.workload import get_workload

MODES = ["plain", "orjson", "orjson+trim", "msgspec", "arenapool", "arenapool-msgspec"]
WORKLOADS = ["small", "large", "mixed"]
MiB = 1024 * 1024

# (workload, summary key, bound, "min" or "max", against): arenapool vs the same decoder
# without it ("same"), or vs a named mode
TARGETS = [
    ("small", "rps", 0.98, "min", "same"),
    ("large", "rps", 1.05, "min", "same"),
    ("mixed", "rss_steady", 0.90, "max", "orjson+trim"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (default: 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument(
        "--idle", type=float, default=15.0, help="seconds before the final RSS reading (15)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply body sizes (1.0)")
    parser.add_argument("--seed", type=int, default=1, help="seed for bodies and order (1)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated ({','.join(MODES)})"
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated ({','.join(WORKLOADS)})"
    )
    parser.add_argument(
        "--no-governor",
        dest="governor",
        action="store_false",
        help="run the arenapool modes without the memory governor",
    )
    parser.add_argument(
        "--client",
        choices=("python", "wrk"),
        default="python",
        help="client of the measured load (python: checks every answer; wrk: a C client)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="requests in flight per server (default: the workload's)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    return parser.parse_args(argv)


class _Lines(Progress):
    def note(self, text: str) -> None:
        print(f"note: {text}", file=sys.stderr, flush=True)

    def phase(self, label: str, total: float) -> None:
        print(f"  {label}", file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'case':<26} {'req/s':>8} {'x orjson':>8} {'x same':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'peak MiB':>9} {'steady MiB':>10} {'x orjson':>8} {'final MiB':>9} "
        f"{'flt/req':>8} {'CPU us':>7} {'err':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        same = r["rps_vs_same"] if r.get("same_decoder") not in (None, r["mode"]) else None
        print(
            f"{r['workload'] + '/' + r['mode']:<26} {fmt(r['rps']):>8} "
            f"{ratio(r['rps_vs_orjson']):>8} {ratio(same):>7} {fmt(r['p50_ms'], '.1f'):>8} "
            f"{fmt(r['p99_ms'], '.1f'):>8} {fmt(r['rss_peak'], '.0f', MiB):>9} "
            f"{fmt(r['rss_steady'], '.0f', MiB):>10} {ratio(r['rss_steady_vs_orjson']):>8} "
            f"{fmt(r['rss_idle'], '.0f', MiB):>9} {fmt(r.get('faults_per_request'), '.1f'):>8} "
            f"{fmt(r.get('cpu_us_per_request'), '.0f'):>7} {r['errors'] + r['corrupt']:>5}"
        )


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["workload"], r["mode"]): r for r in rows}
    results = []
    for workload, key, bound, kind, against in TARGETS:
        for mode in ("arenapool", "arenapool-msgspec"):
            row = by_key.get((workload, mode))
            if row is None:
                continue
            if against == "same":
                value, versus = row.get(f"{key}_vs_same"), row.get("same_decoder")
            else:
                base = by_key.get((workload, against))
                value = None if base is None or not base[key] else row[key] / base[key]
                versus = against
            met = None if value is None else (value >= bound if kind == "min" else value <= bound)
            results.append(
                {
                    "name": f"server.{workload}.{mode}.{key}_vs_{versus}",
                    "value": value,
                    "target": f"{'>=' if kind == 'min' else '<='} {bound}",
                    "met": met,
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes, notes = resolve_modes(args.modes.split(","))
    workloads = [get_workload(w, scale=args.scale) for w in args.workloads.split(",")]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    started = time.time()
    print(
        f"arenapool {arenapool.__version__}: {len(modes)} modes x {len(workloads)} workloads x "
        f"{args.repeats} repeats, {args.duration:g} s per run",
        file=sys.stderr,
    )
    settings = RunSettings(
        seed=args.seed,
        duration=args.duration,
        idle=args.idle,
        governor=args.governor,
        client=args.client,
        connections=args.connections,
    )
    _, rows = measure_matrix(
        modes, workloads, settings=settings, repeats=args.repeats, progress=_Lines()
    )
    rows.sort(
        key=lambda r: (
            args.workloads.split(",").index(r["workload"]),
            MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES),
        )
    )
    print_table(rows)
    targets = check_targets(rows)
    print()
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"target {t['name']} {t['target']}: {ratio(t['value'])} {verdict}")
    doc = {
        "benchmark": "server",
        "arenapool": arenapool.__version__,
        "elapsed_s": round(time.time() - started, 1),
        "settings": {
            "repeats": args.repeats,
            "duration_s": args.duration,
            "idle_s": args.idle,
            "scale": args.scale,
            "seed": args.seed,
            "governor": args.governor,
            "client": args.client,
            "connections": args.connections,
        },
        "machine": machine_info(),
        "notes": notes,
        "cases": {
            f"server.{r['workload']}.{r['mode']}": {
                k: v for k, v in r.items() if k not in ("workload", "mode")
            }
            for r in rows
        },
        "targets": targets,
    }
    print_json_line(doc, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
