"""``arenapool top``: a live screen of a server's memory, redrawn in place.

Theory of operation
-------------------
:func:`run` polls ``GET {prefix}/stats`` every ``interval`` seconds and redraws one rich
renderable (:func:`render`) with ``rich.live.Live``: on a terminal in the alternate
screen (like ``top``), elsewhere in place. Between polls it waits on stdin with
``select`` (the terminal in cbreak mode, restored on exit), so a key redraws at once:

    m  sort routes by memory (arena high water, then mean arena bytes)
    r  by requests        b  by bytes read        n  by name        q  quit

The screen: a headline (RSS, peak, the verdict), the breakdown bar (one coloured run
per part, widths in proportion, then each part's size and share), the verdict's
summary and action, the per-route table sorted by the chosen key, and each slab
pool's size classes. ``--json`` bypasses all of it and prints each stats document as
one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._units import format_size

__all__ = ["SORT_KEYS", "render", "run"]

#: Part -> colour, in the breakdown's order.
_COLOURS: Final = {
    "code_and_libs": "grey62",
    "python_in_use": "blue",
    "python_free": "cyan",
    "c_heap_in_use": "dark_orange",
    "c_heap_free": "yellow",
    "slabs_lent": "green",
    "slabs_idle": "dark_sea_green",
    "large_blocks": "dark_khaki",
    "stacks": "magenta",
    "anon_other": "purple",
    "unexplained": "red",
}
_VERDICT_STYLE: Final = {
    "live_growth": "bold red",
    "unexplained_growth": "bold red",
    "retention": "bold yellow",
    "idle_slabs": "yellow",
    "steady": "green",
    "unknown": "dim",
}
#: key -> (label, sort function over a route row; larger first unless by name)
SORT_KEYS: Final = {
    "m": "memory",
    "r": "requests",
    "b": "bytes read",
    "n": "name",
}


def _size(value: Any) -> str:
    return "-" if value is None else format_size(int(value))


def _mean_arena(row: Mapping[str, Any]) -> int:
    count = int(row.get("arena_bytes_count") or 0)
    return int(row.get("arena_bytes_sum") or 0) // count if count else 0


def _sorted_routes(routes: Mapping[str, Mapping[str, Any]], sort: str) -> list[str]:
    if sort == "n":
        return sorted(routes)
    if sort == "r":
        return sorted(routes, key=lambda r: (-int(routes[r].get("requests") or 0), r))
    if sort == "b":
        return sorted(routes, key=lambda r: (-int(routes[r].get("bytes_read") or 0), r))
    return sorted(
        routes,
        key=lambda r: (
            -int(routes[r].get("arena_high_water") or 0),
            -_mean_arena(routes[r]),
            r,
        ),
    )


def _routes_of(routes: Any) -> dict[str, Mapping[str, Any]]:
    """``{route: row}`` from the adapter's dict, or a list of rows naming their route."""
    if isinstance(routes, Mapping):
        return {str(k): v for k, v in routes.items() if isinstance(v, Mapping)}
    if isinstance(routes, list):
        rows = [r for r in routes if isinstance(r, Mapping)]
        return {str(r.get("name", r.get("route", i))): r for i, r in enumerate(rows)}
    return {}


def breakdown_bar(parts: Mapping[str, int], width: int = 60) -> Text:
    """One line of ``width`` cells: a coloured run per part, in proportion to its bytes."""
    total = sum(max(0, int(v)) for v in parts.values())
    bar = Text()
    if total <= 0:
        return bar.append("·" * width, style="dim")
    used = 0
    shares = [(name, int(v) * width / total) for name, v in parts.items() if int(v) > 0]
    for i, (name, share) in enumerate(shares):
        cells = width - used if i == len(shares) - 1 else round(share)
        cells = max(0, min(cells, width - used))
        used += cells
        bar.append("█" * cells, style=_COLOURS.get(name, "white"))
    return bar


def _legend(parts: Mapping[str, int]) -> Table:
    total = sum(max(0, int(v)) for v in parts.values()) or 1
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column()
    cells = [
        Text.assemble(
            ("■ ", _COLOURS.get(name, "white")),
            (f"{name} ", "dim"),
            (f"{_size(v)} ", "bold"),
            (f"{100 * int(v) / total:.0f}%", "dim"),
        )
        for name, v in parts.items()
    ]
    for i in range(0, len(cells), 3):
        row = cells[i : i + 3]
        grid.add_row(*row, *([""] * (3 - len(row))))
    return grid


