"""The commands that run the example service: ``demo``, ``bench``, ``soak`` and ``serve``.

``arenapool demo|bench|soak|serve`` (from a source checkout) and ``python -m harness``
add these commands with :func:`add_commands`. Every command that generates load starts
the example service on 127.0.0.1 in subprocesses, drives it from this process, bounds
every run in requests and in time, and reads memory from the servers' processes with
psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from arenapool import parse_size
from arenapool.cli import add_command, positive_float, positive_int

from .bench import measure_matrix
from .console import Reporter
from .demo import DemoResult, run_demo
from .modes import CONTROL, MODES, repeats, resolve_modes
from .plots import plot_demo, plot_matrix, plot_soak
from .report import (
    BASELINE,
    fmt_mib,
    fmt_mib_delta,
    fmt_num,
    fmt_x,
    machine_info,
    markdown_table,
    ratio,
    write_json,
)
from .run import BENCH_SETTINGS, DEMO_SETTINGS, SOAK_SETTINGS, Progress, RunSettings
from .server import find_example_service, service_env, sigterm_interrupts
from .soak import (
    CLIENTS,
    RUN_FIGURES,
    SOAK_TARGETS,
    meets,
    rotated,
    run_soak,
    summarize_runs,
)
from .workload import BENCH_WORKLOADS, WORKLOADS, get_workload
from .wrk import wrk_path

__all__ = ["add_commands", "duration_arg", "list_arg", "size_arg"]

WORKLOAD_NAMES = [*WORKLOADS, "burst"]


# --- argument types ---------------------------------------------------------------------


def duration_arg(text: str) -> float:
    """``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*", text)
    if match is None:
        msg = f"{text!r} is not a duration; use seconds or a unit: 90s, 10m, 1h"
        raise argparse.ArgumentTypeError(msg)
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match[2]]
    return float(match[1]) * scale


def size_arg(text: str) -> str:
    """Validate a size option and give it back unchanged (``"256MiB"``)."""
    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def list_arg(choices: Sequence[str], *, controls: bool = False) -> Any:
    """A comma-separated list of ``choices``; with ``controls``, ``<choice>#2`` too (a
    second server of that mode, :data:`~harness.modes.CONTROL`)."""

    def known(name: str) -> bool:
        return name in choices or (controls and repeats(name) in choices)

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if not known(n)]
        if unknown or not names:
            msg = f"choose from {', '.join(choices)} (comma-separated), got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return names

    return parse


# --- what demo, bench and soak share ------------------------------------------------------


def _run_settings(args: argparse.Namespace, base: RunSettings, **overrides: Any) -> RunSettings:
    """``base`` with the options every load command has (seed, idle, server setup)."""
    return dataclasses.replace(
        base,
        seed=args.seed,
        idle=args.idle,
        budget=args.budget,
        limit=args.limit,
        governor=args.governor,
        **overrides,
    )


@contextlib.contextmanager
def _measuring(console: Console, args: argparse.Namespace) -> Iterator[tuple[Path, Progress]]:
    """A temporary directory for the servers' logs and the progress display."""
    with (
        tempfile.TemporaryDirectory(prefix=f"arenapool-{args.command}-") as logs,
        Reporter(console, args.quiet) as progress,
    ):
        yield Path(logs), progress


