"""Issue 11's table: arenapool against the same decoder without it, by body size, with wrk.

    python benchmarks/request_path.py                      # 5 sizes x 5 rounds, ~26 min
    python benchmarks/request_path.py --sizes 64KiB --rounds 5 --duration 8
    python benchmarks/request_path.py --modes orjson,arenapool --no-floor   # one pair
    python benchmarks/request_path.py --sizes 1KiB --control     # with an A/A control
    python benchmarks/request_path.py --side-by-side --control   # each group loaded at once

For every body size (1 KiB, 64 KiB, 200 KiB, 1 MiB, 4 MiB by default: issue 11's four,
and one between the inline bodies and the large ones, where the copies an arena saves
are cheapest and its bookkeeping counts most; ``mixed`` is the 1 KiB-4 MiB log-uniform
deck), each mode runs the example service alone in its own process on
127.0.0.1 (one worker) and is driven by Debian's ``wrk`` (outside Python) with 32
keep-alive connections posting that size for ``--duration`` seconds.

There are ``--rounds`` measured rounds per size, and each round starts fresh server
processes (``--same-servers``: one set for all of a size's rounds). Every server first
answers each body of the deck correctly once (checked by the Python client) and gets a
``--warmup`` wrk run. Fresh processes, because a process's heap settles into a layout of
its own in its first seconds and keeps it: the same server measured round after round
samples that one layout (2026-11-30, 4 MiB orjson bodies: one pair of servers gave
0.96x-1.04x over five rounds here, another pair 1.00x-1.11x over three in an ad-hoc run).
In a round each arenapool mode runs right beside its baseline, the pair's order
swapping every round (A B, B A, ...), and the pairs (and the floor servers) rotate, so
no server always runs first; a round's ratio comes from two runs seconds apart, not
minutes (on a shared machine the neighbours' load drifts). Each measured run follows
``--rewarm`` seconds of unmeasured load on the same server: a server idles while the
others are measured (arenapool's pool decays idle blocks after 10 s and, after 10 s
without a lend, resets its warm reserves), and the run should see steady state: the
default 3 s spans one of the pool's calibration ticks (every ``decay / 4`` = 2.5 s),
after which the reserve follows the traffic again. Then (``--drain``, on by default since
2026-12-07) each server of the batch is left to finish the requests the rewarm's wrk
left in flight (``harness.procstat.wait_quiet``: until its CPU time stands still for
0.1 s, at most 3 s; the run records the wait), and the measured runs start together. A
new wrk's connections all post at once, and with the last run's requests still in
flight a server had more bodies of 1 MiB in hand at once than 32 connections keep: it
grew its pool and its heap for them in the measured run's first second (page faults
that no server under steady traffic takes, the baselines' too).
Per run, from wrk and from the server's
``/proc/PID/stat``: requests/s, minor page faults per request, CPU (user + system) per
request. The ratios ``arenapool / orjson`` and ``arenapool-msgspec / msgspec`` are taken
within each round (the same minute of the same machine), and the table gives their
median.

``--pin`` (where there are two CPUs or more) runs every server on the last CPU this
process may use and wrk on the others (``harness.cpus``). Left to itself, the scheduler
sometimes puts the server and wrk on the same core while the other idles (on loopback
each wakes the other at every request, and the kernel places a woken task beside its
waker). The server's own threads (arenapool's pool maintenance and trim worker) then
share its CPU, so a pinned round charges arenapool for them. Off by default: in four A/A
runs of 2026-12-03 it did not narrow the spread of the rounds (benchmarks/README.md,
"Pinned rounds, and steal"). What does move them is the hypervisor running other guests
on this machine's CPUs: each run records the share of the server's CPU time stolen that
way (``/proc/stat``; all CPUs' unless pinned), each ratio the steal of its rounds, and,
as a diagnostic beside the median, the median of the rounds neither of whose runs lost
more than ``QUIET_STEAL`` (5%).

``--side-by-side`` loads the servers of a group (an arenapool mode, its baseline and,
with ``--control``, the baseline's second server) at the same time, each by its own wrk
with ``--connections`` connections, instead of one after the other. They then share the
same seconds of the machine: a neighbour's burst or the hypervisor's steal lands on all
of them, where one after the other it can land on one run of a pair and miss the other.
On two CPUs each server then gets about an equal share of the machine, so the ratio of
their requests says what a request costs each (CPU, faults, caches) more than how fast
one server runs on an otherwise quiet machine. What separates two fresh processes of one
program stays: in the full run of 2026-12-03 the A/A ratios read 0.94x-1.03x, and the
rounds' spread (the standard deviation of their log ratios) was 0.03-0.14, against
0.03-0.40 one after the other in the hour before. Each run records its window
(``started``, ``ended``: wall-clock seconds). Every mode that is not one of arenapool's
pairs (``arenapool-no-governor``, ``orjson+trim``) gets a group of its own with its
baseline, which then runs once per group, and its ratio divides by the baseline's run
beside it.

``--side-by-side --pin`` puts a group's servers on one CPU (and their wrk on the other):
the scheduler then hands that CPU from one server to the other every few milliseconds,
so the ratio of their requests is the ratio of what a request costs each over the same
instants of the same core. This machine's speed at 1 MiB and above moves by up to a
third from one second, and one core, to the next; this way both servers see the same
moves (benchmarks/README.md, "One CPU, side by side").

With ``--control``, each baseline also runs in a second server (``orjson#2``,
``msgspec#2``) placed beside it in every round, and the table of other ratios gives
``orjson#2 / orjson``: an A/A test, the same code in two processes, measured as the
arenapool ratios are. Its median and its spread over the rounds say how far this
method's ratios move with nothing changed (on this 2-core machine, at 1 KiB: the
process-to-process differences of heap layout and placement are a few per cent).

With ``orjson+hold`` (``msgspec+hold``) among the modes, the decoder with glibc's heap
held as arenapool's governor holds it, the table of other modes also gives
``arenapool / orjson+hold``: the share of the gain that is the arena's, not the held
heap's. Likewise ``orjson+gc`` (``msgspec+gc``), the decoder with CPython's first
collection threshold set as the governor sets it (``GovernorConfig.gc_young_every``),
gives ``arenapool / orjson+gc``: the gain that is not the collector's.

The floor (``--floor``, on by default): how much of the baseline's CPU per request
aiohttp's ``request.read()`` spends copying and faulting, the most an arena can save.
Method: an extra server per decoder (``orjson-floor``, ``msgspec-floor``) runs the same
handler with aiohttp 3.14's ``read()`` loop written out (``readany()`` chunks
``extend``ed into a ``bytearray``, then ``bytes(body)``), and times with
``time.thread_time_ns`` (this thread's CPU time) only its synchronous copying steps: each
``extend``, the ``bytes()`` copy with the ``bytearray``'s release, and the release of
the ``bytes`` after decoding. Page faults taken in those steps are in that time (and
counted with ``getrusage(RUSAGE_THREAD)``). The cost of one empty timing pair is
calibrated at startup and subtracted. The floor is that copy time per request over the
CPU per request of the plain baseline server in the same round.

Targets (issue 11; reported, not enforced): throughput >= 0.98x at 1 KiB, >= 1.00x at
64 KiB, >= 1.05x at 1 MiB and 4 MiB; minor faults per request <= the baseline's. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout's root: harness/ (and arenapool, when the checkout is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arenapool
from arenapool import format_size, parse_size
from harness import cpus
from harness.benchkit import check_answers, print_json_line
from harness.cpus import Split
from harness.modes import (
    BASELINES,
    CONTROL,
    Mode,
    baseline_of,
    pair_groups,
    resolve_modes,
    round_groups,
    round_order,
)
from harness.procstat import read_stat, wait_quiet
from harness.report import machine_info
from harness.server import Server, sigterm_interrupts
from harness.workload import Workload, size_workload
from harness.wrk import WrkResult, deck_files, need_wrk, run_wrk

MODES = ["orjson", "arenapool", "msgspec", "arenapool-msgspec"]
#: a round is quiet when neither run of its pair lost more than this share (percent) of
#: the server's CPU time to the hypervisor (steal, from /proc/stat)
QUIET_STEAL = 5.0
SIZES = ["1KiB", "64KiB", "200KiB", "1MiB", "4MiB"]
TARGETS = {"1KiB": 0.98, "64KiB": 1.00, "1MiB": 1.05, "4MiB": 1.05}

# The floor server: the baseline handler with aiohttp's read() written out and timed.
SERVE_FLOOR = r"""
import importlib.util, resource, sys, time
import orjson
from aiohttp import web

