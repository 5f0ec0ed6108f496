"""The ``arenapool`` command: ``demo``, ``bench``, ``soak``, ``top`` and ``serve``.

Every command that generates load starts the example service on 127.0.0.1 in
subprocesses, drives it from this process, bounds every run in requests and in time,
and reads memory from the servers' processes with psutil (see ``arenapool/_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _bench
from ._loadgen import WORKLOADS, LoadResult, get_workload
from ._units import format_size

__all__ = ["main"]

MiB = 1024 * 1024
WORKLOAD_NAMES = [*WORKLOADS, "burst"]

try:  # rich is in the [cli] extra; without it the commands print plain text
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.progress import (
        BarColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    HAVE_RICH = True
except ImportError:  # pragma: no cover - the dev environment has rich
    HAVE_RICH = False


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
    try:
        return _bench.size_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def list_arg(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            msg = f"choose from {', '.join(choices)} (comma-separated), got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return names

    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be 1 or more, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        msg = f"must be more than 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


# --- output -----------------------------------------------------------------------------


def _console() -> Console:
    return Console(highlight=False)


class _LineProgress(_bench.Progress):
    """Progress as plain lines, for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, text: str) -> None:
        self.console.print(f"note: {text}")

    def phase(self, label: str, total: float) -> None:
        when = f" ({total:.0f} s)" if total >= 1 else ""
        self.console.print(f"- {label}{when}")


class _RichProgress(_bench.Progress):
    """A rich progress bar for the current phase, with live request counts."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}")

    def phase(self, label: str, total: float) -> None:
        if self.task is not None:
            task = self.bar.tasks[-1]
            self.bar.update(self.task, completed=task.total)
        self.task = self.bar.add_task(label, total=max(total, 0.001), stats="")

    def tick(self, label: str, elapsed: float, result: LoadResult | None) -> None:
        if self.task is None:
            return
        stats = ""
        if result is not None:
            bad = result.errors + result.corrupt
            stats = f"{result.ok} ok  {bad} err  {result.shed} shed"
        self.bar.update(self.task, completed=elapsed, stats=stats)


class _Reporter:
    """Picks the progress display: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.rich: _RichProgress | None = None

    def __enter__(self) -> _bench.Progress:
        if self.quiet:
            return _bench.Progress()
        if self.console.is_terminal:
            self.rich = _RichProgress(self.console).__enter__()
            return self.rich
        return _LineProgress(self.console)

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.__exit__(*exc)


def _fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f} MiB"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


# --- what demo, bench and soak share ------------------------------------------------------


def _run_settings(
    args: argparse.Namespace, base: _bench.RunSettings, **overrides: Any
) -> _bench.RunSettings:
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
def _measuring(
    console: Console, args: argparse.Namespace
) -> Iterator[tuple[Path, _bench.Progress]]:
    """A temporary directory for the servers' logs and the progress display."""
    with (
        tempfile.TemporaryDirectory(prefix=f"arenapool-{args.command}-") as logs,
        _Reporter(console, args.quiet) as progress,
    ):
        yield Path(logs), progress