def _write_outputs(
    args: argparse.Namespace, stem: str, doc: Mapping[str, Any], plot: Callable[[Path], Path]
) -> list[Path]:
    """``<stem>.json`` and, unless --no-plot, ``<stem>.png`` in --out; the paths written."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    write_json(json_path, doc)
    written = [json_path]
    if not args.no_plot:
        written.append(plot(out / f"{stem}.png"))
    return written


# --- demo -------------------------------------------------------------------------------


# --- the commands ----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    duration = args.duration if args.duration is not None else (12.0 if args.quick else 70.0)
    slice_s = args.slice if args.slice is not None else (2.0 if args.quick else 5.0)
    workload = get_workload("mixed", budget=args.budget, scale=args.scale)
    console.print(
        f"[bold]arenapool demo[/]: the same seeded mixed workload ({workload.describe()}) "
        f"against the example service in [bold]orjson[/] mode (as written today) and "
        f"[bold]arenapool[/] mode, in alternating {slice_s:g} s slices, "
        f"{duration:g} s of load in all, then {args.idle:g} s idle."
    )
    with _measuring(console, args) as (logs, progress):
        settings = _run_settings(args, DEMO_SETTINGS, duration=duration, log_dir=logs)
        demo = asyncio.run(
            run_demo(settings=settings, workload=workload, slice_s=slice_s, progress=progress)
        )
    stats = {name: demo.stats(name) for name in demo.names}
    _print_demo_table(console, demo, stats)
    written = _write_outputs(
        args, "arenapool-demo", demo.to_dict(), lambda path: plot_demo(demo, path)
    )
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0 if all(s["corrupt"] == 0 for s in stats.values()) else 1


def _print_demo_table(console: Console, demo: DemoResult, stats: dict[str, dict[str, Any]]) -> None:
    names = demo.names
    table = Table(title="same traffic, side by side", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    compare = len(names) == 2
    if compare:
        table.add_column(f"{names[1]} / {names[0]}", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("requests/s", "rps", ".0f"),
        ("p50 latency (ms)", "p50_ms", ".1f"),
        ("p99 latency (ms)", "p99_ms", ".1f"),
        ("peak RSS", "rss_peak", "mib"),
        ("steady RSS", "rss_steady", "mib"),
        (f"RSS after {demo.idle_s:g} s idle", "rss_idle", "mib"),
    ]
    for label, key, spec in rows:
        values = [stats[n][key] for n in names]
        cells = [fmt_mib(v) if spec == "mib" else fmt_num(v, spec) for v in values]
        if compare:
            cells.append(fmt_x(ratio(values[1], values[0])))
        table.add_row(label, *cells)
    counts = [
        ("requests answered", ("ok",)),
        ("errors (incl. wrong answers)", ("errors", "corrupt")),
        ("shed (503)", ("shed",)),
    ]
    for label, keys in counts:
        cells = [str(sum(stats[n][k] for k in keys)) for n in names]
        table.add_row(label, *cells, *([""] if compare else []))
    console.print(table)
    console.print(
        "RSS: psutil readings of each server process every 200 ms; steady = median of the "
        "second half of its load; latency: client-side."
    )


# --- bench ------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    out = Path(args.out)
    modes, notes = resolve_modes(args.modes, recycle_after=args.recycle_after)
    workloads = [get_workload(w, budget=args.budget, scale=args.scale) for w in args.workloads]
    for note in notes:
        console.print(f"note: {note}")
    if not modes:
        console.print("no mode can run here")
        return 2
    console.print(
        f"[bold]arenapool bench[/]: {len(modes)} modes x {len(workloads)} workloads x "
        f"{args.repeats} repeats, {args.duration:g} s each + {args.idle:g} s idle"
    )
    for w in workloads:
        console.print(f"  {w.name}: {w.describe()}")
    if args.client == "wrk" and wrk_path() is None:
        console.print("wrk not found (Debian/Ubuntu: apt-get install wrk); use --client python")
        return 2
    settings = _run_settings(
        args,
        BENCH_SETTINGS,
        duration=args.duration,
        requests=args.requests,
        timeout=args.timeout,
        log_dir=out / "logs",
        client=args.client,
        connections=args.connections,
    )
    started = time.time()
    with Reporter(console, args.quiet) as progress:
        for note in notes:
            progress.note(note)
        cases, rows = measure_matrix(
            modes, workloads, settings=settings, repeats=args.repeats, progress=progress
        )
    table = markdown_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(_bench_markdown(table, args, notes, workloads))
    doc = {
        "tool": "arenapool bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "settings": _settings(args, workloads),
        "baseline": BASELINE,
        "notes": notes,
        "summary": rows,
        "cases": [c.to_dict() for c in cases],
    }
    write_json(out / "bench.json", doc)
    written = [out / "bench.md", out / "bench.json"]
    if not args.no_plot and cases:
        written += plot_matrix(cases, rows, out)
    print(table, flush=True)  # Markdown: not wrapped to the terminal's width
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0 if all(r["corrupt"] == 0 for r in rows) else 1


def _settings(args: argparse.Namespace, workloads: Sequence[Any]) -> dict[str, Any]:
    return {
        "modes": args.modes,
        "workloads": {
            w.name: {
                "min_size": w.min_size,
                "max_size": w.max_size,
                "distribution": w.distribution,
                "concurrency": w.concurrency,
            }
            for w in workloads
        },
        "repeats": args.repeats,
        "duration_s": args.duration,
        "requests": args.requests,
        "idle_s": args.idle,
        "seed": args.seed,
        "budget": args.budget,
        "limit": args.limit,
        "governor": args.governor,
        "scale": args.scale,
        "recycle_after": args.recycle_after,
        "client": args.client,
        "connections": args.connections,
    }


def _bench_markdown(
    table: str, args: argparse.Namespace, notes: list[str], workloads: Sequence[Any]
) -> str:
    lines = [
        "# arenapool bench",
        "",
        f"Medians of {args.repeats} runs of {args.duration:g} s each; 'after idle' is RSS "
        f"{args.idle:g} s after the load stopped. Budget {args.budget}, body limit "
        f"{args.limit}, seed {args.seed}.",
        "",
        *[f"- `{w.name}`: {w.describe()}" for w in workloads],
        *[f"- note: {n}" for n in notes],
        "",
        table,
        "",
    ]
    return "\n".join(lines)


# --- soak -------------------------------------------------------------------------------


def cmd_soak(args: argparse.Namespace) -> int:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    workload = get_workload(args.workload, budget=args.budget, scale=args.scale)
    client = args.client or ("wrk" if wrk_path() else "python")
    connections = args.connections or workload.concurrency
    console.print(
        f"[bold]arenapool soak[/]: {', '.join(args.modes)} side by side under "
        f"{args.workload} load ({workload.describe().split(',')[0]}), {client} with "
        f"{connections} connections each, for {args.duration:g} s, RSS every "
        f"{args.interval:g} s"
    )
    if client == "python" and args.client is None:
        console.print("note: wrk not found, using the Python client (apt-get install wrk)")
    if args.segments > 1 and client != "wrk":
        console.print("error: --segments needs the wrk client (apt-get install wrk)")
        return 2
    docs = []
    for run in range(args.runs):
        # (with --runs, the places rotate: no mode always starts first)
        order = rotated(args.modes, run)
        if args.runs > 1:
            console.print(f"[bold]run {run + 1} of {args.runs}[/]: {', '.join(order)}")
        with _measuring(console, args) as (logs, progress):
            settings = _run_settings(args, SOAK_SETTINGS, duration=args.duration, log_dir=logs)
            soak = asyncio.run(
                run_soak(
                    settings=settings,
                    modes=order,
                    workload=workload,
                    warmup=args.warmup,
                    interval=args.interval,
                    client=client,
                    connections=connections,
                    progress=progress,
                    segments=args.segments,
                )
            )
        doc = soak.to_dict()
        stem = "arenapool-soak" if args.runs == 1 else f"arenapool-soak-{run + 1}"
        written = _write_outputs(args, stem, doc, functools.partial(plot_soak, soak))
        _print_soak_table(console, doc, args.idle)
        console.print("wrote " + ", ".join(str(p) for p in written))
        docs.append(doc)
    if args.runs > 1:
        summary = summarize_runs(docs, args.modes)
        path = Path(args.out) / "arenapool-soak-runs.json"
        write_json(path, summary)
        _print_soak_runs(console, summary)
        console.print(f"wrote {path}")
    return 0 if all(m["corrupt"] == 0 for doc in docs for m in doc["modes"].values()) else 1


def _print_soak_runs(console: Console, summary: Mapping[str, Any]) -> None:
    """With --runs: each mode's ratios against the baseline run by run, their medians,
    and issue 11's targets judged on the medians."""
    base, runs = summary["baseline"], summary["runs"]
    table = Table(
        title=f"{runs} runs, each mode against {base} in the same run: each run, then the median",
        title_justify="left",
    )
    table.add_column("mode", no_wrap=True)
    for column in RUN_FIGURES.values():
        table.add_column(column, justify="right")
    for name, entry in summary["modes"].items():
        cells = []
        for key in RUN_FIGURES:
            each = ", ".join("-" if v is None else f"{v:.3f}" for v in entry["ratios"][key])
            median = entry["medians"][key]
            cells.append(f"{each}: " + ("-" if median is None else f"[bold]{median:.3f}x[/]"))
        table.add_row(name, *cells)
    console.print(table)
    for name, entry in summary["modes"].items():
        targets = entry.get("targets")
        if not targets:
            continue
        said = []
        for key, op, mark in SOAK_TARGETS:
            t, median = targets[key], entry["medians"][key]
            verdict = "met" if t["median_met"] else "missed"
            value = "-" if median is None else f"{median:.3f}x"
            said.append(
                f"{RUN_FIGURES[key]} {value} (target {op} {mark:.2f}x: {verdict}; met in "
                f"{t['runs_met']} of {runs} runs)"
            )
        console.print(f"{name} / {base}, medians over {runs} runs: " + ", ".join(said))
    console.print("places, run by run: " + "; ".join(", ".join(p) for p in summary["places"]))


