"""Bounded tracemalloc windows (arenapool._trace.Tracer)."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from arenapool._trace import Tracer, TraceRateLimited, TraceUnavailable

kept: list[bytes] = []


async def _allocate_until(stop: asyncio.Event) -> None:
    while not stop.is_set():
        kept.append(bytes(4096))  # THE_ALLOCATING_LINE
        await asyncio.sleep(0)


async def test_the_top_site_is_the_line_that_allocates() -> None:
    """A window over a task that keeps allocating reports that line first, and
    tracemalloc is off again afterwards."""
    assert tracemalloc.is_tracing() is False
    stop = asyncio.Event()
    task = asyncio.create_task(_allocate_until(stop))
    try:
        result = await Tracer(min_interval=0).run(0.3, frames=3)
    finally:
        stop.set()
        await task
        kept.clear()
    assert tracemalloc.is_tracing() is False
    assert result["tracing_after"] is False
    top = result["top"][0]
    assert top["site"].endswith(f"test_trace.py:{_line_of('THE_ALLOCATING_LINE')}")
    assert top["size_diff"] >= 4096 * 10
    assert 3 >= len(top["traceback"])


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        for number, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return number
    raise AssertionError(marker)


async def test_windows_are_rate_limited() -> None:
    """A second window within min_interval is refused with retry_after."""
    tracer = Tracer(min_interval=3600)
    await tracer.run(0.01)
    with pytest.raises(TraceRateLimited) as info:
        await tracer.run(0.01)
    assert 429 == info.value.status_hint
    assert info.value.retry_after > 3500
    assert tracemalloc.is_tracing() is False


async def test_a_cancelled_window_stops_tracing() -> None:
    """Cancelling the window's task turns tracemalloc off."""
    task = asyncio.create_task(Tracer(min_interval=0).run(30))
    await asyncio.sleep(0)  # let the window open
    assert tracemalloc.is_tracing() is True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracemalloc.is_tracing() is False


async def test_someone_elses_tracing_is_left_alone() -> None:
    """With tracemalloc already on, a window is refused and tracing stays on."""
    tracemalloc.start()
    try:
        with pytest.raises(TraceUnavailable, match="already on"):
            await Tracer(min_interval=0).run(0.01)
        assert tracemalloc.is_tracing() is True
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("seconds", "frames"), [(0, 1), (61, 1), (1, 0), (1, 26)])
async def test_out_of_bounds_windows_are_refused(seconds: float, frames: int) -> None:
    """seconds in (0, max_seconds] and frames in [1, max_frames], else TraceUnavailable."""
    with pytest.raises(TraceUnavailable):
        await Tracer(min_interval=0).run(seconds, frames)
