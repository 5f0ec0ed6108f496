"""The background memory monitor: breakdowns sampled into history, and judged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _memhelpers import poll_until

from arenapool import SlabPool
from arenapool._monitor import HISTORY_FIELDS, MemoryMonitor


async def test_the_thread_fills_the_history_until_stopped() -> None:
    """A running monitor adds one point per interval; each point's parts sum to its RSS;
    stop() ends the thread."""
    pool = SlabPool("4MiB", decay=None)
    monitor = MemoryMonitor(interval=0.05, pools=[pool])
    monitor.start()
    try:

        async def five() -> bool:
            return len(monitor.history) >= 5

        await poll_until(five, timeout=30, what="five readings")
    finally:
        monitor.stop()
        pool.close()
    assert monitor.running is False
    assert 0 == monitor.failures
    points = monitor.history.points()
    assert len(points) >= 5
    for _, values in points:
        assert values["rss"] == sum(values[k] for k in HISTORY_FIELDS[1:])
    stats = monitor.stats()
    assert stats["breakdown"]["rss"] == sum(stats["breakdown"]["parts"].values())
    assert stats["history_bytes"] == monitor.history.nbytes


def test_growing_objects_between_readings_give_live_growth(
    run_python: Callable[..., Any],
) -> None:
    """Readings taken while a process keeps 10 MiB more objects each time judge as
    live growth, and the verdict names the parts that grew."""
    code = """
import json
from arenapool._monitor import MemoryMonitor
monitor = MemoryMonitor(pools=[])
keep = []
for step in range(12):
    keep.append([{"step": step, "i": i} for i in range(40_000)])
    monitor.sample()
print(json.dumps(monitor.verdict(window=3600).as_dict()))
"""
    verdict = run_python(code)
    assert "live_growth" == verdict["kind"]
    assert verdict["changes"]["python_in_use"] > 0