def _against(mine: float | None, base: float | None, op: str, target: float) -> str:
    """``mine / base`` beside issue 11's target for that ratio, to three decimals (two
    would round 0.904x to the 0.90x it misses), and whether the unrounded ratio meets
    it: ``"0.904x (target <= 0.90x: missed)"``."""
    if mine is None or not base:
        return f"- (target {op} {target:.2f}x)"
    value = mine / base
    met = meets(value, op, target)
    return f"{value:.3f}x (target {op} {target:.2f}x: {'met' if met else 'missed'})"


def _print_soak_table(console: Console, doc: Mapping[str, Any], idle: float) -> None:
    modes = doc["modes"]
    table = Table(title="side by side, one run", title_justify="left")
    for column in (
        "mode", "requests", "req/s", "CPU/req (system)", "faults/req", "median RSS", "p95 RSS",
        "drift", "RSS at rest", f"RSS {idle:g} s after load", "left by the load", "errors",
    ):  # fmt: skip
        if column == "mode":  # whole names: arenapool-retain16 and arenapool-warm differ late
            table.add_column(column, no_wrap=True, min_width=max(map(len, modes), default=4))
        else:
            table.add_column(column, justify="right")
    for name, m in modes.items():
        drift = m["drift_mib_per_min"]
        table.add_row(
            name,
            f"{m['ok']:,}",
            fmt_num(m["rps"], ".0f"),
            _cpu_cell(m),
            fmt_num(m["faults_per_request"], ".1f"),
            fmt_mib(m["rss_median"]),
            fmt_mib(m["rss_p95"]),
            "n/a" if drift is None else f"{drift:+.2f} MiB/min",
            fmt_mib(m.get("rss_rest")),
            fmt_mib(m["rss_idle"]),
            fmt_mib_delta(m.get("rss_left_by_load")),
            str(m["errors"] + m["corrupt"]),
        )
    console.print(table)
    _print_soak_buckets(console, modes, idle)
    _print_soak_segments(console, modes)
    base = modes.get("orjson+trim")
    for name, m in modes.items():
        if base is None or not name.startswith("arenapool"):
            continue
        console.print(
            f"{name} / orjson+trim: "
            + ", ".join(
                f"{RUN_FIGURES[key]} {_against(m[key], base[key], op, mark)}"
                for key, op, mark in SOAK_TARGETS
            )
        )
        rest, base_rest = m.get("rss_rest"), base.get("rss_rest")
        left, base_left = m.get("rss_left_by_load"), base.get("rss_left_by_load")
        if None not in (rest, base_rest, left, base_left, m["rss_median"], base["rss_median"]):
            # the median and the RSS after load, each split the same way: what each
            # server holds before any body (its code: arenapool's modules and
            # extensions) apart from what the load added or left
            held = rest - base_rest
            median = m["rss_median"] - base["rss_median"]
            console.print(
                f"  under load (median) it holds {fmt_mib_delta(median)} against "
                f"orjson+trim: {fmt_mib_delta(held)} held at rest before the "
                f"load, {fmt_mib_delta(median - held)} of what the load added"
            )
            console.print(
                f"  after load it holds {fmt_mib_delta(m['rss_idle'] - base['rss_idle'])} "
                f"against orjson+trim: {fmt_mib_delta(held)} held at rest "
                f"before the load, {fmt_mib_delta(left - base_left)} of what the load "
                "left behind"
            )
    for name, m in modes.items():
        repeated = repeats(name)
        other = None if repeated is None else modes.get(repeated)
        if other is None:
            continue
        console.print(
            f"{name} / {repeated} (the same mode in two servers: what these "
            f"ratios move by with nothing changed): median RSS "
            f"{fmt_x(ratio(m['rss_median'], other['rss_median']))}, RSS after load "
            f"{fmt_x(ratio(m['rss_idle'], other['rss_idle']))}, requests "
            f"{fmt_x(ratio(m['ok'], other['ok']))}"
        )
    console.print(
        "RSS: psutil readings of each server's process; median and p95 over the load after "
        "the warm-up; drift: least-squares slope of those readings; at rest: read once the "
        "server answered, before its first body; left by the load: after load minus at "
        "rest. CPU (user + system; system in brackets) and minor page faults per request "
        "over the load: the server's /proc/PID/stat."
    )


