"""The ``arenapool`` command: ``top``, a live view of a server's memory.

``arenapool demo|bench|soak|serve`` run the example service and measure it; they live
in the measuring harness (``harness/``, not part of the installed package) and work from
a source checkout, where this module finds ``harness/`` next to the package directory.
Installed without a checkout, they say so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._units import format_size
from ._version import __version__

__all__ = ["add_command", "main", "positive_float", "positive_int"]

#: the commands that need the harness of a source checkout
HARNESS_COMMANDS = ("demo", "bench", "soak", "serve")

try:  # rich is in the [cli] extra; without it the commands print plain text
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table

    HAVE_RICH = True
except ImportError:  # pragma: no cover - the dev environment has rich
    HAVE_RICH = False


# --- argument types ---------------------------------------------------------------------


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
    console = Console(highlight=False)
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


# --- the harness commands -----------------------------------------------------------------


def checkout_root() -> Path:
    """The directory above this package: a source checkout's root, or site-packages."""
    return Path(__file__).resolve().parent.parent


def harness_cli(root: Path | None = None) -> ModuleType | None:
    """``harness.cli`` of the source checkout at ``root``, or None outside a checkout.

    A checkout has ``pyproject.toml`` and ``harness/`` next to ``arenapool/``; its root
    goes on ``sys.path`` (at the end) so ``harness`` imports. A ``harness`` imported
    from anywhere else is refused rather than run.
    """
    root = checkout_root() if root is None else root
    if not ((root / "pyproject.toml").is_file() and (root / "harness" / "cli.py").is_file()):
        return None
    if str(root) not in sys.path:
        sys.path.append(str(root))
    module = importlib.import_module("harness.cli")
    if Path(module.__file__ or "").resolve().parent != (root / "harness").resolve():
        msg = f"imported harness from {module.__file__}, not from the checkout at {root}"
        raise ImportError(msg)
    return module


def _needs_checkout(args: argparse.Namespace) -> int:
    print(
        f"arenapool {args.command}: this command runs the measuring harness, which is not "
        "part of the installed package; run it from a source checkout of arenapool "
        "(git clone, then scripts/bootstrap and .venv/bin/arenapool "
        f"{args.command}, or python -m harness {args.command})",
        file=sys.stderr,
    )
    return 2


def _add_placeholders(sub: Any) -> None:
    """Without a checkout: each harness command exists, and says where to run it."""
    for name in HARNESS_COMMANDS:  # main() lets their options through unparsed
        add_command(
            sub,
            name,
            _needs_checkout,
            help=f"({name} runs from a source checkout of arenapool)",
            description=f"`arenapool {name}` runs the measuring harness of a source checkout.",
        )


# --- parser ------------------------------------------------------------------------------


def add_command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand ``name`` that runs ``func(args)``."""
    command: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    command.set_defaults(func=func)
    return command


def _add_top(sub: Any) -> None:
    top = add_command(
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


def build_parser(prog: str = "arenapool", *, root: Path | None = None) -> argparse.ArgumentParser:
    """The parser: ``top``, and the harness commands (working ones in a checkout)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure and watch arenapool: a side-by-side demo, the benchmark "
        "matrix, a soak test (from a source checkout), and a live view of a server's memory.",
    )
    parser.add_argument("--version", action="version", version=f"arenapool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    harness = harness_cli(root)
    if harness is None:
        _add_placeholders(sub)
    else:
        harness.add_commands(sub)
    _add_top(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "arenapool") -> int:
    """Entry point of the ``arenapool`` console script and ``python -m arenapool``."""
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _needs_checkout:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not HAVE_RICH:  # pragma: no cover
        parser.error("the arenapool command needs rich: pip install 'arenapool[cli]'")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    return code
