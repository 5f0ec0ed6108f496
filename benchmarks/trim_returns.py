"""Does a trim under load give memory back for good? Its yield, and what comes back.

``malloc_trim(0)`` gives glibc's free heap pages back to the OS, and RSS drops at once.
Under load the next requests may take the same heap memory again, and every page they
touch faults back in: the trim then bought a dip in RSS, not a lower level, and paid for
it in page faults. Whether it does is a property of the traffic, and it is read here
from the heap itself, not from RSS (which the slabs, pymalloc and every buffer move
too): the governor counts, for every trim, the main heap's resident pages before and
after it (``mincore``, :func:`arenapool.memory.heap_resident`), and, at its next
reading one interval later, how much of what it gave back is resident again
(``Governor.stats()["heap_returns"]``, by the trim's reason: ``back_bytes`` out of
``judged_bytes``, the bytes of the trims a reading has looked at).

Each run starts one example service on 127.0.0.1 with the admin routes on, drives it
with ``wrk`` (the soak's 1 KiB-4 MiB deck with 8 connections for ``mixed``, 32
connections for a fixed size), reads the governor's counters after ``--warmup`` seconds
and again at the end, and reports the trims between the two readings: how many, the
bytes they gave back, and the share of the judged bytes resident again at the next
reading (``back``), with the server's minor page faults per request in that time
(``/proc/PID/stat``, over the requests served at the run's rate). Modes
(``harness.modes``): ``arenapool`` (the default: the held heap and its busy trims, each
settled at the next reading), ``arenapool-heap-trim``
(``GovernorConfig(heap_trim_every=1.0)``: a trim every second under load, as the
hand-written trim loop does) and ``arenapool-unsettled-trims``
(``GovernorConfig(settle_busy_trims=False)``: busy trims judged by their RSS drop
alone). Rounds run every mode and load once each, in turn; the table shows medians over
``--rounds``.

    .venv/bin/python benchmarks/trim_returns.py                      # ~7 minutes
    .venv/bin/python benchmarks/trim_returns.py --loads 1MiB --modes arenapool-heap-trim

Counts and bytes from the process's own heap, not times: the load on the machine moves
them little. Prints a table and one JSON line (``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.benchkit import print_json_line
from harness.modes import resolve_modes
from harness.run import SOAK_SETTINGS
from harness.server import Server
from harness.workload import Workload, size_workload
from harness.wrk import deck_files, need_wrk, run_wrk

TOKEN = "trim-returns"
MIXED = "mixed"


def workload_for(load: str) -> tuple[Workload, int]:
    """The deck's workload and wrk's connections for ``load``."""
    return size_workload(load, name="load"), 8 if load == MIXED else 32


def heap_returns(server: Server) -> dict[str, dict[str, int]]:
    """The governor's ``heap_returns``, from the server's admin stats."""
    request = urllib.request.Request(
        server.url + "/_arenapool/stats", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        stats: dict[str, Any] = json.load(response)
    returns: dict[str, dict[str, int]] = stats["governor"]["heap_returns"]
    return returns


def between(
    first: dict[str, dict[str, int]], last: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Each reason's trims and bytes returned, judged and back from ``first`` to ``last``
    (reasons with no trim in between are left out)."""
    zero = {"trims": 0, "returned_bytes": 0, "judged_bytes": 0, "back_bytes": 0}
    rows = {}
    for reason, row in last.items():
        before = first.get(reason, zero)
        rows[reason] = {key: row[key] - before[key] for key in zero}
    return {reason: row for reason, row in rows.items() if row["trims"]}