spec = importlib.util.spec_from_file_location("example_app", sys.argv[1])
app_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_module)
decoder, port, limit = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

if decoder == "msgspec":
    import msgspec
    typed = msgspec.json.Decoder(app_module.ingest_type())
    def summarize(data):
        return app_module.summarize_typed(typed.decode(data).records)
else:
    def summarize(data):
        return app_module.summarize(app_module.records_of(orjson.loads(data)))

clock = time.thread_time_ns
def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

def calibrate():
    samples = []
    for _ in range(20001):
        t = clock()
        samples.append(clock() - t)
    samples.sort()
    return samples[len(samples) // 2]

OVERHEAD = calibrate()
stats = {"requests": 0, "copy_ns": 0, "copy_faults": 0, "segments": 0,
         "overhead_ns": OVERHEAD}

async def read_timed(request):
    # aiohttp 3.14.5's BaseRequest.read(), with its copying steps timed
    payload = request.content
    payload.set_read_chunk_size(limit)
    body = bytearray()
    spent = nfaults = segments = 0
    while True:
        chunk = await payload.readany()
        f = faults(); t = clock()
        body.extend(chunk)
        spent += clock() - t; nfaults += faults() - f; segments += 1
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(body))
        if not chunk:
            break
    f = faults(); t = clock()
    data = bytes(body)
    del body
    spent += clock() - t; nfaults += faults() - f; segments += 1
    return data, spent, nfaults, segments