def _write_outputs(
    args: argparse.Namespace, stem: str, doc: Mapping[str, Any], plot: Callable[[Path], Path]
) -> list[Path]:
    """``<stem>.json`` and, unless --no-plot, ``<stem>.png`` in --out; the paths written."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    _bench.write_json(json_path, doc)
    written = [json_path]
    if not args.no_plot:
        written.append(plot(out / f"{stem}.png"))
    return written


# --- demo -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    console = _console()
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
        settings = _run_settings(args, _bench.DEMO_SETTINGS, duration=duration, log_dir=logs)
        demo = asyncio.run(
            _bench.run_demo(
                settings=settings, workload=workload, slice_s=slice_s, progress=progress
            )
        )
    stats = {name: demo.stats(name) for name in demo.names}
    _print_demo_table(console, demo, stats)
    written = _write_outputs(
        args, "arenapool-demo", demo.to_dict(), lambda path: _bench.plot_demo(demo, path)
    )
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0 if all(s["corrupt"] == 0 for s in stats.values()) else 1


def _print_demo_table(
    console: Console, demo: _bench.DemoResult, stats: dict[str, dict[str, Any]]
) -> None:
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
        cells = [_fmt_mib(v) if spec == "mib" else _fmt(v, spec) for v in values]
        if compare:
            cells.append(_ratio(values[1], values[0]))
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
    console = _console()
    out = Path(args.out)
    modes, notes = _bench.resolve_modes(args.modes, recycle_after=args.recycle_after)
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
    settings = _run_settings(
        args,
        _bench.BENCH_SETTINGS,
        duration=args.duration,
        requests=args.requests,
        timeout=args.timeout,
        log_dir=out / "logs",
    )
    started = time.time()
    with _Reporter(console, args.quiet) as progress:
        for note in notes:
            progress.note(note)
        cases, rows = _bench.measure_matrix(
            modes, workloads, settings=settings, repeats=args.repeats, progress=progress
        )
    table = _bench.markdown_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(_bench_markdown(table, args, notes, workloads))
    doc = {
        "tool": "arenapool bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "machine": _bench.machine_info(),
        "settings": _settings(args, workloads),
        "baseline": _bench.BASELINE,
        "notes": notes,
        "summary": rows,
        "cases": [c.to_dict() for c in cases],
    }
    _bench.write_json(out / "bench.json", doc)
    written = [out / "bench.md", out / "bench.json"]
    if not args.no_plot and cases:
        written += _bench.plot_matrix(cases, rows, out)
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
    console = _console()
    workload = get_workload(args.workload, budget=args.budget, scale=args.scale)
    console.print(
        f"[bold]arenapool soak[/]: {args.mode} under {args.workload} load "
        f"({workload.describe()}) for {args.duration:g} s, RSS every {args.interval:g} s"
    )
    with _measuring(console, args) as (logs, progress):
        settings = _run_settings(args, _bench.SOAK_SETTINGS, duration=args.duration, log_dir=logs)
        soak = asyncio.run(
            _bench.run_soak(
                settings=settings,
                mode=args.mode,
                workload=workload,
                warmup=args.warmup,
                interval=args.interval,
                progress=progress,
            )
        )
    doc = soak.to_dict()
    written = _write_outputs(
        args, f"arenapool-soak-{args.mode}", doc, lambda path: _bench.plot_soak(soak, path)
    )
    drift = doc["drift_mib_per_min"]
    console.print(
        f"{args.mode}: {doc['ok']} requests answered, {doc['errors'] + doc['corrupt']} errors, "
        f"{doc['shed']} shed, {doc['rps']:.0f} req/s\n"
        f"RSS peak {_fmt_mib(doc['rss_peak'])}, steady {_fmt_mib(doc['rss_steady'])}, "
        f"after {args.idle:g} s idle {_fmt_mib(doc['rss_idle'])}\n"
        f"drift after {soak.warmup_s:g} s warm-up: "
        + ("n/a (too few readings)" if drift is None else f"{drift:+.3f} MiB/min")
    )
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0 if doc["corrupt"] == 0 else 1


# --- top --------------------------------------------------------------------------------

STATS_PATH = "/_arenapool/stats"


def stats_url(url: str, token: str | None) -> str:
    """The stats URL for a server base URL (or a full stats URL), with the token."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if not path.endswith(STATS_PATH):
        path += STATS_PATH
    query = urllib.parse.parse_qsl(parts.query)
    if token:
        query = [(k, v) for k, v in query if k != "token"] + [("token", token)]
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, path, urllib.parse.urlencode(query), "")
    )


def fetch_stats(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        doc = json.loads(response.read())
    if not isinstance(doc, dict):
        msg = f"expected a JSON object from {url}, got {type(doc).__name__}"
        raise ValueError(msg)  # noqa: TRY004 - bad data from the server, not a bad argument
    return doc


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flatten(value, name))
            else:
                out[name] = value
    return out


