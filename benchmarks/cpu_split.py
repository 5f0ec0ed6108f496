"""Where each request's CPU goes, server beside server: sampled by ``perf``, per request.

    python benchmarks/cpu_split.py                         # the soak's three, 4 x 45 s
    python benchmarks/cpu_split.py --modes orjson+trim,arenapool,arenapool-heap-trim
    python benchmarks/cpu_split.py --size 1MiB --rounds 3 --duration 30
    python benchmarks/cpu_split.py --symbols listiter_next,dict_get --top 20

The soak (``arenapool soak``) says how many requests each server served and what a
request cost it in all (``/proc/PID/stat``); this says where that cost went. The modes'
servers (the example service, ``harness.modes``) start once and are loaded at the same
time, each by its own ``wrk`` on 127.0.0.1 with ``--connections`` connections posting
``--size`` bodies (``mixed``: the soak's 1 KiB-4 MiB log-uniform deck, its seed), for
``--rounds`` rounds of ``--duration`` seconds. During each round ``perf record -e
cpu-clock -F FREQ -p PID`` samples each server (every thread, user and kernel: the
software clock works where hardware counters do not, as on this machine), and ``perf
report`` sorts the samples by shared object and by symbol. One sample stands for
``1/FREQ`` s of CPU; over the requests wrk counted in the round, that is microseconds
of CPU per request: for the whole server, for each shared object (the interpreter,
the decoder, libc, the kernel...) and for the symbols that cost most
(``--top``) or are named (``--symbols``). Symbols a stripped object does not name (the
decoder's) are summed into one row per object.

Each round's figure of every server is divided by the first mode's in the same round,
and the table gives the medians over the rounds, of the figures and of those ratios:
a ratio comes from servers that shared the same seconds of the machine. A second server
of a mode (``orjson+trim#2``) is the A/A control: what these ratios move by with nothing
changed. The sampled total is checked against the CPU ``/proc/PID/stat`` counted over
the same round (``sampled / counted``, near 1 when the samples cover the round).

It explains a difference the soak measured; it is not a throughput benchmark (the
sampling itself costs each server a little, the same for all). A symbol's time is where
the CPU was when the clock ticked, including the cache misses it waited on, so code that
runs the same instructions in two servers can cost them different time (a handler's
walk over objects that sit colder in one of them). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.benchkit import print_json_line
from harness.modes import resolve_modes
from harness.procstat import read_stat
from harness.run import SOAK_SETTINGS
from harness.server import Server
from harness.workload import size_workload
from harness.wrk import deck_files, run_wrk

DEFAULT_MODES = "orjson+trim,arenapool,orjson+trim#2"
#: the rows every table has: the whole server, then the shared objects that matter most
#: to a JSON request (perf's names, matched by prefix)
OBJECTS = {
    "interpreter": "libpython",
    "orjson": "orjson",
    "msgspec": "_core",
    "libc": "libc",
    "kernel": "[kernel",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"({DEFAULT_MODES})")
    parser.add_argument("--size", default="mixed", help="body size, or mixed (mixed)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (4)")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds a round (45)")
    parser.add_argument("--connections", type=int, default=8, help="per server (8)")
    parser.add_argument("--frequency", type=int, default=999, help="samples a second (999)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load first (10)")
    parser.add_argument("--top", type=int, default=12, help="symbols shown (12)")
    parser.add_argument("--symbols", default="", help="symbols always shown, comma-separated")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    return parser.parse_args(argv)


def read_samples(path: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Samples by shared object and by ``object:symbol`` in ``perf record``'s ``path``.

    Symbols a stripped object does not name (perf prints an address) are summed into
    ``object:?``.
    """
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(path),
            "--no-children",
            "--sort",
            "dso,sym",
            "--stdio",
            "-n",
            "-g",
            "none",
            "--percent-limit",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects: collections.Counter[str] = collections.Counter()
    symbols: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        # "    10.67%  1234  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault"
        fields = line.split(None, 4)
        if len(fields) < 5 or not fields[0].endswith("%") or not fields[1].isdigit():
            continue
        samples, dso, symbol = int(fields[1]), fields[2], fields[4].strip()
        if symbol.startswith("0x"):
            symbol = "?"
        objects[dso] += samples
        symbols[f"{dso}:{symbol}"] += samples
    return objects, symbols


