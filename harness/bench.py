"""The benchmark matrix: every mode x workload x repeat, medians and ratios to a baseline.

Theory of operation
-------------------
:func:`run_case` starts a :class:`~harness.server.Server`, warms it up (the Python client,
which checks every answer), drives it with one bounded load (the Python client, or
``wrk`` with ``settings.client == "wrk"``), reads the server's page faults and CPU
time before and after from ``/proc/PID/stat``, and reads RSS at peak, in steady state (the
median of the second half of the load), right after the load and after ``idle`` seconds
with no traffic. The idle wait of one case overlaps the next case: an idle server uses
no CPU, so the next server is measured on an otherwise quiet machine while the previous
one is still being watched. :func:`run_matrix` runs modes x workloads x repeats in that
order, rotating the mode order every repeat so no mode always runs first, and
:func:`summarize` takes medians and ratios to a baseline measured in the same run, and to
the same decoder without arenapool (``arenapool-msgspec`` against ``msgspec``).
Nothing here estimates memory: every RSS number is a psutil reading of the server, and
every latency is client-side wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .loadgen import LoadResult, run_load
from .modes import Mode, baseline_of
from .report import BASELINE, median, ratio, rounded
from .rss import RssSampler, rss_under_load
from .run import BENCH_SETTINGS, Progress, RunSettings, drive
from .server import Server, sigterm_interrupts
from .workload import Body, Plan, Workload
from .wrk import deck_files, run_wrk

__all__ = ["CaseResult", "measure_matrix", "run_case", "run_matrix", "summarize"]


@dataclass
class CaseResult:
    """One mode driven with one workload once."""

    mode: str
    workload: str
    repeat: int
    load: LoadResult
    rss_start: int | None = None
    rss_peak: int | None = None
    rss_steady: int | None = None
    rss_end: int | None = None
    rss_idle: int | None = None
    idle_s: float = 0.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    load_window: tuple[float, float] = (0.0, 0.0)
    faults_per_request: float | None = None  # minor faults, /proc/PID/stat of the server
    cpu_us_per_request: float | None = None  # user + system CPU of the server

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "workload": self.workload,
            "repeat": self.repeat,
            **self.load.to_dict(),
            "rss_start": self.rss_start,
            "rss_peak": self.rss_peak,
            "rss_steady": self.rss_steady,
            "rss_end": self.rss_end,
            "rss_idle": self.rss_idle,
            "idle_s": self.idle_s,
            "faults_per_request": rounded(self.faults_per_request, 2),
            "cpu_us_per_request": rounded(self.cpu_us_per_request, 1),
            "load_window_s": [round(x, 3) for x in self.load_window],
        }
        if samples:
            out["rss_samples"] = [[round(t, 3), rss] for t, rss in self.samples]
        return out


def _fill_rss(case: CaseResult, sampler: RssSampler, name: str) -> None:
    case.samples = list(sampler.samples[name])
    rss = rss_under_load(case.samples, [case.load_window])
    case.rss_peak, case.rss_steady = rss["rss_peak"], rss["rss_steady"]


async def run_case(
    mode: Mode,
    workload: Workload,
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeat: int = 0,
    interval: float = 0.2,
    progress: Progress | None = None,
    deck: Sequence[Any] | None = None,
    background: list[asyncio.Task[None]] | None = None,
) -> CaseResult:
    """Start ``mode``'s server, drive it with ``workload``, read its RSS, stop it.

    With ``background`` (a list), the idle wait and the final reading happen in a task
    appended to it, and this returns as soon as the load is done; await the tasks
    before reading ``rss_idle``.
    """
    progress = progress or Progress()
    seed, duration, idle = settings.seed, settings.duration, settings.idle
    label = f"{mode.name} / {workload.name} #{repeat + 1}"
    body_deck = list(deck) if deck is not None else workload.deck(seed)
    server = settings.server(mode).start()
    sampler = RssSampler({mode.name: server}, interval=interval)
    try:
        sampler.start()
        case = CaseResult(mode.name, workload.name, repeat, LoadResult(), idle_s=idle)
        case.rss_start = sampler.sample().get(mode.name)
        # Warm-up: a few requests from another seed, not counted, so first-call costs
        # (imports, pool growth) are not in the throughput numbers. They are in the RSS.
        warm = Plan(body_deck, seed + 1_000_003)
        await run_load(
            server.host,
            server.port,
            warm,
            concurrency=workload.concurrency,
            requests=2 * workload.concurrency,
            duration=min(2.0, duration),
            timeout=settings.timeout,
        )
        progress.phase(label, duration)
        t_start = sampler.now()
        before = server.stat()
        if settings.client == "wrk":
            await _drive_wrk(server, body_deck, workload, settings, case.load)
        else:
            plan = Plan(body_deck, seed)
            conc = settings.connections or workload.concurrency
            load_workload = workload if conc == workload.concurrency else _with(workload, conc)
            await drive(
                server, plan, load_workload, settings, case.load, progress=progress, label=label
            )
        after = server.stat()
        if before is not None and after is not None and case.load.completed > 0:
            delta = after - before
            case.faults_per_request = delta.minflt / case.load.completed
            case.cpu_us_per_request = delta.cpu * 1e6 / case.load.completed
        case.rss_end = sampler.sample().get(mode.name)
        case.load_window = (t_start, sampler.now())
    except BaseException:
        sampler.stop()
        server.stop()
        raise

    async def finish() -> None:
        try:
            if idle > 0:
                await asyncio.sleep(idle)  # the idle wait is the measurement
            case.rss_idle = sampler.sample().get(mode.name) if idle > 0 else case.rss_end
        finally:
            sampler.stop()
            # In a thread: the next case may be under load on this event loop.
            await asyncio.to_thread(server.stop)
            _fill_rss(case, sampler, mode.name)

    if background is None:
        if idle > 0:
            progress.phase(f"{label}: idle", idle)
        await finish()
    else:
        background.append(asyncio.ensure_future(finish()))
    _fill_rss(case, sampler, mode.name)
    return case


def _with(workload: Workload, concurrency: int) -> Workload:
    return Workload(
        workload.name, workload.min_size, workload.max_size, workload.distribution, concurrency
    )


async def _drive_wrk(
    server: Server,
    deck: Sequence[Body],
    workload: Workload,
    settings: RunSettings,
    result: LoadResult,
) -> None:
    """One wrk run of ``settings.duration`` seconds; its counts go into ``result``."""
    with deck_files(deck) as (script, bodies):
        wrk = await run_wrk(
            server.port,
            script,
            bodies,
            duration=settings.duration,
            connections=settings.connections or workload.concurrency,
            timeout=settings.timeout,
        )
    wrk.into(result)


async def run_matrix(
    modes: Sequence[Mode],
    workloads: Sequence[Workload],
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> list[CaseResult]:
    """Every mode x workload, ``repeats`` times; the same seed for every mode."""
    progress = progress or Progress()
    decks = {w.name: w.deck(settings.seed) for w in workloads}
    cases: list[CaseResult] = []
    background: list[asyncio.Task[None]] = []
    try:
        for repeat in range(repeats):
            shift = repeat % max(1, len(modes))
            order = [*modes[shift:], *modes[:shift]]
            for workload in workloads:
                for mode in order:
                    # At most one server idles in the background while the next is loaded.
                    await _drain(background, keep=1)
                    try:
                        case = await run_case(
                            mode,
                            workload,
                            settings=settings,
                            repeat=repeat,
                            progress=progress,
                            deck=decks[workload.name],
                            background=background,
                        )
                    except RuntimeError as exc:  # a server that would not start
                        progress.note(f"{mode.name}/{workload.name}: {exc}")
                        continue
                    cases.append(case)
        if background:
            progress.phase("waiting for the last idle reading", settings.idle)
        await _drain(background, keep=0)
    finally:
        for task in background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*background, return_exceptions=True)
    return cases


async def _drain(tasks: list[asyncio.Task[None]], *, keep: int) -> None:
    while len(tasks) > keep:
        await tasks.pop(0)


def measure_matrix(
    modes: Sequence[Mode],
    workloads: Sequence[Workload],
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> tuple[list[CaseResult], list[dict[str, Any]]]:
    """:func:`run_matrix` from synchronous code, and its :func:`summarize`d rows.

    A SIGTERM stops the servers and raises KeyboardInterrupt, as Ctrl-C does.
    """
    with sigterm_interrupts():
        cases = asyncio.run(
            run_matrix(modes, workloads, settings=settings, repeats=repeats, progress=progress)
        )
    return cases, summarize(cases)


def summarize(cases: Sequence[CaseResult], *, baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per (workload, mode): medians over repeats and ratios to ``baseline``."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for case in cases:
        groups.setdefault((case.workload, case.mode), []).append(case)
    rows: list[dict[str, Any]] = []
    for (workload, mode), group in groups.items():
        rows.append(
            {
                "workload": workload,
                "mode": mode,
                "runs": len(group),
                "rps": rounded(median(c.load.rps for c in group), 1),
                "p50_ms": rounded(median(c.load.percentile_ms(50) for c in group), 3),
                "p99_ms": rounded(median(c.load.percentile_ms(99) for c in group), 3),
                "rss_peak": rounded(median(c.rss_peak for c in group)),
                "rss_steady": rounded(median(c.rss_steady for c in group)),
                "rss_end": rounded(median(c.rss_end for c in group)),
                "rss_idle": rounded(median(c.rss_idle for c in group)),
                "ok": sum(c.load.ok for c in group),
                "shed": sum(c.load.shed for c in group),
                "errors": sum(c.load.errors for c in group),
                "corrupt": sum(c.load.corrupt for c in group),
            }
        )
    by_key = {(r["workload"], r["mode"]): r for r in rows}
    for row, (_, group) in zip(rows, groups.items(), strict=True):
        row["faults_per_request"] = rounded(median(c.faults_per_request for c in group), 2)
        row["cpu_us_per_request"] = rounded(median(c.cpu_us_per_request for c in group), 1)
        base = by_key.get((row["workload"], baseline))
        for key in ("rps", "p99_ms", "rss_peak", "rss_steady", "rss_idle"):
            row[f"{key}_vs_{baseline}"] = ratio(row[key], base[key]) if base else None
        # like for like: the same decoder without arenapool (arenapool-msgspec: msgspec)
        same = baseline_of(row["mode"])
        twin = by_key.get((row["workload"], same))
        row["same_decoder"] = same if twin is not None else None
        for key in ("rps", "rss_steady", "rss_idle"):
            row[f"{key}_vs_same"] = ratio(row[key], twin[key]) if twin else None
    return rows
