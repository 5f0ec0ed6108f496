"""The arenapool command: every command on a tiny workload, outputs checked."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from arenapool import cli
from arenapool._top import render
from harness import cli as harness_cli
from harness import modes, rss, server, soak
from harness.modes import resolve_modes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--scale", "0.01", "--seed", "3", "--quiet"]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > len(PNG_SIGNATURE)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- the parser ---------------------------------------------------------------------------


def test_every_command_and_option_has_help() -> None:
    """Each subcommand and each of its options carries help text."""
    parser = cli.build_parser()
    commands = subparsers(parser)
    assert {"demo", "bench", "soak", "top", "serve"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    """`arenapool bench --help` prints the options and exits 0."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert 0 == exc.value.code
    assert "--repeats" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    """Durations accept plain seconds and s/m/h units."""
    assert seconds == harness_cli.duration_arg(text)


def test_bad_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown mode is refused by the parser with the list of modes."""
    with pytest.raises(SystemExit):
        cli.main(["bench", "--modes", "orjson,fast"])
    assert "orjson+jemalloc" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    """`python -m arenapool --version` runs the same entry point."""
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "arenapool", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.startswith("arenapool ")


# --- the harness pieces ----------------------------------------------------------------------


def test_example_service_is_found() -> None:
    """The harness finds integrations/example_service/app.py in the source checkout."""
    assert "app.py" == server.find_example_service().name


def test_example_service_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$ARENAPOOL_EXAMPLE_SERVICE points the harness at another copy of the service."""
    copy = tmp_path / "app.py"
    copy.write_text("")
    monkeypatch.setenv("ARENAPOOL_EXAMPLE_SERVICE", str(copy))
    assert copy == server.find_example_service()


def test_missing_example_service_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the service the error names the place tried and the fix."""
    monkeypatch.delenv("ARENAPOOL_EXAMPLE_SERVICE", raising=False)
    monkeypatch.setattr(server, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="ARENAPOOL_EXAMPLE_SERVICE") as exc:
        server.find_example_service()
    assert str(tmp_path / "integrations" / "example_service" / "app.py") in str(exc.value)


def test_servers_load_arenapool_from_bytecode() -> None:
    """The environment the harness gives a server comes with arenapool's bytecode
    cached and valid for every module (the header holds the source's mtime and size, as
    Python checks them), so no server compiles arenapool's source as it starts."""
    server.service_env()
    sources = sorted(server.ARENAPOOL_DIR.rglob("*.py"))
    assert len(sources) > 30
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        header = cached.read_bytes()[:16]
        stat = source.stat()
        assert int(stat.st_mtime) & 0xFFFFFFFF == int.from_bytes(header[8:12], "little"), source
        assert stat.st_size & 0xFFFFFFFF == int.from_bytes(header[12:16], "little"), source


def test_wheel_ships_the_library_only() -> None:
    """The wheel packages arenapool alone: no harness, no copy of the example service."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(cli.__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert ["arenapool"] == wheel["packages"]
    assert "force-include" not in wheel


def test_harness_commands_outside_a_checkout_say_where_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without harness/ next to the package, demo/bench/soak/serve exit 2 and say why."""
    monkeypatch.setattr(cli, "checkout_root", lambda: tmp_path)
    assert {"demo", "bench", "soak", "serve", "top"} == set(subparsers(cli.build_parser()))
    for name in cli.HARNESS_COMMANDS:
        assert 2 == cli.main([name, "--duration", "1"])
        assert "source checkout" in capsys.readouterr().err


