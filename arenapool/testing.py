"""Test helpers for suites that use arenapool: leak assertions and growth checks.

Three tools, usable from any test runner (only :func:`slab_pool_fixture` needs pytest):

- :func:`assert_no_leaks` checks that a :class:`~arenapool.SlabPool` or
  :class:`~arenapool.ObjectPool` is back to idle: nothing lent or in use, nothing
  quarantined, no arena open, nobody waiting. Call it at the end of a test::

      with pool.arena() as arena:
          handle(arena)
      assert_no_leaks(pool)

- :func:`check_no_growth` runs a function many times in this process and reports how
  much the number of live objects and the RSS grew (the check multidict's leak tests
  do; run it in a subprocess so other tests do not add noise)::

      report = check_no_growth(one_request, cycles=10_000, warmup=1_000)

- :func:`slab_pool_fixture` builds a pytest fixture that yields a fresh pool and
  asserts no leaks at teardown. In a ``conftest.py``::

      from arenapool.testing import slab_pool_fixture

      slab_pool = slab_pool_fixture(budget="64MiB", decay=None)
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from ._objectpool import ObjectPool
from ._slabpool import SlabPool
from ._units import format_size, parse_size

__all__ = [
    "GrowthReport",
    "assert_no_leaks",
    "check_no_growth",
    "slab_pool_fixture",
]

#: Stats of a SlabPool that must be zero when nothing is lent.
_SLAB_IDLE_KEYS: tuple[str, ...] = (
    "lent_blocks",
    "lent_bytes",
    "quarantined_blocks",
    "quarantined_bytes",
    "waiting",
    "arenas_open",
)
#: Stats of an ObjectPool that must be zero when nothing is out.
_OBJECT_IDLE_KEYS: tuple[str, ...] = ("in_use", "waiting")


def assert_no_leaks(pool: SlabPool | ObjectPool[Any], *, collect: bool = True) -> None:
    """Raise ``AssertionError`` unless ``pool`` is back to idle.

    For a :class:`~arenapool.SlabPool`: no block lent, none quarantined (a view that
    escaped its arena), no arena open, no ``lend_async`` waiting. For an
    :class:`~arenapool.ObjectPool`: no object out, nobody waiting. With ``collect``
    (the default) a ``gc.collect()`` runs first, so views and arenas that are merely
    garbage in a reference cycle do not count (an arena that was never released then
    warns with ``ResourceWarning`` and gives its blocks back, as in production).

    The message lists the figures that are off and the pool's full stats; for an
    ObjectPool it adds where the objects still out were acquired (recorded with
    ``leak_detection="full"``).
    """
    checked: object = pool  # untyped callers may pass anything
    if not isinstance(checked, SlabPool | ObjectPool):
        msg = f"assert_no_leaks() takes a SlabPool or an ObjectPool, got {pool!r}"
        raise TypeError(msg)
    if collect:
        gc.collect()
    stats = pool.stats()
    keys = _SLAB_IDLE_KEYS if isinstance(pool, SlabPool) else _OBJECT_IDLE_KEYS
    kind = type(pool).__name__
    off = [f"{key}={stats[key]!r} (expected 0)" for key in keys if stats[key]]
    if not off:
        return
    lines = [
        f"{kind} {stats['name']!r} is not idle: {', '.join(off)}",
        f"stats: {json.dumps(stats, sort_keys=True)}",
    ]
    if isinstance(pool, ObjectPool):
        lines.extend(f"acquired at:\n{stack}" for stack in pool.outstanding())
    raise AssertionError("\n".join(lines))


@dataclass(frozen=True)
class GrowthReport:
    """What :func:`check_no_growth` measured (after ``gc.collect()`` both times)."""

    cycles: int
    objects_before: int
    objects_after: int
    rss_before: int
    rss_after: int

    @property
    def object_growth(self) -> int:
        """Live GC-tracked objects gained over the measured cycles."""
        return self.objects_after - self.objects_before

    @property
    def rss_growth(self) -> int:
        """Resident set size gained over the measured cycles, in bytes."""
        return self.rss_after - self.rss_before

    def as_dict(self) -> dict[str, int]:
        """The figures as a JSON-serialisable dict (growths included)."""
        return {
            "cycles": self.cycles,
            "objects_before": self.objects_before,
            "objects_after": self.objects_after,
            "object_growth": self.object_growth,
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
            "rss_growth": self.rss_growth,
        }

    def __str__(self) -> str:
        return (
            f"{self.cycles} cycles: objects {self.objects_before} -> {self.objects_after} "
            f"({self.object_growth:+d}), RSS {format_size(self.rss_before)} -> "
            f"{format_size(self.rss_after)} ({format_size(self.rss_growth)})"
        )


def check_no_growth(
    fn: Callable[[], object],
    *,
    cycles: int = 1000,
    warmup: int = 100,
    max_object_growth: int | None = 100,
    max_rss_growth: int | str | None = "4MiB",
) -> GrowthReport:
    """Call ``fn()`` ``warmup`` times, then ``cycles`` times, and measure the growth.

    Counts ``len(gc.get_objects())`` and reads the RSS of this process after the
    warm-up and after the measured cycles (each after ``gc.collect()``). Raises
    ``AssertionError`` (showing the report) when the object count grew by more than
    ``max_object_growth`` or the RSS by more than ``max_rss_growth`` (an int or a size
    such as ``"4MiB"``); pass ``None`` to only measure. Returns the
    :class:`GrowthReport` either way.

    The warm-up lets caches, interned strings and the allocator settle: compare steady
    states, not a cold start. Other threads and earlier tests add noise, so run this in
    a subprocess when the tolerances are tight.
    """
    if cycles < 1 or warmup < 0:
        msg = f"cycles must be at least 1 and warmup zero or more, got {cycles!r}, {warmup!r}"
        raise ValueError(msg)
    rss_limit = (
        None if max_rss_growth is None else parse_size(max_rss_growth, name="max_rss_growth")
    )
    process = psutil.Process()
    for _ in range(warmup):
        fn()
    gc.collect()
    objects_before = len(gc.get_objects())
    rss_before = int(process.memory_info().rss)
    for _ in range(cycles):
        fn()
    gc.collect()
    objects_after = len(gc.get_objects())
    rss_after = int(process.memory_info().rss)
    report = GrowthReport(cycles, objects_before, objects_after, rss_before, rss_after)
    problems = []
    if max_object_growth is not None and report.object_growth > max_object_growth:
        problems.append(f"object count grew by more than {max_object_growth}")
    if rss_limit is not None and report.rss_growth > rss_limit:
        problems.append(f"RSS grew by more than {format_size(rss_limit)}")
    if problems:
        msg = f"{'; '.join(problems)}: {report}"
        raise AssertionError(msg)
    return report


def slab_pool_fixture(*, scope: str = "function", **pool_kwargs: Any) -> Any:
    """A pytest fixture yielding a new :class:`~arenapool.SlabPool(**pool_kwargs)`.

    At teardown it asserts :func:`assert_no_leaks` and closes the pool (closing it
    even when the assertion fails). The fixture takes the name of the variable it is
    assigned to in a test module or ``conftest.py``::

        slab_pool = slab_pool_fixture(budget="16MiB", decay=None)

        def test_handler(slab_pool):
            with slab_pool.arena() as arena:
                ...
    """
    try:
        import pytest  # noqa: PLC0415 - only this helper needs pytest
    except ImportError as exc:  # pragma: no cover - pytest is there when fixtures are
        msg = "arenapool.testing.slab_pool_fixture needs pytest: pip install pytest"
        raise ImportError(msg) from exc

    def _slab_pool() -> Iterator[SlabPool]:
        pool = SlabPool(**pool_kwargs)
        try:
            yield pool
            assert_no_leaks(pool)
        finally:
            pool.close()

    return pytest.fixture(scope=scope)(_slab_pool)  # type: ignore[call-overload]
