"""Allocation sites on demand: tracemalloc on for a bounded window, then off again.

Theory of operation
-------------------
Tracing from start-up costs a server its speed for its whole life (several times
slower per allocation, even at one frame). A :class:`Tracer` turns ``tracemalloc`` on
for ``seconds`` only: it starts tracing with ``frames`` frames, takes a (nearly empty)
baseline snapshot, sleeps on the event loop, takes the end snapshot and stops tracing
at once, so after the window the overhead is exactly zero (``tracemalloc.stop()``
also frees every trace). The end snapshot holds only what was allocated during the
window and is still alive: the growth sites. Grouping it (``compare_to``, pure Python)
runs in a worker thread.

Rules: one window at a time and at most one per ``min_interval`` seconds (like the
census); ``seconds`` and ``frames`` are capped; a window is refused while tracemalloc
is already on for someone else (``python -X tracemalloc``), whose tracing we must
neither stop nor reset. A cancelled window stops tracing too. The snapshot copies the
traces while holding the GIL: a window that saw millions of live allocations stalls
the loop for that copy.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import tracemalloc
from typing import Any, Final

from ._errors import ArenaPoolError

__all__ = ["TraceRateLimited", "TraceUnavailable", "Tracer", "top_sites"]

_IGNORED: Final = (tracemalloc.__file__, asyncio.__file__.rsplit(os.sep, 1)[0] + os.sep + "*")


class TraceRateLimited(ArenaPoolError, RuntimeError):
    """A trace window ran too recently or is running; ``retry_after`` says when to retry."""

    status_hint = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TraceUnavailable(ArenaPoolError, RuntimeError):
    """tracemalloc is already on for someone else, or the request is out of bounds."""

    status_hint = 409


def top_sites(
    end: tracemalloc.Snapshot, start: tracemalloc.Snapshot, *, top: int
) -> list[dict[str, Any]]:
    """The ``top`` sites (by bytes grown) of ``end`` against ``start``, as dicts."""
    filters = [tracemalloc.Filter(False, pattern) for pattern in _IGNORED]
    filters.append(tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"))
    end = end.filter_traces(filters)
    start = start.filter_traces(filters)
    key = "traceback" if end.traceback_limit > 1 else "lineno"
    rows = []
    for stat in end.compare_to(start, key):
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[-1]  # a Traceback runs oldest first
        rows.append(
            {
                "site": f"{frame.filename}:{frame.lineno}",
                "size_diff": stat.size_diff,
                "count_diff": stat.count_diff,
                "size": stat.size,
                "count": stat.count,
                "traceback": [f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback)],
            }
        )
        if len(rows) >= top:
            break
    return rows


class Tracer:
    """Run bounded tracemalloc windows, at most one per ``min_interval`` seconds.

    Each result is a dict: ``seconds`` and ``frames`` (as run), ``started`` (wall
    time), ``traced_peak`` (the most bytes tracemalloc saw alive at once during the
    window), ``top`` (list of ``{site, size_diff, count_diff, size, count,
    traceback}``, largest growth first; ``site`` is the allocating line, ``traceback``
    runs from it outwards), ``tracing_after`` (always ``False``).
    """

    def __init__(
        self,
        *,
        min_interval: float = 60.0,
        max_seconds: float = 60.0,
        max_frames: int = 25,
        top: int = 15,
    ) -> None:
        self.min_interval = min_interval
        self.max_seconds = max_seconds
        self.max_frames = max_frames
        self.top = top
        self.last: dict[str, Any] | None = None
        self._started = -float("inf")
        self._running = False

    @property
    def running(self) -> bool:
        """True while a window is open."""
        return self._running

    def _check(self, seconds: float, frames: int) -> None:
        if not 0 < seconds <= self.max_seconds:
            msg = f"seconds must be above 0 and at most {self.max_seconds:g}, got {seconds!r}"
            raise TraceUnavailable(msg)
        if not 1 <= frames <= self.max_frames:
            msg = f"frames must be 1 to {self.max_frames}, got {frames!r}"
            raise TraceUnavailable(msg)
        if self._running:
            msg = "a trace window is already open; retry when it ends"
            raise TraceRateLimited(msg, retry_after=max(1.0, seconds))
        wait = self._started + self.min_interval - time.monotonic()
        if wait > 0:
            msg = f"trace rate limited: one per {self.min_interval:g} s, retry in {wait:.1f} s"
            raise TraceRateLimited(msg, retry_after=wait)
        if tracemalloc.is_tracing():
            msg = (
                "tracemalloc is already on (python -X tracemalloc or PYTHONTRACEMALLOC); "
                "a window would stop it: take snapshots with tracemalloc directly"
            )
            raise TraceUnavailable(msg)

    async def run(self, seconds: float, frames: int = 1) -> dict[str, Any]:
        """Trace allocations for ``seconds`` with ``frames`` frames; return the sites.

        Raises :class:`TraceRateLimited` (429) or :class:`TraceUnavailable` (409).
        Tracing is off again when this returns, raises or is cancelled.
        """
        self._check(seconds, frames)
        self._running = True
        self._started = time.monotonic()
        wall = time.time()
        try:
            tracemalloc.start(frames)
            try:
                start = tracemalloc.take_snapshot()
                await asyncio.sleep(seconds)
                end = tracemalloc.take_snapshot()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            loop = asyncio.get_running_loop()
            grouping = functools.partial(top_sites, end, start, top=self.top)
            del start, end
            rows = await loop.run_in_executor(None, grouping)
            del grouping
        finally:
            self._running = False
        result = {
            "seconds": seconds,
            "frames": frames,
            "started": wall,
            "traced_peak": peak,
            "top": rows,
            "tracing_after": tracemalloc.is_tracing(),
        }
        self.last = result
        return result