def _routes_table(routes: Mapping[str, Mapping[str, Any]], sort: str) -> Table:
    table = Table(
        title=f"routes, by {SORT_KEYS.get(sort, 'memory')}  (keys: m r b n, q quits)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("route", no_wrap=True, min_width=12, overflow="ellipsis")
    for name in ("reqs", "arena hi", "arena avg", "read", "waits", "413/503"):
        table.add_column(name, justify="right", no_wrap=True)
    for route in _sorted_routes(routes, sort):
        row = routes[route]
        table.add_row(
            route,
            str(row.get("requests", 0)),
            _size(row.get("arena_high_water", 0)),
            _size(_mean_arena(row)),
            _size(row.get("bytes_read", 0)),
            str(row.get("waits", 0)),
            f"{row.get('status_413', 0)}/{row.get('status_503', 0)}",
        )
    return table


def _classes_table(pool: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"pool {pool.get('name', '?')}: lent {_size(pool.get('lent_bytes'))} of "
        f"{_size(pool.get('budget'))}, idle {_size(pool.get('idle_bytes'))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    for name in ("class", "lent", "lent bytes", "idle", "idle bytes", "high water"):
        table.add_column(name, justify="right")
    for c in pool.get("classes") or []:
        table.add_row(
            _size(c.get("size")),
            str(c.get("lent_blocks", 0)),
            _size(c.get("lent_bytes", 0)),
            str(c.get("idle_blocks", 0)),
            _size(c.get("idle_bytes", 0)),
            str(c.get("high_water_blocks", 0)),
        )
    return table


def render(
    doc: Mapping[str, Any], *, sort: str = "m", source: str = "", error: str | None = None
) -> RenderableType:
    """The whole screen for one stats document (tolerant of missing keys)."""
    items: list[RenderableType] = []
    if error:
        items.append(Text(error, style="red"))
    monitor = doc.get("monitor")
    verdict = monitor.get("verdict") if isinstance(monitor, Mapping) else None
    verdict = verdict if isinstance(verdict, Mapping) else {}
    kind = str(verdict.get("kind", "unknown"))
    head = Text.assemble(
        ("RSS ", "dim"),
        (_size(doc.get("rss")), "bold"),
        ("   peak ", "dim"),
        (_size(doc.get("peak_rss")), "bold"),
        ("   verdict ", "dim"),
        (kind.replace("_", " "), _VERDICT_STYLE.get(kind, "bold")),
    )
    items.append(head)
    parts = doc.get("breakdown")
    if isinstance(parts, Mapping) and parts:
        items.append(breakdown_bar(parts))
        items.append(_legend(parts))
    if verdict.get("summary"):
        items.append(Text(str(verdict["summary"]), style=_VERDICT_STYLE.get(kind, "")))
    if verdict.get("action"):
        items.append(Text("→ " + str(verdict["action"]), style="italic"))
    routes = _routes_of(doc.get("routes"))
    if routes:
        items.append(_routes_table(routes, sort))
    pools = doc.get("slab_pools")
    for pool in pools if isinstance(pools, list) else []:
        if isinstance(pool, Mapping):
            items.append(_classes_table(pool))
    return Panel(Group(*items), title=f"arenapool top  {source}", title_align="left")


def fetch(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """GET ``url`` as JSON, with the admin token as a Bearer header."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc


def describe_error(exc: Exception) -> str:
    """A failed poll in a line, with a hint for the usual causes."""
    if isinstance(exc, urllib.error.HTTPError):
        hint = " (pass --token)" if exc.code in (401, 403) else ""
        if exc.code == 404:
            hint = " (is the admin enabled? setup(app, admin=...))"
        return f"HTTP {exc.code} {exc.reason}{hint}"
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _keys(stream: IO[str]) -> Iterator[bool]:
    """cbreak mode on a terminal (restored on exit); yields whether keys can be read."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        yield False
        return
    if not os.isatty(fd):
        yield False
        return
    import termios  # noqa: PLC0415 - POSIX only, and only for a terminal
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(stream: IO[str], seconds: float, keys: bool) -> str | None:
    """A key pressed within ``seconds``, or ``None`` when the time ran out."""
    if not keys:
        time.sleep(seconds)  # the refresh interval of a view without a keyboard
        return None
    ready, _, _ = select.select([stream], [], [], seconds)
    if not ready:
        return None
    return os.read(stream.fileno(), 1).decode(errors="replace")


def run(
    url: str,
    *,
    token: str | None = None,
    interval: float = 1.0,
    count: int | None = None,
    timeout: float = 5.0,
    as_json: bool = False,
    sort: str = "m",
    console: Console | None = None,
    stdin: IO[str] | None = None,
) -> int:
    """Poll ``url`` (the stats URL) and show it until ``count`` polls, ``q`` or Ctrl-C.

    Returns 1 if the last poll failed, else 0.
    """
    console = console or Console(highlight=False)
    stdin = stdin or sys.stdin
    shown = failures = 0
    last: dict[str, Any] = {}
    if as_json:
        while count is None or shown < count:
            if shown:
                time.sleep(interval)  # the interval between machine-readable lines
            try:
                last = fetch(url, token, timeout)
                failures = 0
                print(json.dumps(last), flush=True)
            except (OSError, ValueError) as exc:
                failures += 1
                print(json.dumps({"error": describe_error(exc)}), flush=True)
            shown += 1
        return 1 if failures else 0
    with (
        _keys(stdin) as keys,
        Live(console=console, auto_refresh=False, screen=console.is_terminal) as live,
    ):
        error: str | None = None
        fresh = True
        try:
            while True:
                if fresh:
                    try:
                        last = fetch(url, token, timeout)
                        error, failures = None, 0
                    except (OSError, ValueError) as exc:
                        error, failures = f"{url}: {describe_error(exc)}", failures + 1
                    shown += 1
                stamp = time.strftime("%H:%M:%S")
                live.update(
                    render(last, sort=sort, source=f"{url}  {stamp}", error=error), refresh=True
                )
                if count is not None and shown >= count:
                    break
                key = _wait_key(stdin, interval, keys)
                if key == "q":
                    break
                fresh = key is None
                if key in SORT_KEYS:
                    sort = key
        except KeyboardInterrupt:
            pass
    return 1 if failures else 0
