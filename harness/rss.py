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

from .server import Server

__all__ = ["RssSampler", "least_squares", "rss_under_load", "steady_rss"]


class RssSampler(threading.Thread):
    """Reads the RSS of some servers every ``interval`` seconds into ``samples``.

    ``samples[name]`` is a list of ``(seconds since t0, bytes)``. A thread rather than
    an asyncio task so the readings stay on time while the event loop is busy
    sending load.
    """

    def __init__(
        self, servers: Mapping[str, Server], *, interval: float = 0.2, t0: float | None = None
    ) -> None:
        super().__init__(name="arenapool-rss-sampler", daemon=True)
        self.servers = dict(servers)
        self.interval = interval
        self.t0 = time.monotonic() if t0 is None else t0
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in servers}
        self._stop_event = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> dict[str, int]:
        """Take one reading of every server now (also recorded in ``samples``)."""
        t = self.now()
        reading = {}
        for name, server in self.servers.items():
            rss = server.rss()
            if rss is not None:
                self.samples[name].append((t, rss))
                reading[name] = rss
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
