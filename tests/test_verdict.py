"""The verdict on a series of breakdowns (arenapool._verdict.classify), on contrived series."""

from __future__ import annotations

from collections.abc import Callable

from arenapool._breakdown import PARTS
from arenapool._verdict import KINDS, classify

MiB = 1024 * 1024

Series = list[tuple[float, dict[str, int]]]


def _series(points: int, **moving: Callable[[int], int]) -> Series:
    """``points`` readings one second apart: a 60 MiB process at rest, plus ``moving``."""
    base = dict.fromkeys(PARTS, 0)
    base.update(code_and_libs=20 * MiB, python_in_use=20 * MiB, c_heap_in_use=10 * MiB)
    base.update(python_free=2 * MiB, c_heap_free=2 * MiB, stacks=MiB, unexplained=MiB)
    out: Series = []
    for i in range(points):
        parts = dict(base)
        for name, fn in moving.items():
            parts[name] += fn(i)
        out.append((1000.0 + i, parts))
    return out


def _noise(i: int) -> int:
    return ((i * 7919) % 13 - 6) * 64 * 1024  # +-384 KiB, deterministic


def test_growing_python_objects_are_live_growth() -> None:
    """Python objects in use growing 100 KiB a second for 10 minutes is live growth."""
    verdict = classify(_series(600, python_in_use=lambda i: i * 100 * 1024 + _noise(i)))
    assert "live_growth" == verdict.kind
    assert verdict.changes["python_in_use"] > 40 * MiB
    assert "census" in (verdict.action or "")


def test_free_c_heap_growing_alone_is_retention_with_a_trim() -> None:
    """Free-but-held C heap growing while in-use stays flat is retention; in a process
    with one malloc heap the action is the governor's trim."""
    verdict = classify(_series(600, c_heap_free=lambda i: i * 64 * 1024, python_in_use=_noise))
    assert "retention" == verdict.kind
    assert "Governor" in (verdict.action or "")
    assert "MALLOC_ARENA_MAX" not in verdict.action


def test_retention_in_thread_heaps_names_malloc_arena_max() -> None:
    """The same retention, with per-thread malloc heaps holding most of the C heap,
    names MALLOC_ARENA_MAX; with the main heap holding most, it does not."""
    series = _series(600, c_heap_free=lambda i: i * 64 * 1024)
    assert "MALLOC_ARENA_MAX" not in (classify(series, thread_heaps=8).action or "")
    verdict = classify(series, thread_heaps=8, thread_heap_share=0.7)
    assert "retention" == verdict.kind
    assert "MALLOC_ARENA_MAX=2" in (verdict.action or "")


def test_pymalloc_retention_names_the_pool_release() -> None:
    """pymalloc's free part growing is retention that malloc_trim does not reach; the
    action names what does (the release of its empty pools)."""
    verdict = classify(_series(600, python_free=lambda i: i * 64 * 1024))
    assert "retention" == verdict.kind
    assert "malloc_trim does not reach" in (verdict.action or "")
    assert "release_pymalloc" in (verdict.action or "")


def test_idle_slabs_that_stay_committed_are_named() -> None:
    """64 MiB of idle slab blocks committed through the last quarter is idle_slabs."""
    verdict = classify(_series(600, slabs_idle=lambda i: 64 * MiB))
    assert "idle_slabs" == verdict.kind
    assert "decay" in (verdict.action or "")


def test_a_spike_and_noise_are_steady() -> None:
    """Noise and one 200 MiB spike in the middle move no median: steady."""

    def spike(i: int) -> int:
        return 200 * MiB if i == 300 else _noise(i)

    verdict = classify(_series(600, c_heap_in_use=spike, python_in_use=_noise))
    assert "steady" == verdict.kind
    assert verdict.action is None


def test_growth_nobody_reports_is_unexplained_growth() -> None:
    """unexplained growing while the allocators' parts stay flat is its own verdict."""
    verdict = classify(_series(600, unexplained=lambda i: i * 64 * 1024))
    assert "unexplained_growth" == verdict.kind


def test_only_the_window_counts() -> None:
    """Growth older than the window is not in the verdict."""
    series = _series(1200, python_in_use=lambda i: min(i, 600) * 100 * 1024)
    assert "steady" == classify(series, window=300).kind
    assert "live_growth" == classify(series, window=1200).kind


def test_too_few_points_are_unknown() -> None:
    """Three readings are not a trend."""
    assert "unknown" == classify(_series(3)).kind
    assert "unknown" == classify([]).kind


def test_every_kind_is_listed_and_as_dict_is_plain() -> None:
    """as_dict() is JSON-ready and its kind is one of KINDS."""
    data = classify(_series(60)).as_dict()
    assert data["kind"] in KINDS
    assert {"kind", "summary", "action", "changes", "window", "points", "threshold"} == set(data)


def test_held_growth_twice_the_live_growth_is_retention() -> None:
    """A fragmented heap: 80 MiB more free-but-held while the chunks pinning it grow by
    12 MiB is retention, not live growth."""
    verdict = classify(
        _series(
            600,
            c_heap_free=lambda i: i * 140 * 1024,
            c_heap_in_use=lambda i: i * 20 * 1024,
        )
    )
    assert "retention" == verdict.kind