def _cpu_cell(m: Mapping[str, Any]) -> str:
    """CPU per request, with the kernel's share of it in brackets."""
    cpu, system = m["cpu_us_per_request"], m.get("system_us_per_request")
    if cpu is None:
        return "n/a"
    return f"{cpu:,.0f} us" + ("" if system is None else f" ({system:,.0f})")


def _print_soak_segments(console: Console, modes: Mapping[str, Any]) -> None:
    """With --segments: each mode's requests and CPU per request, segment by segment,
    and each arenapool mode's requests against orjson+trim's in the same segment."""
    counts = {len(m.get("segments") or ()) for m in modes.values()}
    if counts == {0} or len(counts) != 1:
        return
    base = modes.get("orjson+trim")
    table = Table(title="segment by segment: requests (CPU per request)", title_justify="left")
    table.add_column("segment")
    for name in modes:
        table.add_column(name, justify="right")
    paired = [n for n in modes if base is not None and n.startswith("arenapool")]
    for name in paired:
        table.add_column(f"{name} / orjson+trim", justify="right")
    for i in range(counts.pop()):
        first = next(iter(modes.values()))["segments"][i]
        row = [f"{first['start_s']:.0f}-{first['end_s']:.0f} s"]
        for m in modes.values():
            seg = m["segments"][i]
            cpu = seg["cpu_us_per_request"]
            row.append(f"{seg['requests']:,} ({'n/a' if cpu is None else f'{cpu:,.0f} us'})")
        if base is not None:
            against = base["segments"][i]["requests"]
            row += [fmt_x(ratio(modes[n]["segments"][i]["requests"], against)) for n in paired]
        table.add_row(*row)
    console.print(table)