async def ingest(request):
    data, spent, nfaults, segments = await read_timed(request)
    summary = summarize(data)
    f = faults(); t = clock()
    del data
    spent += clock() - t; nfaults += faults() - f; segments += 1
    stats["requests"] += 1
    stats["copy_ns"] += spent
    stats["copy_faults"] += nfaults
    stats["segments"] += segments
    return web.Response(body=orjson.dumps(summary), content_type="application/json")

async def health(request):
    return web.json_response({"status": "ok"})

async def floor(request):
    return web.json_response(stats)

app = web.Application(client_max_size=limit)
app.router.add_post("/ingest", ingest)
app.router.add_get("/health", health)
app.router.add_get("/floor", floor)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


class FloorServer(Server):
    """The floor server for one decoder (``orjson`` or ``msgspec``)."""

    def __init__(self, decoder: str, **kwargs: Any) -> None:
        super().__init__(Mode(f"{decoder}-floor", decoder, "read() timed"), **kwargs)
        self.decoder = decoder

    def command(self, app: Path) -> list[str]:
        limit = str(parse_size(self.limit))
        return [sys.executable, "-c", SERVE_FLOOR, str(app), self.decoder, str(self.port), limit]

    def floor_stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/floor", timeout=10) as response:
            doc: dict[str, int] = json.loads(response.read())
        return doc


@dataclass
class Run:
    """One wrk run against one server."""

    mode: str
    size: str
    round: int
    rps: float
    requests: int
    errors: int
    faults_per_request: float
    cpu_us_per_request: float
    p99_ms: float | None
    copy_us_per_request: float | None = None
    copy_faults_per_request: float | None = None
    steal_pct: float | None = None  # of the server's CPUs' time (all CPUs' if not pinned)
    drained_s: float | None = None  # the wait for the rewarm's requests (--drain)
    started: float | None = None  # the measured wrk run's window (time.time())
    ended: float | None = None
    group: int = 0  # which of the round's groups it ran in (its index in pair_groups')


@dataclass
class SizeResult:
    size: str
    runs: list[Run] = field(default_factory=list)


