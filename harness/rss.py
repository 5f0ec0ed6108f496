"""Reading servers' memory: an RSS sampler thread and what the readings come to.

Every number is a psutil reading of a server's process tree (:meth:`Server.rss
<harness.server.Server.rss>`), never an estimate. The sampler is a thread rather than an
asyncio task so the readings stay on time while the event loop is busy sending load.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from arenapool.memory import read_buckets

from .server import Server

__all__ = ["RssSampler", "buckets_of", "least_squares", "rss_under_load", "steady_rss"]


def buckets_of(server: Server) -> dict[str, int] | None:
    """The server's RSS by ``smaps`` bucket (``arenapool.memory.read_buckets``),
    summed over its process tree; ``None`` when no process could be read."""
    total: dict[str, int] | None = None
    for pid in server.pids():
        try:
            parts = read_buckets(pid)
        except OSError:  # a recycled worker may be gone
            continue
        if total is None:
            total = dict.fromkeys(parts, 0)
        for name, nbytes in parts.items():
            total[name] += nbytes
    return total


class RssSampler(threading.Thread):
    """Reads the RSS of some servers every ``interval`` seconds into ``samples``.

    ``samples[name]`` is a list of ``(seconds since t0, bytes)``. A thread rather than
    an asyncio task so the readings stay on time while the event loop is busy
    sending load. With ``buckets_every`` = k > 0, every k-th reading also walks each
    server's ``smaps`` into ``buckets[name]``, a list of ``(seconds, {bucket: bytes})``
    (:func:`buckets_of`: where the RSS is: C heap, other anonymous memory, files...).
    """

    def __init__(
        self,
        servers: Mapping[str, Server],
        *,
        interval: float = 0.2,
        t0: float | None = None,
        buckets_every: int = 0,
    ) -> None:
        super().__init__(name="arenapool-rss-sampler", daemon=True)
        self.servers = dict(servers)
        self.interval = interval
        self.t0 = time.monotonic() if t0 is None else t0
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in servers}
        self.buckets: dict[str, list[tuple[float, dict[str, int]]]] = {n: [] for n in servers}
        self.buckets_every = buckets_every
        self._readings = 0
        self._stop_event = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> dict[str, int]:
        """Take one reading of every server now (also recorded in ``samples``; on every
        ``buckets_every``-th reading, their buckets too)."""
        t = self.now()
        reading = {}
        self._readings += 1
        every = self.buckets_every
        walk = every > 0 and self._readings % every == 0
        for name, server in self.servers.items():
            rss = server.rss()
            if rss is not None:
                self.samples[name].append((t, rss))
                reading[name] = rss
            if walk and (parts := buckets_of(server)) is not None:
                self.buckets[name].append((t, parts))
        return reading

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5.0)


def steady_rss(values: Sequence[int]) -> int | None:
    """The median of the second half of the readings taken under load."""
    if not values:
        return None
    return int(statistics.median(values[len(values) // 2 :]))


def rss_under_load(
    samples: Sequence[tuple[float, int]], windows: Iterable[tuple[float, float]]
) -> dict[str, int | None]:
    """``rss_peak`` over all ``samples`` and ``rss_steady`` over those inside a window."""
    spans = list(windows)
    under_load = [rss for t, rss in samples if any(a <= t <= b for a, b in spans)]
    return {
        "rss_peak": max((rss for _, rss in samples), default=None),
        "rss_steady": steady_rss(under_load),
    }


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Slope and intercept of the least-squares line through ``points`` (None if < 2)."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx
