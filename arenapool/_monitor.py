"""A memory monitor: the breakdown sampled in the background, kept as history, judged.

Theory of operation
-------------------
A :class:`MemoryMonitor` owns a daemon thread that takes one breakdown
(:func:`arenapool._breakdown.read_breakdown`) every ``interval`` seconds and appends its
parts to a bounded :class:`~arenapool._history.History`. The reading runs in that
thread, never on an event loop: its ``smaps`` read (a millisecond or more, the kernel
walking the page tables) releases the GIL, and only the parsing and pymalloc's walk
hold it. The thread holds no lock of its own across a reading; the history has its
own lock, and ``last`` is swapped in one assignment.

State: ``last`` (the newest :class:`~arenapool._breakdown.Breakdown`), the history, and
the thread with its stop event. ``start`` is idempotent; ``stop`` joins the thread.
:meth:`verdict` classifies the history's last ``window`` seconds on demand (a pure
function of the points; see :mod:`arenapool._verdict`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._breakdown import PARTS, Breakdown, SlabSource, read_breakdown
from ._history import History
from ._registry import slab_pools as all_slab_pools
from ._verdict import Verdict, classify

__all__ = ["HISTORY_FIELDS", "MemoryMonitor"]

#: What each history point holds: the RSS and every breakdown part (bytes).
HISTORY_FIELDS = ("rss", *PARTS)

PoolsSource = Iterable[SlabSource] | Callable[[], Iterable[SlabSource]] | None


class MemoryMonitor:
    """Sample the RSS breakdown every ``interval`` seconds into a bounded history.

    Args:
        interval: seconds between readings (one per second by default).
        pools: the slab pools to account, an iterable or a callable returning one;
            ``None`` means every live pool in the process.
        window: seconds of history :meth:`verdict` judges by default.
        fine_points, coarse_interval, coarse_points: the history's shape (an hour of
            seconds, then a day of minutes, by default; see :class:`History`).
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        pools: PoolsSource = None,
        window: float = 600.0,
        fine_points: int = 3600,
        coarse_interval: float = 60.0,
        coarse_points: int = 1440,
    ) -> None:
        if interval <= 0:
            msg = f"interval must be positive seconds, got {interval!r}"
            raise ValueError(msg)
        self.interval = interval
        self.window = window
        self.pools = pools
        self.history = History(
            HISTORY_FIELDS,
            fine_points=fine_points,
            coarse_interval=coarse_interval,
            coarse_points=coarse_points,
            peak_field="rss",
        )
        self.last: Breakdown | None = None
        self.readings = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MemoryMonitor {state} every {self.interval:g} s [{self.history!r}]>"

    @property
    def running(self) -> bool:
        """True while the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _pools(self) -> list[SlabSource]:
        if self.pools is None:
            return list(all_slab_pools())
        return list(self.pools() if callable(self.pools) else self.pools)

    def sample(self) -> Breakdown:
        """Take one reading now, add it to the history and return it (any thread)."""
        reading = read_breakdown(self._pools())
        now = time.time()
        self.history.add(now, {"rss": reading.rss, **reading.parts})
        self.last = reading
        self.readings += 1
        return reading

    def start(self) -> None:
        """Start sampling in a daemon thread (no-op when already running)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="arenapool-memory-monitor", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.sample()
            except Exception:  # a reading must never kill the monitor
                self.failures += 1
            if self._stop.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return

    def verdict(self, window: float | None = None) -> Verdict:
        """Classify the last ``window`` seconds (default: the monitor's) of history."""
        span = self.window if window is None else window
        points = self.history.points(since=time.time() - span - self.interval)
        details = self.last.details if self.last is not None else {}
        heap = int(details.get("buckets", {}).get("heap", 0))
        share = int(details.get("thread_heap_bytes", 0)) / heap if heap else 0.0
        return classify(
            points,
            window=span,
            thread_heaps=int(details.get("thread_heaps", 0)),
            thread_heap_share=share,
        )

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable summary: the newest breakdown, the verdict, the costs."""
        last = self.last
        return {
            "interval": self.interval,
            "running": self.running,
            "readings": self.readings,
            "failures": self.failures,
            "history_points": len(self.history),
            "history_bytes": self.history.nbytes,
            "breakdown": None if last is None else last.as_dict(),
            "verdict": self.verdict().as_dict(),
        }