#: the smaps buckets of the soak's second table: (column, buckets added up)
_SOAK_BUCKETS = (
    ("C heap", ("heap",)),
    ("other anonymous", ("generic",)),
    ("files", ("file",)),
    ("stacks, shared", ("stacks", "other")),
)


def _print_soak_buckets(console: Console, modes: Mapping[str, Any], idle: float) -> None:
    """Where each mode's RSS is, under load (medians) and after the idle wait."""
    if not any(m.get("rss_buckets_median") for m in modes.values()):
        return
    table = Table(
        title=(
            f"where the RSS is (smaps): median under load / {idle:g} s after load / at rest "
            "before the load"
        ),
        title_justify="left",
    )
    table.add_column("mode")
    for column, _ in _SOAK_BUCKETS:
        table.add_column(column, justify="right")

    def part(parts: Mapping[str, int] | None, names: tuple[str, ...]) -> str:
        return "n/a" if parts is None else fmt_mib(sum(parts.get(n, 0) for n in names))

    for name, m in modes.items():
        load, after = m.get("rss_buckets_median"), m.get("rss_buckets_idle")
        rest = m.get("rss_buckets_rest")
        table.add_row(
            name,
            *(
                f"{part(load, names)} / {part(after, names)} / {part(rest, names)}"
                for _, names in _SOAK_BUCKETS
            ),
        )
    console.print(table)
    console.print(
        "other anonymous: pymalloc's arenas, malloc's mmapped chunks, arenapool's slabs, "
        "libraries' .bss (one bucket: only the process itself can tell them apart)."
    )


def cmd_serve(args: argparse.Namespace) -> int:
    app = find_example_service()
    cmd = [
        sys.executable, str(app),
        "--mode", args.mode,
        "--host", args.host,
        "--port", str(args.port),
        "--budget", args.budget,
        "--limit", args.limit,
    ]  # fmt: skip
    if args.admin_token:
        cmd += ["--admin-token", args.admin_token]
    try:
        return subprocess.call(cmd, env=service_env())
    except KeyboardInterrupt:
        return 130