def short_name(key: str) -> str:
    """``libpython3.11.so.1.0:insertdict`` -> ``libpython3.11:insertdict``; the kernel's
    ``[kernel.kallsyms]`` -> ``kernel``; a Python extension's ``orjson.cpython-311-...so``
    -> ``orjson``."""
    dso, sep, symbol = key.rpartition(":")
    if not sep:
        return key
    if dso.startswith("[kernel"):
        dso = "kernel"
    elif ".cpython-" in dso:
        dso = dso.split(".cpython-")[0]
    else:
        dso = dso.split(".so")[0]
    return f"{dso}:{symbol}"


def object_row(objects: collections.Counter[str], prefix: str) -> int:
    return sum(n for dso, n in objects.items() if dso.startswith(prefix))


async def sample(pid: int, seconds: float, path: Path, frequency: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "perf",
        "record",
        "-q",
        "-e",
        "cpu-clock",
        "-F",
        str(frequency),
        "-o",
        str(path),
        "-p",
        str(pid),
        "--",
        "sleep",
        f"{seconds:g}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        msg = f"perf record of pid {pid} failed"
        raise RuntimeError(msg)


async def one_round(
    servers: list[Server],
    deck: tuple[Path, list[Path]],
    args: argparse.Namespace,
    tmp: Path,
    round_: int,
) -> list[dict[str, Any]]:
    """Every server loaded and sampled at once; one row of figures per server."""
    script, bodies = deck
    before = [read_stat(s.proc.pid) for s in servers]
    paths = [tmp / f"round{round_}-{i}.data" for i in range(len(servers))]
    results = await asyncio.gather(
        *(
            run_wrk(s.port, script, bodies, duration=args.duration, connections=args.connections)
            for s in servers
        ),
        *(
            sample(s.proc.pid, args.duration, path, args.frequency)
            for s, path in zip(servers, paths, strict=True)
        ),
    )
    rows = []
    loads = results[: len(servers)]  # (the samplers' results follow: None)
    for server, start, path, result in zip(servers, before, paths, loads, strict=True):
        counted = read_stat(server.proc.pid) - start
        objects, symbols = read_samples(path)
        requests = result.requests
        per = 1e6 / args.frequency / max(requests, 1)  # us of CPU per sample, per request
        row: dict[str, Any] = {
            "mode": server.mode.name,
            "round": round_,
            "requests": requests,
            "errors": result.status_errors + result.socket_errors,
            "counted_us": 1e6 * counted.cpu / max(requests, 1),
            "total": per * sum(objects.values()),
            "objects": {name: per * object_row(objects, p) for name, p in OBJECTS.items()},
            "symbols": {k: per * n for k, n in symbols.items()},
        }
        rows.append(row)
    return rows


def figures(row: dict[str, Any]) -> dict[str, float]:
    """A row's figures flat: ``total``, ``object:<name>``, ``<object>:<symbol>``."""
    flat = {"total": row["total"]}
    flat.update({f"object:{k}": v for k, v in row["objects"].items()})
    flat.update(row["symbols"])
    return flat


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Medians over the rounds of every figure, and of its ratio to the first mode's
    figure in the same round."""
    by_mode = {m: [figures(r) for r in rows if r["mode"] == m] for m in modes}
    base = by_mode[modes[0]]
    keys = sorted({k for runs in by_mode.values() for run in runs for k in run})
    medians: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for mode, runs in by_mode.items():
        medians[mode] = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in keys}
        ratios[mode] = {}
        for k in keys:
            pairs = [(run.get(k, 0.0), b.get(k, 0.0)) for run, b in zip(runs, base, strict=True)]
            if all(b > 0 for _, b in pairs):
                ratios[mode][k] = statistics.median(a / b for a, b in pairs)
    return {"median_us_per_request": medians, "median_ratio": ratios}


def shown_symbols(summary: dict[str, Any], top: int, named: list[str]) -> list[str]:
    medians = summary["median_us_per_request"]
    symbols = {k for m in medians.values() for k in m if not k.startswith(("total", "object:"))}
    ranked = sorted(symbols, key=lambda k: -max(m.get(k, 0.0) for m in medians.values()))
    wanted = [k for k in symbols if k.rsplit(":", 1)[-1] in named]
    return ranked[:top] + [k for k in wanted if k not in ranked[:top]]


def print_table(
    rows: list[dict[str, Any]], summary: dict[str, Any], modes: list[str], keys: list[str]
) -> None:
    medians, ratios = summary["median_us_per_request"], summary["median_ratio"]
    width = 44
    title = "us of CPU per request (median; ratio)"
    print(f"{title:{width}s}" + "".join(f"{m:>22s}" for m in modes))
    per_mode = {m: [r for r in rows if r["mode"] == m] for m in modes}
    base = per_mode[modes[0]]
    cells = []
    for m in modes:
        served = statistics.median(r["requests"] for r in per_mode[m])
        ratio = statistics.median(
            r["requests"] / b["requests"] for r, b in zip(per_mode[m], base, strict=True)
        )
        cells.append(f"{served:>14,.0f}{ratio:7.3f}x")
    print(f"{'requests a round':{width}s}" + "".join(cells))
    cells = []
    for m in modes:
        checks = [r["total"] / r["counted_us"] for r in per_mode[m] if r["counted_us"]]
        cells.append(f"{statistics.median(checks) if checks else 0.0:>22.3f}")
    print(f"{'sampled / counted (/proc/PID/stat)':{width}s}" + "".join(cells))
    for key in keys:
        cells = "".join(
            f"{medians[m].get(key, 0.0):>14,.1f}"
            + (f"{ratios[m][key]:7.3f}x" if key in ratios[m] else f"{'':8s}")
            for m in modes
        )
        print(f"{short_name(key)[:width]:{width}s}{cells}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [n.strip() for n in args.modes.split(",") if n.strip()]
    modes, skipped = resolve_modes(names)
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if len(modes) < 2:  # a ratio needs two
        msg = "cpu_split needs at least two modes it can run here"
        raise SystemExit(msg)
    workload = size_workload(args.size)
    servers = [Server(m).start() for m in modes]
    rows: list[dict[str, Any]] = []
    try:
        with (
            deck_files(workload.deck(SOAK_SETTINGS.seed)) as (script, bodies),
            tempfile.TemporaryDirectory(prefix="arenapool-cpu-split-") as tmp,
        ):
            if args.warmup > 0:
                await asyncio.gather(
                    *(
                        run_wrk(s.port, script, bodies, duration=args.warmup, connections=2)
                        for s in servers
                    )
                )
            for round_ in range(args.rounds):
                done = await one_round(servers, (script, bodies), args, Path(tmp), round_)
                rows.extend(done)
                line = ", ".join(f"{r['mode']} {r['requests']:,}" for r in done)
                print(f"round {round_}: {line}", file=sys.stderr, flush=True)
    finally:
        for server in servers:
            server.stop()
    order = [m.name for m in modes]
    summary = summarize(rows, order)
    keys = [
        "total",
        *(f"object:{k}" for k in OBJECTS),
        *shown_symbols(summary, args.top, [s for s in args.symbols.split(",") if s]),
    ]
    keys = [k for k in keys if any(summary["median_us_per_request"][m].get(k) for m in order)]
    print_table(rows, summary, order, keys)
    return {
        "benchmark": "cpu_split",
        "modes": order,
        "size": args.size,
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": args.connections,
        "frequency": args.frequency,
        "runs": [{k: v for k, v in r.items() if k != "symbols"} for r in rows],
        "median_us_per_request": {
            m: {k: v for k, v in summary["median_us_per_request"][m].items() if k in keys}
            for m in order
        },
        "median_ratio": {
            m: {k: v for k, v in summary["median_ratio"][m].items() if k in keys} for m in order
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("perf") is None or shutil.which("wrk") is None:
        print("cpu_split needs perf (linux-perf) and wrk: scripts/bootstrap installs both")
        return 2
    print_json_line(asyncio.run(run(args)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
