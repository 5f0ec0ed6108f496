"""``benchmarks/request_path.py`` run for real: servers on 127.0.0.1 driven by wrk.

Two short runs of one pair (arenapool and its baseline, 1 KiB bodies): one after the
other by default, at the same time with ``--side-by-side``. Only what the runs record is
asserted (their windows, their ratios), never how fast anything went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _benchscript import run_benchmark

ROUNDS = 2


def run_request_path(
    tmp_path: Path, *extra: str, modes: str = "orjson,arenapool"
) -> dict[str, Any]:
    return run_benchmark(
        "request_path.py",
        tmp_path / "request_path.json",
        "--sizes",
        "1KiB",
        "--modes",
        modes,
        "--rounds",
        str(ROUNDS),
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--rewarm",
        "0.5",
        "--no-floor",
        *extra,
    )


def pairs_by_round(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    runs = doc["runs"]
    pairs = []
    for round_ in range(ROUNDS):
        mine = {r["mode"]: r for r in runs if r["round"] == round_}
        assert {"orjson", "arenapool"} == set(mine)
        pairs.append((mine["arenapool"], mine["orjson"]))
    return pairs


def overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Seconds two runs' measured windows share (negative: the gap between them)."""
    return float(min(a["ended"], b["ended"]) - max(a["started"], b["started"]))


@pytest.mark.parametrize("side_by_side", [False, True], ids=["one-after-the-other", "side-by-side"])
def test_a_pair_runs_together_only_side_by_side(tmp_path: Path, side_by_side: bool) -> None:
    """With ``--side-by-side`` the two servers of a pair are measured over the same
    seconds (their windows overlap by most of the run's duration); without it, one after
    the other (no overlap). Either way each round gives the pair's ratio of requests/s,
    every request answered, each server drained of the rewarm's requests before its
    measured run, and the settings say which way it ran."""
    doc = run_request_path(tmp_path, *(["--side-by-side"] if side_by_side else []))
    assert (side_by_side, True) == (doc["settings"]["side_by_side"], doc["settings"]["drain"])
    pairs = pairs_by_round(doc)
    for mine, base in pairs:
        assert 0 == mine["errors"] == base["errors"]
        # each server finished the rewarm's requests before its measured run (--drain)
        assert mine["drained_s"] is not None
        assert base["drained_s"] is not None
        assert mine["requests"] > 0
        assert base["requests"] > 0
        if side_by_side:
            assert overlap(mine, base) > 0.5
        else:
            assert overlap(mine, base) < 0
    ratio = doc["rows"][0]["ratios"]["arenapool/orjson"]
    assert [round(m["rps"] / b["rps"], 3) for m, b in pairs] == ratio["per_round"]


def test_side_by_side_every_mode_runs_beside_its_own_baseline_run(tmp_path: Path) -> None:
    """A mode that is not arenapool's own pair (here ``arenapool-no-governor``) gets a
    group of its own with its baseline when the servers are loaded side by side: the
    baseline then runs once per group in every round, and each mode's ratio divides by
    the baseline's run loaded over the same seconds as it, not by the one beside the
    other mode."""
    doc = run_request_path(
        tmp_path, "--side-by-side", modes="orjson,arenapool,arenapool-no-governor"
    )
    runs = doc["runs"]
    ratios = doc["rows"][0]["ratios"]
    for mode in ("arenapool", "arenapool-no-governor"):
        expected = []
        for round_ in range(ROUNDS):
            [mine] = [r for r in runs if r["round"] == round_ and r["mode"] == mode]
            bases = [r for r in runs if r["round"] == round_ and r["mode"] == "orjson"]
            assert 2 == len(bases)  # one beside each of the two modes
            [beside] = [b for b in bases if overlap(mine, b) > 0.5]
            [other] = [b for b in bases if b is not beside]
            assert overlap(mine, other) < 0
            assert 0 == mine["errors"] == beside["errors"]
            expected.append(round(mine["rps"] / beside["rps"], 3))
        assert expected == ratios[f"{mode}/orjson"]["per_round"]
