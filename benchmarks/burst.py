"""Bursts of large bodies: served within the budget, or refused at once.

Two scenarios of issue 13, each against a fresh example service (one process, on
127.0.0.1) in each mode, side by side in one run, repeated ``--runs`` times (medians):

- ``serve``: 256 concurrent 4 MiB JSON posts, budget 256 MiB, default settings, a 60 s
  client timeout. Reported: share answered 200 with the right summary (target >= 95%),
  the server's peak RSS (psutil, sampled every 50 ms) against budget + 160 MiB, and the
  time the burst took.
- ``shed``: 2,048 concurrent 4 MiB posts with a 10 s client timeout, a burst the server
  cannot finish. The server first serves one ``serve``-sized burst, so it has seen its
  own speed, as a server in production has. Reported: 503 latency (target under 50 ms:
  its percentiles, and how many came in under 50 ms) and how many carried
  ``Retry-After``; how many admitted requests the client gave up on (``timeout``:
  admitted work that did not finish); goodput (bodies answered 200 per second, and
  MiB/s). Run twice: ``shed`` as is (the server plans against its own 30 s
  ``queue_timeout``), and ``shed-deadline`` with the client's 10 s announced the way
  Envoy announces its route timeout (``x-envoy-expected-rq-timeout-ms: 10000``).
  Beside them runs ``refuse-floor`` (``benchmarks/refuser.py``): aiohttp answering every
  POST with 503 without looking at it. 2,048 heads that arrive together are answered
  one after another by one event loop, so its 503 latency is the least any aiohttp
  server reaches here; arenapool's is reported against it (``refusal_vs_floor``).

The client is this process (raw non-blocking sockets, :mod:`harness.burst`); the
latency is from the head handed to the kernel to the answer's arrival in the client's
socket (kernel receive timestamps), so a client busy sending does not inflate it. Each
server runs in its own process. The baseline is the orjson service without a budget, the same
decoder without arenapool. Without a budget, 2,048 bodies of 4 MiB grow past 10 GiB, so
every server runs in a memory cgroup of ``--cap`` (4 GiB; root only, else uncapped) and
its OOM kills are reported.

Usage: python benchmarks/burst.py [--runs 3] [--scenario all|serve|shed|shed-deadline]
       [--modes arenapool,orjson,refuse-floor]
Prints a table and one JSON line per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arenapool import parse_size
from harness import cgroup
from harness.burst import burst, summarize
from harness.modes import Mode, resolve_modes
from harness.rss import RssSampler
from harness.server import Server
from harness.workload import make_body

MiB = 1024 * 1024
BODY = 4 * MiB
BUDGET = "256MiB"
SERVE = {"count": 256, "timeout": 60.0}
SHED = {"count": 2048, "timeout": 10.0}
DEADLINE = (("x-envoy-expected-rq-timeout-ms", "10000"),)
#: the floor of a refusal's latency: aiohttp answering every POST 503 without looking
FLOOR = Mode(
    "refuse-floor",
    "refuse",
    "aiohttp answering every POST with 503 unread (benchmarks/refuser.py)",
    app="benchmarks/refuser.py",
)


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _scenario(server: Server, name: str) -> dict[str, Any]:
    body = make_body(BODY, random.Random(13))
    sampler = RssSampler({"server": server}, interval=0.05)
    before = server.rss() or 0
    if name.startswith("shed"):  # a server in production has seen its own speed
        outcomes, elapsed = await burst(server.port, body, SERVE["count"], timeout=60.0)
        before = server.rss() or 0
    sampler.start()
    try:
        params = SERVE if name == "serve" else SHED
        outcomes, elapsed = await burst(
            server.port,
            body,
            int(params["count"]),
            timeout=params["timeout"],
            headers=DEADLINE if name == "shed-deadline" else (),
        )
    finally:
        sampler.stop()
    report = summarize(outcomes, elapsed, BODY)
    peak = max((rss for _, rss in sampler.samples["server"]), default=before)
    report["rss_before_mib"] = round(before / MiB, 1)
    report["rss_peak_mib"] = round(peak / MiB, 1)
    return report


def _run(mode_name: str, scenario: str, cap: int) -> dict[str, Any]:
    if mode_name == FLOOR.name:
        mode = FLOOR
    else:
        (mode,), _notes = resolve_modes([mode_name])
    group = cgroup.MemoryCgroup(cap) if cgroup.unavailable() is None else None
    try:
        with Server(mode, budget=BUDGET, limit="8MiB", startup_timeout=60.0) as server:
            if group is not None and server.proc is not None:
                group.adopt(server.proc.pid)
            report = asyncio.run(_scenario(server, scenario))
        if group is not None:
            report["oom_kills"] = group.oom_kills()
        return report
    finally:
        if group is not None:
            group.remove()


def _median(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


def _table(scenario: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"case": f"burst-{scenario}", "runs": {}}
    print(f"\n## {scenario}: {SERVE if scenario == 'serve' else SHED}, body 4 MiB, {BUDGET}")
    header = (
        "mode        ok%    200   503  timeout  503 p50/p90/p99/max ms (<50 ms)"
        "  peak RSS  elapsed  goodput"
    )
    print(header)
    for mode, rows in results.items():
        med = {
            "ok_share": _median(rows, "ok_share"),
            "ok": _median(rows, "ok"),
            "n503": _median(rows, "outcomes", "503", "count"),
            "timeouts": _median(rows, "outcomes", "timeout", "count"),
            "p50_503": _median(rows, "outcomes", "503", "p50_ms"),
            "p90_503": _median(rows, "outcomes", "503", "p90_ms"),
            "within_50ms_503": _median(rows, "outcomes", "503", "within_50ms"),
            "p99_503": _median(rows, "outcomes", "503", "p99_ms"),
            "max_503": _median(rows, "outcomes", "503", "max_ms"),
            "rss_peak_mib": _median(rows, "rss_peak_mib"),
            "elapsed_s": _median(rows, "elapsed_s"),
            "goodput_rps": _median(rows, "goodput_rps"),
            "goodput_mib_s": _median(rows, "goodput_mib_s"),
            "oom_kills": _median(rows, "oom_kills"),
        }
        summary["runs"][mode] = {"median": med, "each": rows}
        print(
            f"{mode:<10} {100 * (med['ok_share'] or 0):5.1f} {med['ok'] or 0:6.0f}"
            f" {med['n503'] or 0:5.0f} {med['timeouts'] or 0:8.0f}"
            f"  {med['p50_503']}/{med['p90_503']}/{med['p99_503']}/{med['max_503']}"
            f" ({med['within_50ms_503']})".ljust(28)
            + f"  {med['rss_peak_mib']} MiB  {med['elapsed_s']} s"
            f"  {med['goodput_rps']} req/s ({med['goodput_mib_s']} MiB/s)"
            f"  oom kills {med['oom_kills']}"
        )
    if "orjson" in summary["runs"] and "arenapool" in summary["runs"]:
        base = summary["runs"]["orjson"]["median"]
        ours = summary["runs"]["arenapool"]["median"]
        if base["rss_peak_mib"] and ours["rss_peak_mib"]:
            summary["peak_rss_ratio"] = round(ours["rss_peak_mib"] / base["rss_peak_mib"], 3)
        if base["goodput_rps"] and ours["goodput_rps"]:
            summary["goodput_ratio"] = round(ours["goodput_rps"] / base["goodput_rps"], 3)
    if FLOOR.name in results and "arenapool" in results:
        # runs are interleaved: run i of each mode shared the machine's state of round i,
        # so the ratio is taken within each round, then the median (as request_path does)
        per_round = []
        for ours_row, floor_row in zip(results["arenapool"], results[FLOOR.name], strict=True):
            ours_503 = ours_row["outcomes"].get("503", {}).get("p50_ms")
            floor_503 = floor_row["outcomes"].get("503", {}).get("p50_ms")
            if ours_503 and floor_503:
                per_round.append(round(ours_503 / floor_503, 3))
        if per_round:
            summary["refusal_vs_floor"] = round(statistics.median(per_round), 3)
            summary["refusal_vs_floor_per_round"] = per_round
            print(
                f"arenapool's 503 p50 / the floor's, within each round: {per_round};"
                f" median {summary['refusal_vs_floor']}x"
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--scenario", choices=("all", "serve", "shed", "shed-deadline"), default="all"
    )
    parser.add_argument("--modes", default=f"arenapool,orjson,{FLOOR.name}")
    parser.add_argument("--cap", default="4GiB", help="memory cgroup limit per server")
    args = parser.parse_args(argv)
    _raise_fd_limit(2 * SHED["count"] + 256)
    scenarios = ["serve", "shed", "shed-deadline"] if args.scenario == "all" else [args.scenario]
    modes = [m for m in args.modes.split(",") if m]
    started = time.monotonic()
    for scenario in scenarios:
        # the floor refuses everything: it has nothing to say about serving a burst
        here = [m for m in modes if not (scenario == "serve" and m == FLOOR.name)]
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in here}
        for _ in range(args.runs):
            for mode in here:  # interleaved, so drift in machine load hits both
                results[mode].append(_run(mode, scenario, parse_size(args.cap)))
        summary = _table(scenario, results)
        summary["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