async def measure_size(
    size: str, modes: list[Mode], args: argparse.Namespace, floors: list[str]
) -> SizeResult:
    workload = size_workload(size)
    servers: dict[str, Server] = {}
    out = SizeResult(size)
    # side by side, every mode runs in a group with its baseline (the baseline once per
    # group it is in), so each ratio compares two servers loaded over the same seconds
    groups = pair_groups([m.name for m in modes], every_with_baseline=args.side_by_side)
    groups += [[f"{d}-floor"] for d in floors]
    try:
        with deck_files(workload.deck(args.seed)) as (script, bodies):
            for round_ in range(args.rounds):
                if not servers:
                    servers = await start_servers(
                        modes,
                        floors=floors,
                        args=args,
                        workload=workload,
                        script=script,
                        bodies=bodies,
                    )
                # side by side: a group's servers are loaded at once; else one by one
                batches = (
                    round_groups(groups, round_)
                    if args.side_by_side
                    else [[name] for name in round_order(groups, round_)]
                )
                for batch in batches:
                    group = next(i for i, g in enumerate(groups) if set(batch) <= set(g))
                    drained = await rewarm(
                        [servers[name] for name in batch], script=script, bodies=bodies, args=args
                    )
                    runs = await asyncio.gather(
                        *(
                            one_run(
                                servers[name],
                                name,
                                size=size,
                                round_=round_,
                                group=group,
                                script=script,
                                bodies=bodies,
                                args=args,
                                drained_s=wait,
                            )
                            for name, wait in zip(batch, drained, strict=True)
                        )
                    )
                    for r in runs:
                        out.runs.append(r)
                        print_run(r)
                if args.fresh:  # the next round samples new processes
                    await stop_servers(servers)
                    servers = {}
    finally:
        await stop_servers(servers)
    return out