# --- parser ------------------------------------------------------------------------------

_AFTER_DECAY = "default: 15, past the pool's 10 s decay and its 2.5 s check interval"


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """:func:`arenapool.cli.add_command`, with SIGTERM stopping the servers as Ctrl-C does."""

    def run(args: argparse.Namespace) -> int:
        with sigterm_interrupts():
            return func(args)

    return add_command(sub, name, run, help=help, description=description)


def _add_common(
    p: argparse.ArgumentParser,
    *,
    out: str,
    duration: float | None,
    duration_help: str,
    idle_help: str,
) -> None:
    """The options every load command has; ``--duration`` and ``--idle`` with their help."""
    p.add_argument("--duration", type=duration_arg, default=duration, help=duration_help)
    p.add_argument("--idle", type=duration_arg, default=15.0, help=idle_help)
    p.add_argument(
        "--out", default=out, help=f"directory for the JSON and PNG files (default: {out})"
    )
    p.add_argument("--seed", type=int, default=1, help="seed for bodies and order (default: 1)")
    p.add_argument(
        "--budget",
        type=size_arg,
        default="256MiB",
        help="arenapool budget of the servers; burst is 4x this (default: 256MiB)",
    )
    p.add_argument(
        "--limit", type=size_arg, default="8MiB", help="largest request body (default: 8MiB)"
    )
    p.add_argument(
        "--scale",
        type=positive_float,
        default=1.0,
        help="multiply every body size by this, e.g. 0.01 for a quick check (default: 1)",
    )
    p.add_argument(
        "--no-governor",
        dest="governor",
        action="store_false",
        help="run the arenapool modes without arenapool's memory governor",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_demo(sub: Any) -> None:
    demo = _command(
        sub,
        "demo",
        cmd_demo,
        help="run the example service as written today (orjson) and with arenapool, "
        "side by side (about 90 s)",
        description="Start the example service in orjson mode and in arenapool mode on "
        "127.0.0.1, drive both with the same mixed 1 KiB-4 MiB workload in alternating "
        "slices, and compare throughput, latency and RSS. Writes arenapool-demo.json and "
        "arenapool-demo.png.",
    )
    demo.add_argument(
        "--slice",
        type=duration_arg,
        default=None,
        help="seconds each server is driven before switching (default: 5, --quick: 2)",
    )
    demo.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    _add_common(
        demo,
        out=".",
        duration=None,
        duration_help="total seconds of load, shared by both servers (default: 70, --quick: 12)",
        idle_help=f"seconds without load before the last RSS reading ({_AFTER_DECAY})",
    )


def _add_bench(sub: Any) -> None:
    bench = _command(
        sub,
        "bench",
        cmd_bench,
        help="the benchmark matrix: handler styles, allocators, worker recycling",
        description="Run every mode with every workload, --repeats times, on 127.0.0.1, "
        "each in a fresh server process. Reports medians and ratios to the orjson mode "
        "measured in the same run. Writes bench.md, bench.json and plots into --out.",
    )
    bench.add_argument(
        "--modes",
        type=list_arg(MODES),
        default=list(MODES),
        help="comma-separated modes (default: all): " + ", ".join(MODES),
    )
    bench.add_argument(
        "--workloads",
        type=list_arg(WORKLOAD_NAMES),
        default=list(BENCH_WORKLOADS),
        help="comma-separated workloads (default: "
        + ",".join(BENCH_WORKLOADS)
        + "): "
        + ", ".join(WORKLOAD_NAMES),
    )
    bench.add_argument(
        "--repeats", type=positive_int, default=3, help="runs per mode and workload (default: 3)"
    )
    bench.add_argument(
        "--requests",
        type=positive_int,
        default=1_000_000,
        help="at most this many requests per run (default: 1000000)",
    )
    bench.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds per request (default: 30)"
    )
    bench.add_argument(
        "--client",
        choices=CLIENTS,
        default="python",
        help="client of the measured load: python (checks every answer) or wrk (a C "
        "client outside Python, so the client does not share the server's cores at "
        "Python's cost; answers are checked in the warm-up) (default: python)",
    )
    bench.add_argument(
        "--connections",
        type=positive_int,
        default=None,
        help="requests in flight per server (default: the workload's; issue 11 used 32 with wrk)",
    )
    bench.add_argument(
        "--recycle-after",
        type=positive_int,
        default=1000,
        help="gunicorn max_requests for the orjson+recycle mode (default: 1000)",
    )
    _add_common(
        bench,
        out="bench-out",
        duration=10.0,
        duration_help="seconds of load per run (default: 10)",
        idle_help="seconds without load before the 'after idle' RSS reading; overlaps the "
        f"next run ({_AFTER_DECAY})",
    )