# Whole words (split on "_" and ".") that make an integer a byte count, or rule it out.
_SIZE_WORDS = {"bytes", "rss", "budget", "heap", "unaccounted", "limit", "size", "mapped", "water"}
_NOT_SIZE_WORDS = {"count", "counts", "blocks", "seconds", "ratio", "fraction", "requests"}


def _is_size_key(key: str) -> bool:
    words = set(re.split(r"[._\s]", key.rsplit(".", 1)[-1].lower()))
    return bool(words & _SIZE_WORDS) and not words & _NOT_SIZE_WORDS


def format_value(key: str, value: Any) -> str:
    """A reading for people: sizes in IEC units, short lists inline, floats rounded."""
    if isinstance(value, (list, tuple)):
        return _format_list(value)
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int) and _is_size_key(key):
        return format_size(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _format_list(value: list[Any] | tuple[Any, ...]) -> str:
    if not value:
        return "-"
    if len(value) <= 4 and all(isinstance(v, (int, float, str)) for v in value):
        return ", ".join(str(v) for v in value)
    return f"[{len(value)} items]"


# The headline: (label, exact keys to try, then words that must all be in a key).
_HEADLINE: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("RSS", ("rss", "memory.rss", "process.rss"), ("rss",)),
    ("peak RSS", ("peak_rss", "memory.peak_rss"), ("peak", "rss")),
    ("unaccounted", ("unaccounted", "memory.unaccounted"), ("unaccounted",)),
    ("slab lent", ("slab_lent_bytes", "slab.lent_bytes"), ("slab", "lent")),
    ("slab idle", ("slab_idle_bytes", "slab.idle_bytes"), ("slab", "idle")),
    ("C heap in use", ("heap_in_use", "heap.in_use"), ("heap", "use")),
    ("C heap free", ("heap_free", "heap.free"), ("heap", "free")),
)


