"""``benchmarks/cpu_split.py`` run for real: two servers on 127.0.0.1 under wrk, sampled by
``perf record -e cpu-clock``.

Only the accounting is asserted (every round of every server is there, the shared
objects' rows add up to no more than the whole, the sampled CPU agrees with the CPU the
kernel counted for the same process), never how fast anything went.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from _benchscript import BENCHMARKS, run_benchmark

SCRIPT = BENCHMARKS / "cpu_split.py"
ROUNDS = 2
MODES = ("orjson", "arenapool")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpu_split", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cpu_split(tmp_path: Path) -> dict[str, Any]:
    return run_benchmark(
        "cpu_split.py",
        tmp_path / "cpu_split.json",
        "--modes",
        ",".join(MODES),
        "--size",
        "64KiB",
        "--rounds",
        str(ROUNDS),
        "--duration",
        "3",
        "--warmup",
        "1",
        "--symbols",
        "_PyObject_Malloc",
    )


def test_every_round_of_every_server_is_sampled_and_adds_up(tmp_path: Path) -> None:
    doc = run_cpu_split(tmp_path)
    assert doc["modes"] == list(MODES)
    runs = doc["runs"]
    assert sorted((r["mode"], r["round"]) for r in runs) == sorted(
        (m, i) for m in MODES for i in range(ROUNDS)
    )
    for run in runs:
        assert run["requests"] > 0
        assert run["errors"] == 0
        objects = run["objects"]
        assert objects["interpreter"] > 0
        assert objects["kernel"] > 0
        assert objects["orjson"] > 0  # both modes decode with orjson
        # the named objects are a part of the whole, never more
        assert sum(objects.values()) <= run["total"] * 1.0001
        # the samples and the kernel's own count of the same process's CPU agree (the
        # sampler attaches a moment after the load starts: a short round loses a little)
        assert 0.5 < run["total"] / run["counted_us"] < 1.5
    ratios = doc["median_ratio"]
    assert ratios["orjson"]["total"] == 1.0  # the first mode is the baseline
    assert ratios["arenapool"]["total"] > 0
    # a named symbol is reported even when it is not among the costliest
    assert any(k.endswith(":_PyObject_Malloc") for k in doc["median_us_per_request"]["arenapool"])


def test_short_names_keep_the_object_and_the_symbol() -> None:
    split = load_script()
    assert split.short_name("libpython3.11.so.1.0:insertdict") == "libpython3.11:insertdict"
    assert split.short_name("[kernel.kallsyms]:clear_page_erms") == "kernel:clear_page_erms"
    assert split.short_name("orjson.cpython-311-x86_64-linux-gnu.so:?") == "orjson:?"
    assert split.short_name("total") == "total"


def test_medians_and_ratios_are_taken_round_by_round() -> None:
    split = load_script()

    def row(mode: str, round_: int, total: float) -> dict[str, Any]:
        return {
            "mode": mode,
            "round": round_,
            "total": total,
            "objects": {"interpreter": total / 2},
            "symbols": {},
        }

    # the second mode costs 1.5x, 1.1x and 1.2x the first's in the rounds they shared:
    # the median ratio is 1.2x, not the ratio of the medians (150 / 100)
    rows = [
        row("a", 0, 100.0),
        row("b", 0, 150.0),
        row("a", 1, 200.0),
        row("b", 1, 220.0),
        row("a", 2, 50.0),
        row("b", 2, 60.0),
    ]
    summary = split.summarize(rows, ["a", "b"])
    assert summary["median_us_per_request"]["b"]["total"] == 150.0
    assert summary["median_ratio"]["b"]["total"] == 1.2
    assert summary["median_ratio"]["a"]["object:interpreter"] == 1.0
