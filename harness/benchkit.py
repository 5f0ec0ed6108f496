"""Small pieces the scripts in ``benchmarks/`` (and the soak) share.

- :func:`per_call_runs`: microseconds per call of a function, one figure per repeat;
- :func:`callgrind_map_next`: instructions a Python child runs inside ``map_next`` (the
  code under ``list(map(op, ...))``), counted by valgrind's callgrind;
- :data:`EXAMPLE_SERVE`: a script that serves the example service in one handler mode,
  with its do-nothing middleware on request (``make_app(noop_middleware=True)``, for
  the "+noop" variants);
- :func:`check_answers`: every body of a deck once through the Python client, which must
  answer each one right;
- :func:`print_json_line`: a result document as one compact JSON line, printed and
  written to a file if one is named.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .loadgen import run_load
from .server import Server
from .workload import Plan

__all__ = [
    "EXAMPLE_SERVE",
    "callgrind_events",
    "callgrind_map_next",
    "check_answers",
    "per_call_runs",
    "print_json_line",
]

#: Runs in the server process: ``python -c EXAMPLE_SERVE app.py MODE NOOP PORT``.
EXAMPLE_SERVE = """
import importlib.util, sys
from aiohttp import web
spec = importlib.util.spec_from_file_location("example_app", sys.argv[1])
app_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_module)
mode, noop, port = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
app = app_module.make_app(mode, noop_middleware=noop)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


def per_call_runs(fn: Callable[[], object], calls: int, repeats: int) -> list[float]:
    """Microseconds per call of ``fn``, one figure per repeat of ``calls`` calls.

    ``fn`` runs once before the first repeat (warm-up, not counted).
    """
    fn()  # warm
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return runs


def callgrind_map_next(code: str, env: Mapping[str, str]) -> tuple[int, str]:
    """Instructions (Ir) ``python -c code`` runs inside ``map_next``, and its stdout.

    Collection is off at the start and toggled on within ``map_next`` only, so the
    count is the code the child runs under ``map()``. A failing child ends the run.
    """
    events, stdout = callgrind_map_next_events(code, env)
    return events["Ir"], stdout


def callgrind_map_next_events(
    code: str, env: Mapping[str, str], *, cache_sim: bool = False
) -> tuple[dict[str, int], str]:
    """:func:`callgrind_map_next` with every event callgrind counted, by name (``Ir``;
    with ``cache_sim`` also its simulated cache and branch events: ``I1mr``, ``D1mr``,
    ``D1mw``, ``Bcm``, ``Bim``, ...), and the child's stdout."""
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                *sim,
                "--collect-atstart=no",
                "--toggle-collect=map_next",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            check=False,
            env=dict(env),
        )
        if proc.returncode:
            raise SystemExit(f"the child failed:\n{proc.stderr[-3000:]}")
        return callgrind_events(out), proc.stdout


def callgrind_events(dump: Path) -> dict[str, int]:
    """Every event a callgrind dump counted, by name (``Ir``, and with its cache and
    branch simulation ``I1mr``, ``D1mr``, ...), from its ``events:`` and ``summary:``
    lines."""
    text = dump.read_text()
    names = re.search(r"^events:\s+(.+)$", text, re.MULTILINE)
    values = re.search(r"^summary:\s+(.+)$", text, re.MULTILINE)
    if names is None or values is None:
        msg = f"no events/summary lines in the callgrind dump {dump}"
        raise RuntimeError(msg)
    return dict(zip(names[1].split(), map(int, values[1].split()), strict=True))


async def check_answers(
    server: Server, deck: list[Any], seed: int, *, what: str = "answers right"
) -> None:
    """Every body of ``deck`` once through the Python client: the answers must be right.

    Raises ``RuntimeError`` naming the mode, ``what`` and samples of the errors if any
    answer is wrong.
    """
    result = await run_load(
        server.host,
        server.port,
        Plan(deck, seed),
        concurrency=1,
        requests=len(deck),
        duration=120.0,
        timeout=60.0,
    )
    if result.ok != len(deck):
        msg = f"{server.mode.name}: {result.ok} of {len(deck)} {what}: {result.error_samples}"
        raise RuntimeError(msg)


def print_json_line(doc: Mapping[str, Any], out: str | None) -> None:
    """Print ``doc`` as one compact JSON line, and write that line to ``out`` if given."""
    line = json.dumps(doc, separators=(",", ":"))
    if out:
        Path(out).write_text(line + "\n")
    print(line)