def test_python_dash_m_harness_runs_the_commands() -> None:
    """`python -m harness demo --help` runs the harness's demo command from the checkout."""
    root = Path(cli.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "harness", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    assert "--slice" in out.stdout


def test_rss_under_load_splits_peak_and_steady() -> None:
    """Peak is over every reading; steady is the median of the later half under load."""
    samples = [(0.0, 50), (1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40), (5.0, 99)]
    assert {"rss_peak": 99, "rss_steady": 35} == rss.rss_under_load(
        samples, [(1.0, 2.0), (3.0, 4.0)]
    )
    assert {"rss_peak": None, "rss_steady": None} == rss.rss_under_load([], [(0.0, 1.0)])


def test_missing_allocator_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode whose LD_PRELOAD library is absent is left out, with a note saying why."""
    monkeypatch.setattr(modes, "find_library", lambda name: None)
    found, notes = resolve_modes(["orjson", "orjson+jemalloc", "orjson+mimalloc"])
    assert ["orjson"] == [m.name for m in found]
    assert ["skipped orjson+jemalloc", "skipped orjson+mimalloc"] == [
        n.split(":")[0] for n in notes
    ]


def test_least_squares_slope() -> None:
    """The drift fit recovers the slope of a line."""
    assert (2.0, 1.0) == rss.least_squares([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)])


# --- demo, bench, soak on tiny workloads ------------------------------------------------------


def test_demo_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`arenapool demo` compares orjson and arenapool and writes its JSON and PNG."""
    argv = ["demo", "--duration", "2", "--slice", "0.5", "--idle", "0.5", "--out", str(tmp_path)]
    assert 0 == cli.main([*argv, *TINY])
    out = capsys.readouterr().out
    assert "RSS after 0.5 s idle" in out
    doc = json.loads((tmp_path / "arenapool-demo.json").read_text())
    assert ["orjson", "arenapool"] == list(doc["servers"])
    for stats in doc["servers"].values():
        for key in ("rps", "p50_ms", "p99_ms", "rss_peak", "rss_steady", "rss_idle", "errors"):
            assert key in stats
        assert stats["ok"] > 0
        assert 0 == stats["errors"] + stats["corrupt"]
    assert_png(tmp_path / "arenapool-demo.png")


def test_bench_writes_every_requested_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`arenapool bench` writes a Markdown table with every mode, a JSON file and plots."""
    modes = ["plain", "orjson", "arenapool", "arenapool-msgspec"]
    argv = [
        "bench",
        "--modes",
        ",".join(modes),
        "--workloads",
        "small",
        "--repeats",
        "1",
        "--duration",
        "0.5",
        "--idle",
        "0.3",
        "--out",
        str(tmp_path),
    ]
    assert 0 == cli.main([*argv, *TINY])
    table = (tmp_path / "bench.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| small |")]
    assert modes == [row.split("|")[2].strip() for row in rows]
    assert table.strip().splitlines()[-3] in capsys.readouterr().out
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "settings", "summary", "cases", "notes", "baseline"} <= set(doc)
    for row in doc["summary"]:
        for key in ("rps", "p50_ms", "p99_ms", "rss_peak", "rss_steady", "rss_idle"):
            assert row[key] is not None
        assert 1.0 == row["rps_vs_orjson"] or row["mode"] != "orjson"
    assert len(modes) == len(doc["cases"])
    assert all(case["rss_samples"] for case in doc["cases"])
    assert_png(tmp_path / "bench-rss-small.png")
    assert_png(tmp_path / "bench-summary.png")


def test_soak_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`arenapool soak` runs its modes side by side and reports, per mode, requests,
    median and p95 RSS, a drift in MiB/min and the RSS after idle, with a plot."""
    argv = ["soak", "--duration", "2", "--warmup", "0.5", "--interval", "0.1", "--idle", "0.3"]
    assert 0 == cli.main([*argv, "--out", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # the console wraps long lines
    assert "MiB/min" in out
    assert "arenapool / orjson+trim: median RSS" in out
    assert "(target <= 0.90x: m" in flat  # met or missed, as it comes
    doc = json.loads((tmp_path / "arenapool-soak.json").read_text())
    assert ["orjson", "orjson+trim", "arenapool"] == list(doc["modes"])
    for mode in doc["modes"].values():
        assert isinstance(mode["drift_mib_per_min"], float)
        assert mode["rss_idle"] > 0
        assert mode["rss_median"] <= mode["rss_p95"]
        assert mode["ok"] > 0
        assert 0 == mode["errors"] + mode["corrupt"]
        assert mode["cpu_us_per_request"] > 0
        assert 0 <= mode["system_us_per_request"] <= mode["cpu_us_per_request"]
        assert mode["faults_per_request"] >= 0
        # where the RSS is: smaps buckets that add up to an RSS reading
        under_load, after = mode["rss_buckets_median"], mode["rss_buckets_idle"]
        assert {"file", "heap", "stacks", "other", "generic"} == set(after)
        assert under_load["file"] > 0
        assert under_load["heap"] > 0
        assert abs(sum(after.values()) - mode["rss_idle"]) < mode["rss_idle"] * 0.2
        # at rest, before the first body: read from the OS too, and what the load left
        # behind is the difference between the reading after it and that one
        rest = mode["rss_buckets_rest"]
        assert {"file", "heap", "stacks", "other", "generic"} == set(rest)
        assert abs(sum(rest.values()) - mode["rss_rest"]) < mode["rss_rest"] * 0.2
        assert mode["rss_left_by_load"] == mode["rss_idle"] - mode["rss_rest"]
    assert "where the RSS is" in out
    assert "left by the load" in out
    assert "held at rest before the load" in out
    assert "under load (median) it holds" in flat
    assert "of what the load added" in flat
    assert_png(tmp_path / "arenapool-soak.png")


def test_soak_verdict_says_whether_each_target_is_met() -> None:
    """The soak's verdict gives each ratio to three decimals beside its target and says
    met or missed: at two decimals 0.904x printed as the 0.90x it misses."""
    against = harness_cli._against
    assert "0.904x (target <= 0.90x: missed)" == against(904, 1000, "<=", 0.90)
    assert "0.900x (target <= 0.90x: met)" == against(900, 1000, "<=", 0.90)
    # judged unrounded: 0.9004x prints as 0.900x but misses
    assert "0.900x (target <= 0.90x: missed)" == against(9004, 10000, "<=", 0.90)
    assert "0.999x (target >= 1.00x: missed)" == against(999, 1000, ">=", 1.00)
    assert "1.004x (target >= 1.00x: met)" == against(1004, 1000, ">=", 1.00)
    assert "- (target <= 1.00x)" == against(None, 1000, "<=", 1.00)
    assert "- (target <= 1.00x)" == against(1000, 0, "<=", 1.00)


def test_a_series_is_judged_on_its_unrounded_ratios() -> None:
    """Several runs' verdicts are judged on the exact ratios, as one run's are: a run at
    0.90004x reports 0.9000x and misses 0.90x; the median of the exact ratios is judged
    the same way."""

    def run(mine: int, base: int) -> dict[str, Any]:
        figures = {"rss_idle": 1, "ok": 1, "cpu_us_per_request": 1, "faults_per_request": 1}
        return {
            "modes": {
                "orjson+trim": {"rss_median": base, **figures},
                "arenapool": {"rss_median": mine, **figures},
            }
        }

    docs = [run(900_040, 1_000_000), run(900_040, 1_000_000), run(899_000, 1_000_000)]
    entry = soak.summarize_runs(docs, ["orjson+trim", "arenapool"])["modes"]["arenapool"]
    assert entry["ratios"]["rss_median"] == [0.9, 0.9, 0.899]
    assert entry["medians"]["rss_median"] == 0.9
    verdict = entry["targets"]["rss_median"]
    assert verdict["runs_met"] == 1
    assert verdict["median_met"] is False
    assert entry["targets"]["ok"] == {"op": ">=", "mark": 1.0, "median_met": True, "runs_met": 3}


def test_soak_runs_the_whole_soak_again_with_the_places_rotated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--runs 2` runs the soak twice, the servers' places rotated by one, and writes
    each run as a soak of its own; the summary sets each mode's ratios against the trim
    loop of each run (those of the run's own file) beside their median, and judges
    arenapool's targets on the medians, counting the runs that met each."""
    argv = ["soak", "--modes", "orjson+trim,arenapool", "--duration", "2", "--idle", "0"]
    argv += ["--warmup", "0.5", "--interval", "0.1"]
    assert 0 == cli.main([*argv, "--runs", "2", "--no-plot", "--out", str(tmp_path), *TINY])
    out = " ".join(capsys.readouterr().out.split())
    first, second = (
        json.loads((tmp_path / f"arenapool-soak-{n}.json").read_text()) for n in (1, 2)
    )
    assert not (tmp_path / "arenapool-soak.json").exists()
    assert ["orjson+trim", "arenapool"] == list(first["modes"])
    assert ["arenapool", "orjson+trim"] == list(second["modes"])
    summary = json.loads((tmp_path / "arenapool-soak-runs.json").read_text())
    assert (2, "orjson+trim") == (summary["runs"], summary["baseline"])
    assert [list(first["modes"]), list(second["modes"])] == summary["places"]
    (entry,) = summary["modes"].values()
    assert ["arenapool"] == list(summary["modes"])
    runs = (first, second)
    for key in ("rss_median", "rss_idle", "ok"):
        each = [run["modes"]["arenapool"][key] / run["modes"]["orjson+trim"][key] for run in runs]
        assert entry["ratios"][key] == pytest.approx(each, abs=1e-4)
        assert entry["medians"][key] == pytest.approx(sum(each) / 2, abs=1e-4)
        target = entry["targets"][key]
        met = [v <= target["mark"] if target["op"] == "<=" else v >= target["mark"] for v in each]
        assert sum(met) == target["runs_met"]
    assert "arenapool / orjson+trim, medians over 2 runs: median RSS" in out
    assert "of 2 runs)" in out
    assert "places, run by run: orjson+trim, arenapool; arenapool, orjson+trim" in out


def test_the_places_rotate_so_each_mode_takes_each_once() -> None:
    """Over as many runs as there are modes, each mode takes each place once."""
    modes = ["orjson+trim", "arenapool", "arenapool-lean"]
    orders = [soak.rotated(modes, run) for run in range(3)]
    assert modes == orders[0]
    for place in range(3):
        assert sorted(modes) == sorted(order[place] for order in orders)
    assert modes == soak.rotated(modes, 3)
    assert [] == soak.rotated([], 1)


@pytest.mark.parametrize("client", ["wrk", "python"])
def test_soak_runs_one_mode_with_either_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], client: str
) -> None:
    """`--mode` names one mode; `--client` picks wrk or the Python client."""
    argv = ["soak", "--mode", "msgspec", "--client", client, "--duration", "1", "--idle", "0"]
    assert 0 == cli.main([*argv, "--no-plot", "--out", str(tmp_path), *TINY])
    doc = json.loads((tmp_path / "arenapool-soak.json").read_text())
    assert (["msgspec"], client) == (list(doc["modes"]), doc["settings"]["client"])
    assert doc["modes"]["msgspec"]["ok"] > 0


def test_soak_reports_each_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--segments 2` runs the load as two wrk runs back to back: every mode reports
    each segment's requests, CPU and faults, they add up to the totals, and the
    segments follow each other in time. The Python client cannot segment: exit 2."""
    argv = ["soak", "--modes", "orjson+trim,arenapool", "--duration", "2", "--idle", "0"]
    assert 0 == cli.main([*argv, "--segments", "2", "--no-plot", "--out", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert "segment by segment" in out
    assert "arenapool / orjson+trim" in out
    doc = json.loads((tmp_path / "arenapool-soak.json").read_text())
    assert 2 == doc["settings"]["segments"]
    for mode in doc["modes"].values():
        first, second = mode["segments"]
        assert first["requests"] > 0
        assert second["requests"] > 0
        assert first["requests"] + second["requests"] == mode["ok"]
        assert first["start_s"] < first["end_s"] <= second["start_s"] < second["end_s"]
        assert first["cpu_us_per_request"] > 0
        assert second["faults_per_request"] >= 0
    argv = ["soak", "--mode", "orjson", "--client", "python", "--segments", "2"]
    assert 2 == cli.main([*argv, "--duration", "1", "--no-plot", "--out", str(tmp_path)])
    assert "--segments needs the wrk client" in capsys.readouterr().out


def test_soak_runs_a_control_as_a_second_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--modes orjson,orjson#2`: the second name is another server of the same mode (an
    A/A control), loaded beside it; the soak reports their ratios, and an unknown mode
    with the suffix is refused."""
    argv = ["soak", "--modes", "orjson,orjson#2", "--duration", "1", "--idle", "0"]
    assert 0 == cli.main([*argv, "--no-plot", "--out", str(tmp_path), *TINY])
    doc = json.loads((tmp_path / "arenapool-soak.json").read_text())
    assert ["orjson", "orjson#2"] == list(doc["modes"])
    assert all(mode["ok"] > 0 for mode in doc["modes"].values())
    assert "orjson#2 / orjson (the same mode in two servers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["soak", "--modes", "nosuch#2", "--no-plot", "--out", str(tmp_path)])


def test_bench_with_wrk_compares_like_with_like(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`arenapool bench --client wrk` drives the servers with wrk and sets each arenapool
    mode beside the same decoder without arenapool; faults and CPU per request come
    from the server's /proc/PID/stat."""
    modes = ["msgspec", "arenapool-msgspec"]
    argv = ["bench", "--modes", ",".join(modes), "--workloads", "small", "--repeats", "1"]
    argv += ["--duration", "1", "--idle", "0", "--client", "wrk", "--connections", "4"]
    assert 0 == cli.main([*argv, "--no-plot", "--out", str(tmp_path), *TINY])
    doc = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["mode"]: row for row in doc["summary"]}
    assert "msgspec" == rows["arenapool-msgspec"]["same_decoder"]
    assert 1.0 == rows["msgspec"]["rps_vs_same"]
    for row in rows.values():
        assert row["ok"] > 0
        assert row["cpu_us_per_request"] > 0
        assert row["faults_per_request"] >= 0
    assert "msgspec" in (tmp_path / "bench.md").read_text()


# --- top ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_server() -> Any:
    mode = resolve_modes(["arenapool"])[0][0]
    with server.Server(mode, admin_token="s3cret", limit="1MiB") as running:
        request = urllib.request.Request(
            running.url + "/ingest",
            data=b'{"records": [{"value": 2, "tag": "t"}]}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert 200 == response.status
        yield running


def test_top_shows_a_real_server(admin_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`arenapool top` polls /_arenapool/stats with the token and shows RSS and routes."""
    argv = ["top", admin_server.url, "--token", "s3cret", "--count", "2", "--interval", "0.1"]
    assert 0 == cli.main(argv)
    out = capsys.readouterr().out
    assert "RSS" in out
    assert "POST /ingest" in out
    assert "code_and_libs" in out  # the breakdown's legend


def test_top_json_lines(admin_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`arenapool top --json` prints one parseable snapshot per poll."""
    argv = ["top", admin_server.url, "--token", "s3cret", "--count", "2", "--interval", "0.1"]
    assert 0 == cli.main([*argv, "--json"])
    lines = capsys.readouterr().out.splitlines()
    assert 2 == len(lines)
    assert all(json.loads(line)["rss"] > 0 for line in lines)


def test_top_without_token_says_so(admin_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the token, top shows the 401 and a hint, and exits 1."""
    assert 1 == cli.main(["top", admin_server.url, "--count", "1", "--json"])
    assert "401" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize(
    "snapshot",
    [
        {},
        {"memory": {"rss": 1 << 20}},
        {"rss": 5 << 20, "routes": [{"name": "GET /", "requests": 3}], "pools": [1, 2]},
        {"routes": {"POST /x": 7}, "slab_pools": [{"name": "p", "lent_bytes": 4096}]},
    ],
)
def test_top_renders_any_layout(snapshot: dict[str, Any]) -> None:
    """The renderer accepts snapshots with missing keys or other layouts."""
    console = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(snapshot, source="test"))
    console.file.close()
    assert "arenapool top" in console.export_text()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:1", "http://h:1/_arenapool/stats?token=t"),
        ("h:1/", "http://h:1/_arenapool/stats?token=t"),
        ("http://h:1/_arenapool/stats?token=old", "http://h:1/_arenapool/stats?token=t"),
        ("http://h:1/app/", "http://h:1/app/_arenapool/stats?token=t"),
    ],
)
def test_stats_url(url: str, expected: str) -> None:
    """A base URL or a stats URL becomes the stats URL with the token."""
    assert expected == cli.stats_url(url, "t")