async def run_one(mode: str, load: str, duration: float, warmup: float) -> dict[str, Any]:
    """One server of ``mode`` under ``load``: the trims after the warm-up, by reason."""
    workload, connections = workload_for(load)
    modes, notes = resolve_modes([mode])
    if not modes:
        raise SystemExit("; ".join(notes))
    server = Server(modes[0], admin_token=TOKEN).start()
    try:
        with deck_files(workload.deck(SOAK_SETTINGS.seed)) as (script, paths):
            load_run = asyncio.ensure_future(
                run_wrk(server.port, script, paths, duration=duration, connections=connections)
            )
            await asyncio.sleep(warmup)
            first = await asyncio.to_thread(heap_returns, server)
            stat_first = server.stat()
            await asyncio.sleep(max(1.0, duration - warmup - 2.0))
            last = await asyncio.to_thread(heap_returns, server)
            stat_last = server.stat()
            result = await load_run
    finally:
        server.stop()
    seconds = duration - warmup - 2.0
    faults = None
    if stat_first is not None and stat_last is not None and result.rps > 0:
        # the minor faults between the two readings, over the requests served in that
        # time at the run's rate (wrk counts only the whole run)
        faults = round((stat_last.minflt - stat_first.minflt) / (result.rps * seconds), 2)
    return {
        "mode": mode,
        "load": load,
        "requests": result.requests,
        "seconds": round(seconds, 1),
        "faults_per_request": faults,
        "trims": between(first, last),
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (mode, load, reason) over the rounds (a round without such a trim
    counts as none); a (mode, load) whose runs made no trim at all gets one row, ``-``."""
    zero = {"trims": 0, "returned_bytes": 0, "judged_bytes": 0, "back_bytes": 0}
    groups: dict[tuple[str, str], list[dict[str, dict[str, int]]]] = {}
    faults: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        key = (run["mode"], run["load"])
        groups.setdefault(key, []).append(run["trims"])
        if run.get("faults_per_request") is not None:
            faults.setdefault(key, []).append(run["faults_per_request"])
    table = []
    for (mode, load), trims in groups.items():
        per_request = faults.get((mode, load))
        for reason in sorted({reason for by_reason in trims for reason in by_reason}) or ["-"]:
            rows = [by_reason.get(reason, zero) for by_reason in trims]
            shares = [r["back_bytes"] / r["judged_bytes"] for r in rows if r["judged_bytes"]]
            table.append(
                {
                    "mode": mode,
                    "load": load,
                    "reason": reason,
                    "rounds": len(rows),
                    "trims": statistics.median(r["trims"] for r in rows),
                    "returned_mib": round(
                        statistics.median(r["returned_bytes"] for r in rows) / 2**20, 1
                    ),
                    "back_share": round(statistics.median(shares), 3) if shares else None,
                    "faults_per_request": (
                        round(statistics.median(per_request), 2) if per_request else None
                    ),
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="arenapool,arenapool-heap-trim")
    parser.add_argument("--loads", default="mixed,1MiB", help="mixed and/or body sizes")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before counting")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.duration < args.warmup + 5:
        parser.error("--duration must be at least --warmup + 5 seconds")
    need_wrk()
    modes = [m for m in args.modes.split(",") if m]
    loads = [load for load in args.loads.split(",") if load]
    runs = []
    for round_no in range(args.rounds):
        for load in loads:
            for mode in modes if round_no % 2 == 0 else modes[::-1]:
                run = asyncio.run(run_one(mode, load, args.duration, args.warmup))
                runs.append(run)
                print(f"round {round_no + 1} {mode} {load}: {run['trims']}", flush=True)
    table = summarize(runs)
    print(
        f"{'mode':26s} {'load':6s} {'reason':7s} {'trims':>6s} {'returned':>10s} {'back':>6s}"
        f" {'faults/req':>10s}"
    )
    for row in table:
        share = "-" if row["back_share"] is None else f"{row['back_share']:.2f}"
        per_request = row["faults_per_request"]
        faults = "-" if per_request is None else f"{per_request:.1f}"
        print(
            f"{row['mode']:26s} {row['load']:6s} {row['reason']:7s} {row['trims']:6.0f} "
            f"{row['returned_mib']:7.1f} MiB {share:>6s} {faults:>10s}"
        )
    doc = {"benchmark": "trim_returns", "runs": runs, "table": table, **vars(args)}
    doc["out"] = str(args.out) if args.out else None
    print_json_line(doc, doc["out"])


if __name__ == "__main__":
    main()
