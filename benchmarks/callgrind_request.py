"""Instructions per request: arenapool's middleware against a do-nothing one, by callgrind.

    python benchmarks/callgrind_request.py                       # both pairs, ~3 min
    python benchmarks/callgrind_request.py --pairs orjson --requests 1000   # quicker
    python benchmarks/callgrind_request.py --size 64KiB          # another body size
    python benchmarks/callgrind_request.py --size mixed          # the soak's sizes
    python benchmarks/callgrind_request.py --size 200KiB --concurrency 8 --cache-sim
    python benchmarks/callgrind_request.py --size mixed --cache-sim --last-level 1MiB
    python benchmarks/callgrind_request.py --pairs orjson --size 1MiB --trickle 64KiB

Wall-clock times on a shared 2-core machine swing by +-15%; instruction counts do not.
Each variant is the example service (``integrations/example_service/app.py``) in its own
process under ``valgrind --tool=callgrind``, on 127.0.0.1:

- pair ``orjson``: ``orjson+noop`` (the ``orjson`` mode with one do-nothing
  ``@web.middleware`` appended) against ``arenapool`` (``read_json`` under arenapool's
  middleware, orjson decoding);
- pair ``msgspec``: ``msgspec+noop`` against ``arenapool-msgspec`` (the same ``Ingest``
  Struct, decoded by msgspec);
- and, unless ``--no-plain``, each pair's decoder with no middleware at all (``orjson``,
  ``msgspec``: the baseline of the throughput benchmarks), reported as a second ratio.

Method: start the server under callgrind (collection on from the start), send
``--warmup`` requests from this process (outside valgrind), zero the counters with
``callgrind_control --zero``, send exactly ``--requests`` requests of ``--size`` (the
same seeded body every time), dump with ``callgrind_control --dump``, stop the server,
and read the dump's ``PROGRAM TOTALS`` with ``callgrind_annotate``. Ir per request is
those totals over ``--requests``: everything the server process executed meanwhile,
in every thread (event loop, parser, handler, arenapool's decay thread and governor),
idle polling included. The client keeps ``--concurrency`` requests in flight (1 by
default, so the per-request event-loop work does not depend on how requests batch).
The ratio ``arenapool / noop`` is the overhead; issue 11's target is <= 1.02 at 1 KiB.

Valgrind runs the server about 50 times slower, but not its clock: work done on a timer
(arenapool's governor ticks, calibration) is charged to each request about 50 times
over. So each server is also measured idle for ``--idle`` seconds right after (zero,
wait, dump), and a second figure per request subtracts that idle rate over the measured
window: the clock-free ratio is what each request itself costs; the raw one is kept.

Under valgrind the server runs tens of times slower than its client, so a body written
whole has arrived whole before its handler runs, and arenapool's body path takes its
cheapest branch (one allocation, no waiting for the rest). A loaded server at full speed
sees large bodies arrive while their handlers run. ``--trickle PIECE`` sends every body
in pieces of PIECE bytes, ``--trickle-gap`` seconds apart (5 ms by default), so the
counts include that path: each piece
read, the first step, the admission and the growth into the declared size for
arenapool; ``readany`` and the growing ``bytearray`` for ``request.read()``. Only the
measured requests and their warm-up are paced; the gaps are idle time, which the
clock-free figure subtracts like the rest.

The dumps are kept in ``--out`` (default: a new temporary directory), so
``callgrind_annotate --inclusive=yes <dump> | head -60`` shows where the instructions went.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from arenapool import parse_size
from harness.benchkit import EXAMPLE_SERVE, callgrind_events
from harness.loadgen import Pacing, run_load
from harness.server import find_example_service, free_port, service_env
from harness.workload import Plan, Workload, get_workload

PAIRS = {"orjson": ("orjson+noop", "arenapool"), "msgspec": ("msgspec+noop", "arenapool-msgspec")}
#: each pair's decoder with no middleware at all: the throughput benchmarks' baseline
PLAIN = {"orjson": "orjson", "msgspec": "msgspec"}


def need_tools() -> None:
    missing = [
        t for t in ("valgrind", "callgrind_control", "callgrind_annotate") if not shutil.which(t)
    ]
    if missing:
        msg = f"missing {', '.join(missing)} (Debian/Ubuntu: apt-get install valgrind)"
        raise SystemExit(msg)


#: what ``--cache-sim`` reports per request, of callgrind's simulated events
SIM_EVENTS = ("I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bcm", "Bim")


def program_totals(dump: Path) -> int:
    """Ir of a callgrind dump, from ``callgrind_annotate``'s ``PROGRAM TOTALS`` line."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", out, re.MULTILINE)
    if match is None:
        msg = f"no PROGRAM TOTALS in callgrind_annotate's output for {dump}"
        raise RuntimeError(msg)
    return int(match[1].replace(",", ""))


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            msg = f"server exited with status {proc.returncode} before listening"
            raise RuntimeError(msg)
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # startup polling, bounded by the deadline
            continue
        writer.close()
        return


