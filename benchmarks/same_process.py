"""The request path alone: several modes' apps served by ONE process, driven in turn by wrk.

    python benchmarks/same_process.py                                # 1 KiB, ~5 min
    python benchmarks/same_process.py --modes orjson,arenapool,orjson+noop --rounds 6

``request_path.py`` runs each mode in a process of its own, fresh every round: that is
what a deployment looks like, but two processes of the same code differ by a few per
cent on this 2-core machine (its ``--control`` measures it: heap layout, placement, the
hash seed), so a 1-2% difference in the request path drowns. Here one server process
makes the example service's app for every mode (``make_app(mode)``; ``+noop`` adds its
do-nothing middleware) and serves each on its own port on 127.0.0.1, in one event loop.
Every app then shares the process's heap, interpreter and placement; what differs
between them is the path a request takes. What one app sets for the whole process
(arenapool's governor pins glibc's heap thresholds, ``GovernorConfig.hold_heap``; the
imports) applies to all of them: this measures the request path, not the process.

Each round drives every mode's port once with wrk (32 keep-alive connections,
``--duration`` seconds, the order rotating and reversing so that no mode always runs
first), after a warm-up of each. CPU per request is the one process's CPU time (user +
system, ``/proc/PID/stat``) over the run, per request answered: nothing else runs in it
meanwhile. ``--processes`` repeats the whole with a new server process. Printed: per mode,
the median ratio to the first mode of requests/s and of CPU per request (taken within
each round), with their quartiles; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from arenapool import parse_size
from harness.benchkit import print_json_line
from harness.procstat import read_stat
from harness.report import machine_info
from harness.server import find_example_service, service_env
from harness.workload import Workload
from harness.wrk import deck_files, need_wrk, run_wrk

MODES = ["orjson", "arenapool"]
KNOWN = ["plain", "orjson", "msgspec", "arenapool", "arenapool-msgspec"]

#: Runs in the server process: ``python -c SERVE app.py MODE[+noop],...``; prints the
#: ports, one per mode, on one line once every app listens.
SERVE = r"""
import asyncio, importlib.util, sys
from aiohttp import web

spec = importlib.util.spec_from_file_location("example_app", sys.argv[1])
app_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_module)

async def main():
    ports = []
    for name in sys.argv[2].split(","):
        mode = name.removesuffix("+noop")
        app = app_module.make_app(mode, noop_middleware=name.endswith("+noop"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(runner.addresses[0][1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Run:
    mode: str
    process: int
    round: int
    rps: float
    cpu_us_per_request: float


def order_of(modes: list[str], round_: int) -> list[str]:
    """Round ``round_``'s order: rotated by one each round, reversed every other cycle."""
    shift = round_ % len(modes)
    order = modes[shift:] + modes[:shift]
    return order[::-1] if (round_ // len(modes)) % 2 else order


async def one_process(
    index: int, modes: list[str], args: argparse.Namespace, script: Path, bodies: list[Path]
) -> list[Run]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", SERVE, str(find_example_service()), ",".join(modes)),
        env=service_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    runs: list[Run] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:  # it exited before listening (its error went to stderr)
            msg = f"the server process for {', '.join(modes)} exited before it listened"
            raise RuntimeError(msg)
        ports = dict(zip(modes, map(int, line.split()), strict=True))
        for mode in modes:
            await run_wrk(
                ports[mode], script, bodies, duration=args.warmup, connections=args.connections
            )
        for round_ in range(args.rounds):
            for mode in order_of(modes, round_):
                before = read_stat(proc.pid)
                result = await run_wrk(
                    ports[mode],
                    script,
                    bodies,
                    duration=args.duration,
                    connections=args.connections,
                )
                delta = read_stat(proc.pid) - before
                n = max(1, result.requests)
                runs.append(Run(mode, index, round_, result.rps, delta.cpu * 1e6 / n))
                print(
                    f"  process {index + 1} round {round_ + 1} {mode:<18} "
                    f"{result.rps:9.1f} req/s {delta.cpu * 1e6 / n:7.1f} us CPU/req",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return runs


def quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return values * 3
    return statistics.quantiles(values, n=4)


def summarize(runs: list[Run], modes: list[str]) -> dict[str, Any]:
    base = modes[0]
    by_key = {(r.mode, r.process, r.round): r for r in runs}
    out: dict[str, Any] = {}
    for mode in modes:
        rps, cpu = [], []
        for r in runs:
            b = by_key.get((base, r.process, r.round))
            if r.mode == mode and b is not None and b.rps > 0 and b.cpu_us_per_request > 0:
                rps.append(r.rps / b.rps)
                cpu.append(r.cpu_us_per_request / b.cpu_us_per_request)
        out[mode] = {
            "rps": statistics.median(r.rps for r in runs if r.mode == mode),
            "cpu_us_per_request": statistics.median(
                r.cpu_us_per_request for r in runs if r.mode == mode
            ),
            "rps_ratio": statistics.median(rps),
            "rps_ratio_quartiles": [round(x, 4) for x in quartiles(rps)],
            "cpu_ratio": statistics.median(cpu),
            "cpu_ratio_quartiles": [round(x, 4) for x in quartiles(cpu)],
            "rounds": len(rps),
        }
    return out


def known_mode(name: str) -> bool:
    return name.removesuffix("+noop") in KNOWN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, the first is the baseline ({', '.join(KNOWN)}; '+noop' "
        "adds the do-nothing middleware)",
    )
    parser.add_argument("--size", default="1KiB", help="body size (1KiB)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per process (12)")
    parser.add_argument("--processes", type=int, default=2, help="server processes (2)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run (2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up per app (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the body (1)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    need_wrk()
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if not known_mode(m)]
    if unknown or len(modes) < 2 or len(set(modes)) != len(modes):
        parser.error(f"need two or more distinct modes of {', '.join(KNOWN)}; got {modes}")
    size = parse_size(args.size)
    workload = Workload("same-process", size, size, "fixed", args.connections)
    print(
        f"same_process: {', '.join(modes)} in one process x {args.processes}, "
        f"{args.rounds} rounds x {args.duration:g} s, {args.size}, wrk -c{args.connections}",
        file=sys.stderr,
    )
    started = time.time()
    runs: list[Run] = []
    with deck_files(workload.deck(args.seed)) as (script, bodies):
        for index in range(args.processes):
            runs += asyncio.run(one_process(index, modes, args, script, bodies))
    summary = summarize(runs, modes)
    print(f"\n{args.size}, every mode in the same process; ratios to {modes[0]} within each round:")
    print("| mode | req/s | CPU us/req | req/s ratio (quartiles) | CPU/req ratio (quartiles) |")
    print("|---|---|---|---|---|")
    for mode, s in summary.items():
        rq, cq = s["rps_ratio_quartiles"], s["cpu_ratio_quartiles"]
        print(
            f"| {mode} | {s['rps']:.0f} | {s['cpu_us_per_request']:.1f} | "
            f"{s['rps_ratio']:.3f}x ({rq[0]:.3f}-{rq[2]:.3f}) | "
            f"{s['cpu_ratio']:.3f}x ({cq[0]:.3f}-{cq[2]:.3f}) |"
        )
    doc = {
        "benchmark": "same_process",
        "arenapool": arenapool.__version__,
        "elapsed_s": round(time.time() - started, 1),
        "settings": {
            "modes": modes,
            "size": args.size,
            "rounds": args.rounds,
            "processes": args.processes,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "seed": args.seed,
            "client": "wrk",
        },
        "machine": machine_info(),
        "summary": summary,
        "runs": [r.__dict__ for r in runs],
    }
    print_json_line(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
