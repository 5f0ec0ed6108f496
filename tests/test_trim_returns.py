"""``benchmarks/trim_returns.py`` run for real: a server on 127.0.0.1 driven by wrk.

One short run of the governor's periodic heap trim under steady bodies. Only what the
run records is asserted (its trims and how their bytes add up), never how fast anything
went or how much came back.
"""

from __future__ import annotations

from pathlib import Path

from _benchscript import run_benchmark


def test_a_run_counts_each_trim_and_what_came_back(tmp_path: Path) -> None:
    doc = run_benchmark(
        "trim_returns.py",
        tmp_path / "trim_returns.json",
        "--modes",
        "arenapool-heap-trim",
        "--loads",
        "256KiB",
        "--duration",
        "8",
        "--warmup",
        "2",
        "--rounds",
        "1",
        timeout=120,
    )
    (run,) = doc["runs"]
    assert ("arenapool-heap-trim", "256KiB") == (run["mode"], run["load"])
    assert run["requests"] > 0
    assert run["faults_per_request"] >= 0  # read from the server's /proc/PID/stat
    heap = run["trims"]["heap"]  # one a second over the 4 s between the two readings
    assert 3 <= heap["trims"] <= 6
    assert 0 <= heap["back_bytes"] <= heap["judged_bytes"]
    (row,) = doc["table"]
    assert ("heap", 1) == (row["reason"], row["rounds"])
    assert row["trims"] == heap["trims"]
    assert row["faults_per_request"] == run["faults_per_request"]
