"""What every kind of run shares: the progress hooks, the settings, driving and idling.

:func:`drive` loads one server with a plan while ticking a :class:`Progress`;
:func:`idle_for` waits without traffic, ticking too. :class:`RunSettings` holds the
traffic's seed and bounds and the servers' setup for one command.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from .loadgen import LoadResult, run_load
from .modes import Mode
from .server import Server
from .workload import Plan, Workload

__all__ = [
    "BENCH_SETTINGS",
    "DEMO_SETTINGS",
    "SOAK_SETTINGS",
    "Progress",
    "RunSettings",
    "drive",
    "idle_for",
]


class Progress:
    """Hooks a front end implements to show progress. The base class shows nothing."""

    def note(self, text: str) -> None:
        """A line worth showing (a skipped mode, a server that failed)."""

    def phase(self, label: str, total: float) -> None:
        """A new phase of ``total`` seconds starts (a case, a demo slice, an idle wait)."""

    def tick(self, label: str, elapsed: float, result: LoadResult | None) -> None:
        """Called about four times a second while a phase runs."""


@dataclass(frozen=True)
class RunSettings:
    """What the runs of one command share: the traffic's seed and bounds, the servers.

    The load stops after ``duration`` seconds or ``requests`` requests, whichever comes
    first; ``idle`` is the wait without traffic before the last RSS reading and
    ``timeout`` the limit per request. Every server started gets ``budget``, ``limit``
    and ``governor`` and writes its log into ``log_dir`` (default: the temp directory).
    ``client`` is the load client of the measured load (``python``: :mod:`harness.loadgen`,
    which checks every answer; ``wrk``: :mod:`harness.wrk`, bounded by ``duration``
    only), with ``connections`` in flight (default: the workload's concurrency).
    """

    seed: int = 1
    duration: float = 10.0
    requests: int = 1_000_000
    idle: float = 15.0
    timeout: float = 30.0
    budget: str = "256MiB"
    limit: str = "8MiB"
    governor: bool = True
    log_dir: Path | None = None
    client: str = "python"  # or "wrk" (the load of a bench case; warm-ups stay Python)
    connections: int | None = None  # in flight per server; None: the workload's

    def server(self, mode: Mode) -> Server:
        """A server for ``mode`` with these settings, not started yet."""
        return Server(
            mode,
            budget=self.budget,
            limit=self.limit,
            governor=self.governor,
            log_dir=self.log_dir,
        )


BENCH_SETTINGS = RunSettings()  # one case of the matrix
DEMO_SETTINGS = RunSettings(duration=70.0, requests=10_000_000)  # both servers together
SOAK_SETTINGS = RunSettings(duration=600.0, requests=100_000_000)


async def drive(
    server: Server,
    plan: Plan,
    workload: Workload,
    settings: RunSettings,
    result: LoadResult | None = None,
    *,
    progress: Progress,
    label: str,
    requests: int | None = None,
    duration: float | None = None,
) -> LoadResult:
    """Load ``server`` with ``plan`` while ticking ``progress``; counts go into ``result``.

    ``requests`` and ``duration`` bound this load; by default the settings' bounds.
    """
    res = result if result is not None else LoadResult()
    load = asyncio.ensure_future(
        run_load(
            server.host,
            server.port,
            plan,
            concurrency=workload.concurrency,
            requests=settings.requests if requests is None else requests,
            duration=settings.duration if duration is None else duration,
            timeout=settings.timeout,
            result=res,
        )
    )
    start = time.monotonic()
    try:
        while not load.done():
            progress.tick(label, time.monotonic() - start, res)
            await asyncio.wait([load], timeout=0.25)
    finally:
        if not load.done():  # we were cancelled: do not leave the load running
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    return load.result()


async def idle_for(seconds: float, progress: Progress, label: str) -> None:
    progress.phase(label, seconds)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        progress.tick(label, seconds - left, None)
        await asyncio.sleep(min(0.25, left))  # the idle wait is the measurement