def headline(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The well-known readings of a snapshot, whatever its layout; missing ones skipped."""
    flat = {
        k: v
        for k, v in flatten(doc).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    picked: list[tuple[str, str]] = []
    used: set[str] = set()
    for label, exact, words in _HEADLINE:
        key = next((k for k in exact if k in flat and k not in used), None)
        if key is None:
            key = next(
                (k for k in flat if k not in used and all(w in k.lower() for w in words)), None
            )
        if key is not None:
            used.add(key)
            picked.append((label, format_value(key, flat[key])))
    routes = route_rows(doc)
    if routes and any("in_flight" in r for r in routes):
        in_flight = sum(int(r.get("in_flight") or 0) for r in routes)
        picked.append(("in flight", str(in_flight)))
    governor = doc.get("governor")
    if isinstance(governor, dict) and "shedding" in governor:
        picked.append(("shedding", "yes" if governor["shedding"] else "no"))
    return picked


_ROUTE_KEYS = ("routes", "per_route", "endpoints")


def route_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-route counters as rows with a ``route`` key, from a dict or a list."""
    routes: Any = None
    for key in _ROUTE_KEYS:
        routes = doc.get(key)
        if routes:
            break
    if isinstance(routes, dict):
        return [
            {"route": str(name), **flatten(value)} if isinstance(value, dict) else {"route": name}
            for name, value in routes.items()
        ]
    if isinstance(routes, list):
        return [flatten(r) for r in routes if isinstance(r, dict)]
    return []


def _rows_table(title: str, rows: list[dict[str, Any]], first: str, max_columns: int = 10) -> Any:
    columns = [
        c
        for c in dict.fromkeys(k for r in rows for k in r)
        if c != first and not isinstance(rows[0].get(c), (list, dict))
    ][:max_columns]
    table = Table(title=title, title_justify="left")
    table.add_column(first, no_wrap=True)
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(str(r.get(first, "")), *[format_value(c, r.get(c)) for c in columns])
    return table


_POOL_COLUMNS = (
    "name",
    "lent_bytes",
    "idle_bytes",
    "quarantined_bytes",
    "budget",
    "high_water_lent_bytes",
    "waits",
    "wait_timeouts",
    "shed",
    "returned_bytes",
    "arenas_open",
)


def render_stats(doc: dict[str, Any], *, source: str = "", error: str | None = None) -> Any:
    """A rich renderable for one stats snapshot: headline, per-route table, the rest.

    Tolerant of any layout: keys it knows are picked out, every other scalar is listed.
    """
    parts: list[Any] = []
    if error:
        parts.append(f"[red]{error}[/]")
    head = headline(doc)
    if head:
        per_row = 3  # label/value pairs per line: fits an 80-column terminal
        grid = Table.grid(padding=(0, 1))
        for _ in range(per_row):
            grid.add_column(style="dim", justify="right")
            grid.add_column(justify="right", min_width=12)
        for i in range(0, len(head), per_row):
            cells = [
                c for label, value in head[i : i + per_row] for c in (label, f"[bold]{value}[/]")
            ]
            grid.add_row(*cells)
        parts.append(grid)
    routes = route_rows(doc)
    if routes:
        parts.append(_rows_table("per route", routes, "route"))
    rest = Table(title="snapshot", title_justify="left", show_header=False, box=None)
    rest.add_column("key", style="dim")
    rest.add_column("value", justify="right")
    for key, value in doc.items():
        if key in _ROUTE_KEYS:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows = [flatten(v) for v in value]
            if key == "slab_pools":  # the pool's per-class detail does not fit here
                rows = [{c: r[c] for c in _POOL_COLUMNS if c in r} or r for r in rows]
            first = "name" if "name" in rows[0] else next(iter(rows[0]))
            parts.append(_rows_table(key.replace("_", " "), rows, first))
            continue
        for name, item in flatten({key: value}).items():
            rest.add_row(name, format_value(name, item))
    parts.append(rest)
    return Panel(Group(*parts), title=f"arenapool top  {source}", title_align="left")


def cmd_top(args: argparse.Namespace) -> int:
    console = _console()
    url = stats_url(args.url, args.token)
    shown = 0
    failures = 0
    last: dict[str, Any] = {}
    live = None if args.json else Live(console=console, auto_refresh=False, transient=False)
    if live is not None:
        live.start()
    try:
        while args.count is None or shown < args.count:
            if shown:
                time.sleep(args.interval)  # the refresh interval of an interactive view
            error = None
            try:
                last = fetch_stats(url, args.token, timeout=args.timeout)
                failures = 0
            except (OSError, ValueError) as exc:
                failures += 1
                error = _describe_fetch_error(exc)
            shown += 1
            if args.json:
                print(json.dumps(last if error is None else {"error": error}), flush=True)
            else:
                assert live is not None
                stamp = time.strftime("%H:%M:%S")
                live.update(
                    render_stats(last, source=f"{args.url}  {stamp}", error=error), refresh=True
                )
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 1 if failures else 0


def _describe_fetch_error(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        hint = " (pass --token)" if exc.code in (401, 403) else ""
        if exc.code == 404:
            hint = " (is the admin enabled? setup(app, admin=...))"
        return f"HTTP {exc.code} {exc.reason}{hint}"
    return f"{type(exc).__name__}: {exc}"


# --- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    app = _bench.find_example_service()
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
        return subprocess.call(cmd, env=_bench.service_env())
    except KeyboardInterrupt:
        return 130


# --- parser ------------------------------------------------------------------------------

_AFTER_DECAY = "default: 15, past the pool's 10 s decay and its 2.5 s check interval"


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand ``name`` that runs ``func(args)``."""
    command: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    command.set_defaults(func=func)
    return command


def _add_common(p: argparse.ArgumentParser, *, out: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arenapool",
        description="Measure and watch arenapool: a side-by-side demo, the benchmark "
        "matrix, a soak test, and a live view of a server's memory.",
    )
    from ._version import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"arenapool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        "--duration",
        type=duration_arg,
        default=None,
        help="total seconds of load, shared by both servers (default: 70, --quick: 12)",
    )
    demo.add_argument(
        "--slice",
        type=duration_arg,
        default=None,
        help="seconds each server is driven before switching (default: 5, --quick: 2)",
    )
    demo.add_argument(
        "--idle",
        type=duration_arg,
        default=15.0,
        help=f"seconds without load before the last RSS reading ({_AFTER_DECAY})",
    )
    demo.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    _add_common(demo, out=".")

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
        type=list_arg(_bench.MODES),
        default=list(_bench.MODES),
        help="comma-separated modes (default: all): " + ", ".join(_bench.MODES),
    )
    bench.add_argument(
        "--workloads",
        type=list_arg(WORKLOAD_NAMES),
        default=list(WORKLOAD_NAMES),
        help="comma-separated workloads (default: all): " + ", ".join(WORKLOAD_NAMES),
    )
    bench.add_argument(
        "--repeats", type=positive_int, default=3, help="runs per mode and workload (default: 3)"
    )
    bench.add_argument(
        "--duration",
        type=duration_arg,
        default=10.0,
        help="seconds of load per run (default: 10)",
    )
    bench.add_argument(
        "--requests",
        type=positive_int,
        default=1_000_000,
        help="at most this many requests per run (default: 1000000)",
    )
    bench.add_argument(
        "--idle",
        type=duration_arg,
        default=15.0,
        help="seconds without load before the 'after idle' RSS reading; overlaps the "
        f"next run ({_AFTER_DECAY})",
    )
    bench.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds per request (default: 30)"
    )
    bench.add_argument(
        "--recycle-after",
        type=positive_int,
        default=1000,
        help="gunicorn max_requests for the orjson+recycle mode (default: 1000)",
    )
    _add_common(bench, out="bench-out")

    soak = _command(
        sub,
        "soak",
        cmd_soak,
        help="one long run that measures RSS drift",
        description="Drive one mode for --duration, read RSS every --interval seconds, and "
        "report the drift (least-squares slope of RSS after warm-up, MiB/min) and the RSS "
        "after --idle seconds without load. Writes a JSON file and a plot.",
    )
    soak.add_argument(
        "--duration", type=duration_arg, default=600.0, help="load time, e.g. 10m (default: 10m)"
    )
    soak.add_argument(
        "--mode", choices=_bench.MODES, default="arenapool", help="mode (default: arenapool)"
    )
    soak.add_argument(
        "--workload",
        choices=WORKLOAD_NAMES,
        default="mixed",
        help="workload (default: mixed)",
    )
    soak.add_argument(
        "--warmup",
        type=duration_arg,
        default=None,
        help="readings before this are left out of the drift (default: 1/5 of the "
        "duration, at most 60 s)",
    )
    soak.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="seconds between RSS readings (default: 1)",
    )
    soak.add_argument(
        "--idle",
        type=duration_arg,
        default=15.0,
        help="seconds without load before the final reading (default: 15)",
    )
    _add_common(soak, out=".")

    top = _command(
        sub,
        "top",
        cmd_top,
        help="live view of a server's /_arenapool/stats",
        description="Poll a server's arenapool admin stats and show RSS, unaccounted "
        "memory, slab use and per-route numbers. Stop with Ctrl-C, or use --count.",
    )
    top.add_argument("url", help="server base URL (http://127.0.0.1:8080) or the stats URL")
    top.add_argument(
        "--token",
        default=os.environ.get("ARENAPOOL_ADMIN_TOKEN"),
        help="admin token (default: $ARENAPOOL_ADMIN_TOKEN)",
    )
    top.add_argument(
        "--interval", type=positive_float, default=1.0, help="seconds between polls (default: 1)"
    )
    top.add_argument("--count", type=positive_int, default=None, help="stop after this many polls")
    top.add_argument(
        "--timeout", type=positive_float, default=5.0, help="seconds per poll (default: 5)"
    )
    top.add_argument(
        "--json", action="store_true", help="print each snapshot as one JSON line instead"
    )

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
        choices=("plain", "orjson", "arenapool", "arenapool-msgspec"),
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``arenapool`` console script and ``python -m arenapool``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not HAVE_RICH:  # pragma: no cover
        parser.error("the arenapool command needs rich: pip install 'arenapool[cli]'")
    try:
        with _bench.sigterm_interrupts():
            code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"arenapool {args.command}: {exc}", file=sys.stderr)
        return 2
    return code
