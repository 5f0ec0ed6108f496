"""Numbers for people and for files: medians, ratios, formatting, tables, JSON, machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

__all__ = [
    "BASELINE",
    "MiB",
    "fmt_mib",
    "fmt_mib_delta",
    "fmt_num",
    "fmt_x",
    "machine_info",
    "markdown_table",
    "median",
    "ratio",
    "rounded",
    "write_json",
]

MiB = 1024 * 1024
#: the mode every other mode is compared with
BASELINE = "orjson"


def median(values: Iterable[float | int | None]) -> float | None:
    """The median of the values present; ``None`` if none is."""
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def rounded(value: float | None, digits: int | None = None) -> float | None:
    """Round for the JSON output; byte counts (``digits=None``) become whole numbers."""
    if value is None:
        return None
    return round(value) if digits is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to three decimals; ``None`` if either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def fmt_num(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_mib(value: float | None, *, unit: bool = True) -> str:
    """Bytes in whole MiB (``"12 MiB"``, or ``"12"`` without the unit); ``-`` if missing."""
    if value is None:
        return "-"
    return f"{value / MiB:.0f} MiB" if unit else f"{value / MiB:.0f}"


def fmt_mib_delta(value: float | None) -> str:
    """A difference in bytes as signed MiB with one decimal (``"+1.9 MiB"``, ``"-0.4
    MiB"``: such differences are small); ``-`` if missing."""
    return "-" if value is None else f"{value / MiB:+.1f} MiB"


def fmt_x(value: float | None) -> str:
    """A ratio as ``"1.23x"``; ``-`` if missing."""
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(rows: Sequence[dict[str, Any]], *, baseline: str = BASELINE) -> str:
    """The summary as a Markdown table (RSS in MiB, ratios to ``baseline``).

    "same decoder" is the ratio to the mode with the same decoder and no arenapool
    (``arenapool-msgspec`` against ``msgspec``), when that mode ran.
    """
    head = (
        f"| workload | mode | req/s | vs {baseline} | vs same decoder | p50 ms | p99 ms | "
        f"peak RSS | steady RSS | vs {baseline} | after idle | faults/req | CPU us/req | "
        "errors | shed |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        same = r.get("same_decoder")
        vs_same = "-" if not same or same == r["mode"] else f"{fmt_x(r['rps_vs_same'])} {same}"
        cells = [
            r["workload"],
            r["mode"],
            fmt_num(r["rps"]),
            fmt_x(r[f"rps_vs_{baseline}"]),
            vs_same,
            fmt_num(r["p50_ms"], ".1f"),
            fmt_num(r["p99_ms"], ".1f"),
            fmt_mib(r["rss_peak"], unit=False),
            fmt_mib(r["rss_steady"], unit=False),
            fmt_x(r[f"rss_steady_vs_{baseline}"]),
            fmt_mib(r["rss_idle"], unit=False),
            fmt_num(r.get("faults_per_request"), ".1f"),
            fmt_num(r.get("cpu_us_per_request"), ".0f"),
            str(r["errors"] + r["corrupt"]),
            str(r["shed"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("RSS in MiB (psutil, server process tree); latencies client-side; medians.")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in ("aiohttp", "orjson", "msgspec", "psutil"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version  # noqa: PLC0415

            versions[name] = version(name)
    libc = platform.libc_ver()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libc": " ".join(x for x in libc if x),
        "cpus": os.cpu_count(),
        "memory": psutil.virtual_memory().total,
        "versions": versions,
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