SOAK_MODES = ["orjson", "orjson+trim", "arenapool"]


def _add_soak(sub: Any) -> None:
    soak = _command(
        sub,
        "soak",
        cmd_soak,
        help="several modes side by side for a long time: RSS, drift, requests",
        description="Start one server per mode, drive them all at once for --duration "
        "(wrk by default, --connections each), read every server's RSS every --interval "
        "seconds, and report per mode the requests answered, median and p95 RSS, the "
        "drift (least-squares slope of RSS after warm-up, MiB/min) and the RSS after "
        "--idle seconds without load. Writes arenapool-soak.json and a plot.",
    )
    soak.add_argument(
        "--modes",
        "--mode",
        dest="modes",
        type=list_arg(MODES, controls=True),
        default=list(SOAK_MODES),
        help="comma-separated modes, run side by side (default: "
        f"{','.join(SOAK_MODES)}): " + ", ".join(MODES) + f"; <mode>{CONTROL} is a second "
        "server of <mode>, an A/A control",
    )
    soak.add_argument(
        "--workload",
        choices=WORKLOAD_NAMES,
        default="mixed",
        help="workload (default: mixed, 1 KiB-4 MiB log-uniform)",
    )
    soak.add_argument(
        "--client",
        choices=CLIENTS,
        default=None,
        help="load client: wrk (a C client, one process per server) or python "
        "(default: wrk if installed)",
    )
    soak.add_argument(
        "--connections",
        type=positive_int,
        default=None,
        help="connections per server (default: the workload's, 8 for mixed)",
    )
    soak.add_argument(
        "--warmup",
        type=duration_arg,
        default=None,
        help="readings before this are left out of the RSS figures and the drift "
        "(default: 1/5 of the duration, at most 60 s)",
    )
    soak.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="seconds between RSS readings (default: 1)",
    )
    soak.add_argument(
        "--runs",
        type=positive_int,
        default=1,
        help="run the whole soak this many times, the servers' places rotated by one each "
        "run, and report each mode's ratios against orjson+trim run by run with their "
        "medians (default: 1; writes arenapool-soak-N.json per run and "
        "arenapool-soak-runs.json)",
    )
    soak.add_argument(
        "--segments",
        type=positive_int,
        default=1,
        help="split the load into this many back-to-back wrk runs and report each "
        "mode's requests and CPU per request in each (default: 1; wrk only): does a "
        "ratio hold over the whole load, or open up as the servers age?",
    )
    _add_common(
        soak,
        out=".",
        duration=720.0,
        duration_help="load time, e.g. 12m (default: 12m, issue 11's run)",
        idle_help="seconds without load before the final reading (default: 15)",
    )


def _add_serve(sub: Any) -> None:
    serve = _command(
        sub,
        "serve",
        cmd_serve,
        help="run the example service in the foreground",
        description="Run the example ingest service (integrations/example_service/app.py), "
        "e.g. to try `arenapool top` against it.",
    )
    serve.add_argument(
        "--mode",
        choices=("plain", "orjson", "msgspec", "arenapool", "arenapool-msgspec"),
        default="arenapool",
        help="how the service reads bodies (default: arenapool)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--budget", type=size_arg, default="256MiB", help="(default: 256MiB)")
    serve.add_argument("--limit", type=size_arg, default="8MiB", help="(default: 8MiB)")
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("ARENAPOOL_ADMIN_TOKEN"),
        help="enable the admin routes with this token (default: $ARENAPOOL_ADMIN_TOKEN)",
    )


def add_commands(sub: Any) -> None:
    """Add ``demo``, ``bench``, ``soak`` and ``serve`` to an ``add_subparsers()`` object."""
    _add_demo(sub)
    _add_bench(sub)
    _add_soak(sub)
    _add_serve(sub)