def start_server(
    mode: str,
    noop: str,
    port: int,
    out: Path,
    stem: str,
    *,
    cache_sim: bool = False,
    last_level: int | None = None,
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """The example service in ``mode`` under callgrind; its output goes to a log file.

    With ``cache_sim``, callgrind simulates the caches, the last level at ``last_level``
    bytes (16-way, 64-byte lines) when given, else at this machine's own. The valgrind
    log still prints the auto-detected last level (it is read before the option
    replaces it); the dump's ``desc: LL cache:`` line is what was simulated.
    """
    log = (out / f"{stem}.valgrind.log").open("wb")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []
    if cache_sim and last_level is not None:
        sim.append(f"--LL={last_level},16,64")
    proc = subprocess.Popen(
        [
            "valgrind", "--tool=callgrind", *sim, f"--callgrind-out-file={out / stem}.%p.out",
            sys.executable, "-c", EXAMPLE_SERVE, str(find_example_service()), mode, noop, str(port),
        ],
        env=service_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, log


def find_dumps(out: Path, pattern: str) -> list[Path]:
    return sorted(out.glob(pattern))


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


async def measure(variant: str, args: argparse.Namespace, out: Path, round_: int) -> dict[str, Any]:
    """Ir per request of one variant: warm up, zero, ``--requests`` requests, dump."""
    mode = variant.removesuffix("+noop")
    noop = "1" if variant.endswith("+noop") else "0"
    port = free_port()
    stem = f"{variant}.r{round_}"
    proc, log = start_server(
        mode, noop, port, out, stem, cache_sim=args.cache_sim, last_level=args.last_level
    )
    try:
        await wait_listening(port, proc, args.startup_timeout)
        if args.size == "mixed":  # the soak's sizes, the same seeded sequence per variant
            mixed = get_workload("mixed")
            workload = Workload(
                "callgrind", mixed.min_size, mixed.max_size, mixed.distribution, args.concurrency
            )
        else:
            size = parse_size(args.size)
            workload = Workload("callgrind", size, size, "fixed", args.concurrency)
        plan = Plan(workload.deck(args.seed), args.seed)
        gap = args.trickle_gap
        common: dict[str, Any] = {
            "concurrency": args.concurrency,
            "duration": 900.0,
            "timeout": 120.0,
            "pacing": None
            if args.trickle is None
            else Pacing(args.trickle, lambda: asyncio.sleep(gap)),
        }
        warm = await run_load("127.0.0.1", port, plan, requests=args.warmup, **common)
        control("--zero", str(proc.pid))
        started = time.monotonic()
        result = await run_load("127.0.0.1", port, plan, requests=args.requests, **common)
        elapsed = time.monotonic() - started
        control(f"--dump={stem}", str(proc.pid))
        # the same server idle for --idle seconds: what it runs on the clock (timers,
        # the governor's ticks), which valgrind's slowdown would otherwise charge to
        # each request about 50 times over
        control("--zero", str(proc.pid))
        idle_started = time.monotonic()
        await asyncio.sleep(args.idle)  # the idle window itself is what is measured
        idle_elapsed = time.monotonic() - idle_started
        control(f"--dump={stem}.idle", str(proc.pid))
        if warm.ok != args.warmup or result.ok != args.requests:
            msg = (
                f"{variant}: {warm.ok}/{args.warmup} warm-up and {result.ok}/{args.requests} "
                f"measured requests answered correctly"
            )
            raise RuntimeError(msg)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    dumps = find_dumps(out, f"{stem}.{proc.pid}.out.*")
    if len(dumps) < 2:  # <stem>.<pid>.out.1 measured, .out.2 idle
        msg = f"{variant}: callgrind wrote {len(dumps)} dumps into {out}, expected 2"
        raise RuntimeError(msg)
    total = program_totals(dumps[0])
    idle_rate = program_totals(dumps[1]) / idle_elapsed
    clock_free = max(0.0, total - idle_rate * elapsed)
    events = callgrind_events(dumps[0]) if args.cache_sim else {}
    return {
        "variant": variant,
        "sim_per_request": {
            name: events[name] / args.requests for name in SIM_EVENTS if name in events
        },
        "ir": total,
        "ir_per_request": total / args.requests,
        "idle_ir_per_second": idle_rate,
        "clock_free_ir_per_request": clock_free / args.requests,
        "dump": str(dumps[0]),
    }


async def main_async(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    runs: dict[str, list[float]] = {}
    clock_free: dict[str, list[float]] = {}
    dumps: dict[str, list[str]] = {}
    sims: dict[str, list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for pair in args.pairs:
            baseline, candidate = PAIRS[pair]
            order: tuple[str, ...] = (baseline, candidate)
            if args.plain:
                order = (*order, PLAIN[pair])
            if round_ % 2:
                order = order[::-1]
            for variant in order:
                m = await measure(variant, args, out, round_)
                runs.setdefault(variant, []).append(m["ir_per_request"])
                clock_free.setdefault(variant, []).append(m["clock_free_ir_per_request"])
                dumps.setdefault(variant, []).append(m["dump"])
                sims.setdefault(variant, []).append(m["sim_per_request"])
                print(
                    f"  round {round_ + 1} {variant:<18} {m['ir_per_request']:12,.0f} Ir/request"
                    f" ({m['clock_free_ir_per_request']:,.0f} without the idle server's"
                    f" {m['idle_ir_per_second']:,.0f} Ir/s)",
                    flush=True,
                )
    medians = {v: statistics.median(r) for v, r in runs.items()}
    ratios = {pair: medians[PAIRS[pair][1]] / medians[PAIRS[pair][0]] for pair in args.pairs}
    free_medians = {v: statistics.median(r) for v, r in clock_free.items()}
    free_ratios = {
        pair: free_medians[PAIRS[pair][1]] / free_medians[PAIRS[pair][0]] for pair in args.pairs
    }
    plain_ratios = {
        pair: medians[PAIRS[pair][1]] / medians[PLAIN[pair]]
        for pair in args.pairs
        if PLAIN[pair] in medians
    }
    plain_free_ratios = {
        pair: free_medians[PAIRS[pair][1]] / free_medians[PLAIN[pair]]
        for pair in args.pairs
        if PLAIN[pair] in free_medians
    }
    return {
        "benchmark": "callgrind_request",
        "arenapool": arenapool.__version__,
        "extensions": os.environ.get("ARENAPOOL_NO_EXTENSIONS", "") != "1",
        "size": args.size,
        "requests": args.requests,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "trickle": args.trickle,
        "trickle_gap": None if args.trickle is None else args.trickle_gap,
        "rounds": args.rounds,
        "ir_per_request": runs,
        "median_ir_per_request": medians,
        "ratio": ratios,
        "median_clock_free_ir_per_request": free_medians,
        "clock_free_ratio": free_ratios,
        "ratio_to_plain": plain_ratios,
        "clock_free_ratio_to_plain": plain_free_ratios,
        "target": "<= 1.02",
        "sim_per_request": {
            v: {
                name: statistics.median(r[name] for r in rs)
                for name in SIM_EVENTS
                if all(name in r for r in rs)
            }
            for v, rs in sims.items()
            if args.cache_sim
        },
        "dumps": dumps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs",
        type=lambda s: [p for p in s.split(",") if p],
        default=list(PAIRS),
        help="comma-separated: orjson (arenapool vs orjson+noop), msgspec "
        "(arenapool-msgspec vs msgspec+noop); default: both",
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured requests (2000)")
    parser.add_argument("--warmup", type=int, default=300, help="requests before zeroing (300)")
    parser.add_argument(
        "--size", default="1KiB", help="body size (1KiB), or mixed (1 KiB-4 MiB log-uniform)"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (1)")
    parser.add_argument(
        "--trickle",
        type=parse_size,
        default=None,
        help="send each body in pieces of this size (e.g. 64KiB), --trickle-gap apart, so "
        "the server reads it while its handler runs, as at full speed (default: whole)",
    )
    parser.add_argument(
        "--trickle-gap",
        type=float,
        default=0.005,
        help="seconds between two pieces of a body with --trickle (0.005)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each variant (1)")
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds of idle server measured after (5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the body (1)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds (300)")
    parser.add_argument("--out", default=None, help="directory for the dumps (default: a temp dir)")
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the caches and branch predictor (callgrind --cache-sim=yes "
        "--branch-sim=yes): L1 and last-level instruction and data misses, mispredicted "
        "branches, per request",
    )
    parser.add_argument(
        "--last-level",
        type=parse_size,
        default=None,
        help="with --cache-sim, simulate a last-level cache of this size (e.g. 1MiB, this "
        "machine's L2 per core: what a process keeps of a shared L3 under contention); "
        "default: this machine's",
    )
    parser.add_argument(
        "--no-plain",
        dest="plain",
        action="store_false",
        help="skip the decoder with no middleware at all (orjson, msgspec)",
    )
    args = parser.parse_args(argv)
    if args.last_level is not None and not args.cache_sim:
        parser.error("--last-level sizes the simulated cache: it needs --cache-sim")
    if args.trickle is not None and args.trickle < 1:
        parser.error("--trickle is the size of a piece: at least 1 byte")
    if args.trickle_gap < 0:
        parser.error("--trickle-gap must be >= 0")
    unknown = [p for p in args.pairs if p not in PAIRS]
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    need_tools()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="arenapool-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"callgrind: {args.requests} requests of {args.size} per variant"
        f"{'' if args.trickle is None else f' in pieces of {args.trickle} B'}, "
        f"{args.rounds} round(s), dumps in {out}",
        flush=True,
    )
    record = asyncio.run(main_async(args, out))
    print(f"{'variant':<20} {'median Ir/request':>18}")
    for variant, value in record["median_ir_per_request"].items():
        print(f"{variant:<20} {value:18,.0f}")
    for variant, sim in record["sim_per_request"].items():
        shown = ", ".join(f"{name} {value:,.0f}" for name, value in sim.items())
        print(f"{variant:<20} per request: {shown}")
    for pair, value in record["ratio"].items():
        baseline, candidate = PAIRS[pair]
        free = record["clock_free_ratio"][pair]
        print(
            f"{candidate} / {baseline}: {value:.4f}x (target <= 1.02); {free:.4f}x without "
            "what each server runs on the clock while idle"
        )
    for pair, value in record["ratio_to_plain"].items():
        free = record["clock_free_ratio_to_plain"][pair]
        print(
            f"{PAIRS[pair][1]} / {PLAIN[pair]} (no middleware at all, the throughput "
            f"baseline): {value:.4f}x; {free:.4f}x clock-free"
        )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