def print_run(r: Run) -> None:
    print(
        f"  {r.size:>6} round {r.round + 1} {r.mode:<18} {r.rps:9.1f} req/s "
        f"{r.faults_per_request:8.1f} faults/req "
        f"{r.cpu_us_per_request:9.1f} us CPU/req"
        + (f" {r.steal_pct:5.1f}% steal" if r.steal_pct is not None else "")
        + (
            f"  copy {r.copy_us_per_request:.1f} us/req"
            if r.copy_us_per_request is not None
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )


async def start_servers(
    modes: list[Mode],
    *,
    floors: list[str],
    args: argparse.Namespace,
    workload: Workload,
    script: Path,
    bodies: list[Path],
) -> dict[str, Server]:
    """Every mode's server (and the floor servers), each checked and warmed up."""
    servers: dict[str, Server] = {}
    try:
        for mode in modes:
            servers[mode.name] = Server(mode, limit=args.limit, cpus=server_cpus(args)).start()
        for decoder in floors:
            floor = FloorServer(decoder, limit=args.limit, cpus=server_cpus(args))
            servers[f"{decoder}-floor"] = floor.start()
        for server in servers.values():
            await check_answers(server, workload.deck(args.seed), args.seed)
            await load(server, script, bodies, args.warmup, args)
    except BaseException:
        await stop_servers(servers)
        raise
    return servers


def server_cpus(args: argparse.Namespace) -> frozenset[int] | None:
    """The CPUs the servers run on (``None``: not pinned)."""
    split: Split | None = args.split
    return None if split is None else split.server


def client_cpus(args: argparse.Namespace) -> frozenset[int] | None:
    """The CPUs wrk runs on (``None``: not pinned)."""
    split: Split | None = args.split
    return None if split is None else split.client


async def load(
    server: Server, script: Path, bodies: list[Path], seconds: float, args: argparse.Namespace
) -> WrkResult:
    """One wrk run of ``seconds`` against ``server``, with the run's connections and CPUs."""
    return await run_wrk(
        server.port,
        script,
        bodies,
        duration=seconds,
        connections=args.connections,
        cpus=client_cpus(args),
    )


async def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        await asyncio.to_thread(server.stop)


async def rewarm(
    batch: list[Server], *, script: Path, bodies: list[Path], args: argparse.Namespace
) -> list[float | None]:
    """Bring a batch's servers back to steady state after idling while the others ran
    (``--rewarm`` seconds of load on each at once), then, with ``--drain``, wait until
    each has finished the requests that load left in flight; the seconds each waited."""
    if args.rewarm > 0:
        await asyncio.gather(*(load(server, script, bodies, args.rewarm, args) for server in batch))
    if not args.drain:
        return [None] * len(batch)
    pids = []
    for server in batch:
        assert server.proc is not None
        pids.append(server.proc.pid)
    return list(await asyncio.gather(*(wait_quiet(pid) for pid in pids)))


async def one_run(
    server: Server,
    name: str,
    *,
    size: str,
    round_: int,
    group: int,
    script: Path,
    bodies: list[Path],
    args: argparse.Namespace,
    drained_s: float | None = None,
) -> Run:
    assert server.proc is not None
    pid = server.proc.pid
    floor_before = server.floor_stats() if isinstance(server, FloorServer) else None
    steal_before = cpus.steal_ticks(server_cpus(args))
    before = read_stat(pid)
    started = time.time()
    result = await load(server, script, bodies, args.duration, args)
    ended = time.time()
    delta = read_stat(pid) - before
    steal_after = cpus.steal_ticks(server_cpus(args))
    ticks = steal_after[1] - steal_before[1]
    n = max(1, result.requests)
    run = Run(
        mode=name,
        size=size,
        round=round_,
        rps=result.rps,
        requests=result.requests,
        errors=result.status_errors + result.socket_errors,
        faults_per_request=delta.minflt / n,
        cpu_us_per_request=delta.cpu * 1e6 / n,
        p99_ms=result.percentiles_ms.get(99),
        steal_pct=100 * (steal_after[0] - steal_before[0]) / ticks if ticks > 0 else None,
        drained_s=drained_s,
        started=started,
        ended=ended,
        group=group,
    )
    if isinstance(server, FloorServer) and floor_before is not None:
        after = server.floor_stats()
        served = max(1, after["requests"] - floor_before["requests"])
        segments = after["segments"] - floor_before["segments"]
        copy_ns = after["copy_ns"] - floor_before["copy_ns"] - segments * after["overhead_ns"]
        run.copy_us_per_request = max(0.0, copy_ns) / served / 1000
        run.copy_faults_per_request = (after["copy_faults"] - floor_before["copy_faults"]) / served
    return run


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(
    results: list[SizeResult], modes: list[str], floors: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for sr in results:
        by_mode: dict[str, list[Run]] = {}
        for r in sr.runs:
            by_mode.setdefault(r.mode, []).append(r)
        row: dict[str, Any] = {"size": sr.size, "modes": {}}
        for mode, runs in by_mode.items():
            row["modes"][mode] = {
                "rps": med([r.rps for r in runs]),
                "faults_per_request": med([r.faults_per_request for r in runs]),
                "cpu_us_per_request": med([r.cpu_us_per_request for r in runs]),
                "p99_ms": med([r.p99_ms for r in runs if r.p99_ms is not None]),
                "steal_pct": med([r.steal_pct for r in runs if r.steal_pct is not None]),
                "errors": sum(r.errors for r in runs),
                "rounds": len(runs),
            }
        ratios: dict[str, Any] = {}
        pairs = [(mode, baseline_of(mode)) for mode in modes]
        # an arenapool mode against its decoder with the heap held as the governor holds
        # it (``orjson+hold``): the arena's own share of the gain
        pairs += [(mode, f"{base}+hold") for mode, base in BASELINES.items() if mode in modes]
        # ... and with CPython's first collection threshold set as the governor sets it
        # (``orjson+gc``): the share of the gain that is the arena's, not the collector's
        pairs += [(mode, f"{base}+gc") for mode, base in BASELINES.items() if mode in modes]
        for mode, base in pairs:
            if mode == base or mode not in by_mode or base not in by_mode:
                continue
            per_round, steal, quiet = [], [], []
            for r in by_mode[mode]:
                # the baseline's run of the same round, in the same group when it ran in
                # several (side by side: the one loaded over the same seconds)
                same_round = [x for x in by_mode[base] if x.round == r.round]
                b = next((x for x in same_round if x.group == r.group), None)
                if b is None and same_round:
                    b = same_round[0]
                if b is not None and b.rps > 0:
                    per_round.append(r.rps / b.rps)
                    most = max((x.steal_pct or 0.0) for x in (r, b))
                    steal.append(most)
                    if most <= QUIET_STEAL:
                        quiet.append(r.rps / b.rps)
            ratios[f"{mode}/{base}"] = {
                "median": med(per_round),
                "per_round": [round(x, 3) for x in per_round],
                # the more stolen of the pair's two runs, per round (percent)
                "per_round_steal_pct": [round(x, 1) for x in steal],
                # a diagnostic, beside the median: the rounds neither run lost to steal
                "quiet_median": med(quiet),
                "quiet_rounds": len(quiet),
            }
        row["ratios"] = ratios
        floor: dict[str, Any] = {}
        for decoder in floors:
            runs = by_mode.get(f"{decoder}-floor", [])
            shares = []
            for r in runs:
                b = next((x for x in by_mode.get(decoder, []) if x.round == r.round), None)
                if b is not None and r.copy_us_per_request is not None and b.cpu_us_per_request > 0:
                    shares.append(r.copy_us_per_request / b.cpu_us_per_request)
            floor[decoder] = {
                "copy_us_per_request": med(
                    [r.copy_us_per_request for r in runs if r.copy_us_per_request is not None]
                ),
                "copy_faults_per_request": med(
                    [
                        r.copy_faults_per_request
                        for r in runs
                        if r.copy_faults_per_request is not None
                    ]
                ),
                "share_of_baseline_cpu": med(shares),
            }
        row["floor"] = floor
        rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("\nThroughput (wrk, medians; ratios taken within each round, then the median):")
    print(
        "| body | orjson req/s | arenapool req/s | arenapool / orjson | msgspec req/s "
        "| arenapool-msgspec req/s | arenapool-msgspec / msgspec | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, r = row["modes"], row["ratios"]
        cells = [row["size"]]
        for base, mode in (("orjson", "arenapool"), ("msgspec", "arenapool-msgspec")):
            cells.append(fmt(m.get(base, {}).get("rps"), ".0f"))
            cells.append(fmt(m.get(mode, {}).get("rps"), ".0f"))
            cells.append(fmt(r.get(f"{mode}/{base}", {}).get("median"), ".3f") + "x")
        target = TARGETS.get(row["size"])
        cells.append(f">= {target:.2f}x" if target else "-")
        print("| " + " | ".join(cells) + " |")
    extra = sorted(
        {k for row in rows for k in row["ratios"]}
        - {"arenapool/orjson", "arenapool-msgspec/msgspec"}
    )
    if extra:
        print("\nOther ratios (each mode against the one after the slash; median of rounds):")
        print("| body | " + " | ".join(extra) + " |")
        print("|---|" + "---|" * len(extra))
        for row in rows:
            cells = [fmt(row["ratios"].get(k, {}).get("median"), ".3f") + "x" for k in extra]
            print(f"| {row['size']} | " + " | ".join(cells) + " |")
    print(
        "\nEach ratio's rounds (in round order), the steal of each round (the more stolen of "
        f"its two runs), and the median of the rounds with <= {QUIET_STEAL:g}% steal:"
    )
    print("| body | ratio | rounds | steal % | quiet rounds: median (n) |")
    print("|---|---|---|---|---|")
    for row in rows:
        for key, ratio in row["ratios"].items():
            rounds = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
            steal = ", ".join(f"{x:.0f}" for x in ratio.get("per_round_steal_pct", []))
            quiet = ratio.get("quiet_median")
            quiet_cell = "-" if quiet is None else f"{quiet:.3f}x ({ratio['quiet_rounds']})"
            print(f"| {row['size']} | {key} | {rounds} | {steal} | {quiet_cell} |")
    print("\nPer request (medians): minor page faults, CPU us (user+system), from /proc/PID/stat:")
    names = sorted({k for row in rows for k in row["modes"]})
    print("| body | " + " | ".join(f"{n} faults | {n} CPU us" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for row in rows:
        cells = [row["size"]]
        for n in names:
            v = row["modes"].get(n, {})
            cells += [
                fmt(v.get("faults_per_request"), ".1f"),
                fmt(v.get("cpu_us_per_request"), ".1f"),
            ]
        print("| " + " | ".join(cells) + " |")
    if any(row["floor"] for row in rows):
        print(
            "\nThe floor: read()'s copying and faulting per request, and its share of the "
            "baseline's CPU:"
        )
        print("| body | decoder | copy us/req | faults in copies/req | share of baseline CPU |")
        print("|---|---|---|---|---|")
        for row in rows:
            for decoder, f in row["floor"].items():
                share = f["share_of_baseline_cpu"]
                print(
                    f"| {row['size']} | {decoder} | {fmt(f['copy_us_per_request'], '.1f')} | "
                    f"{fmt(f['copy_faults_per_request'], '.1f')} | "
                    f"{'-' if share is None else f'{share * 100:.1f}%'} |"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma-separated ({','.join(SIZES)}; or mixed)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated ({','.join(MODES)})"
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per size (5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of wrk warm-up per server (2)"
    )
    parser.add_argument(
        "--rewarm",
        type=float,
        default=3.0,
        help="seconds of unmeasured wrk load right before each measured run (3: past one "
        "of the pool's 2.5 s calibration ticks)",
    )
    parser.add_argument(
        "--drain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the rewarm, wait until each server has finished the requests it left "
        "in flight before the measured runs start (default: on)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--limit", default="8MiB", help="largest body (8MiB)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the bodies (1)")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the floor servers"
    )
    parser.add_argument(
        "--same-servers",
        dest="fresh",
        action="store_false",
        help="keep each size's servers for all its rounds (default: fresh processes every "
        "round, so the rounds sample the spread between processes too)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also run a second server of each baseline (orjson#2, msgspec#2) beside it in "
        "every round: the A/A ratio, what two processes of the same code differ by",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the servers on one CPU and wrk on the others, so the two never share a "
        "core while another idles (default: the OS places them)",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="load each arenapool mode and its baseline at the same time, each by its own "
        "wrk, so the two share the same seconds of the machine (default: one after the "
        "other, seconds apart)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    args.split = cpus.split() if args.pin else None
    need_wrk()
    requested = [m for m in args.modes.split(",") if m]
    if args.control:
        requested += [
            f"{base}{CONTROL}"
            for mode, base in BASELINES.items()
            if mode in requested and base in requested
        ]
    modes, notes = resolve_modes(requested)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    names = [m.name for m in modes]
    floors: list[str] = [d for d in ("orjson", "msgspec") if args.floor and d in names]
    sizes = [s for s in args.sizes.split(",") if s]
    print(
        f"request_path: {', '.join(names)} (+ floor: {', '.join(floors) or 'none'}) x "
        f"{', '.join(sizes)}, {args.rounds} rounds x {args.duration:g} s, wrk -c{args.connections}"
        + (
            ""
            if args.split is None
            else f", servers on CPU {sorted(args.split.server)}, wrk on {sorted(args.split.client)}"
        )
        + (", side by side" if args.side_by_side else ""),
        file=sys.stderr,
    )
    started = time.time()
    results = []
    with sigterm_interrupts():
        for size in sizes:
            results.append(asyncio.run(measure_size(size, modes, args, floors)))
    rows = summarize(results, names, floors)
    print_tables(rows)
    doc = {
        "benchmark": "request_path",
        "arenapool": arenapool.__version__,
        "elapsed_s": round(time.time() - started, 1),
        "settings": {
            "sizes": sizes,
            "modes": names,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rewarm_s": args.rewarm,
            "drain": args.drain,
            "connections": args.connections,
            "fresh_servers_each_round": args.fresh,
            "control": args.control,
            "pinned": None if args.split is None else args.split.to_dict(),
            "side_by_side": args.side_by_side,
            "client": "wrk",
            "seed": args.seed,
        },
        "machine": machine_info(),
        "rows": rows,
        "runs": [r.__dict__ for sr in results for r in sr.runs],
        "sizes_bytes": {s: (None if s == "mixed" else parse_size(s)) for s in sizes},
        "note": f"bodies up to {format_size(parse_size(args.limit))}",
    }
    print_json_line(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
