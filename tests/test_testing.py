"""arenapool.testing: assert_no_leaks, check_no_growth and slab_pool_fixture."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arenapool import ObjectPool, SlabPool, ViewEscapedWarning
from arenapool.testing import GrowthReport, assert_no_leaks, check_no_growth

ROOT = Path(__file__).resolve().parent.parent


class Thing:
    pass


# -- assert_no_leaks ------------------------------------------------------------------


def test_idle_slab_pool_passes(pool: SlabPool) -> None:
    """A pool whose arenas were all released passes."""
    with pool.arena() as arena:
        arena.alloc(100)

    assert_no_leaks(pool)


def test_lent_block_fails_with_the_figures(pool: SlabPool) -> None:
    """A block still lent fails, naming the figures that are off and the stats."""
    block = pool.lend(4096)

    with pytest.raises(AssertionError) as info:
        assert_no_leaks(pool)

    text = str(info.value)
    assert "lent_blocks=1 (expected 0), lent_bytes=4096 (expected 0)" in text
    assert f"SlabPool {pool.name!r} is not idle" in text
    assert '"mapped_bytes": 262144' in text
    pool.give_back([block])


def test_open_arena_fails(pool: SlabPool) -> None:
    """An arena still open fails even if it holds no blocks."""
    arena = pool.arena()

    with pytest.raises(AssertionError, match=r"arenas_open=1 \(expected 0\)"):
        assert_no_leaks(pool)
    arena.release()


def test_quarantined_block_fails(pool: SlabPool) -> None:
    """A block quarantined by an escaped view fails."""
    arena = pool.arena()
    kept = arena.alloc(10)[:5]
    with pytest.warns(ViewEscapedWarning):
        arena.release()

    with pytest.raises(AssertionError, match=r"quarantined_blocks=1 \(expected 0\)"):
        assert_no_leaks(pool)
    del kept


async def test_waiters_fail(make_pool: Callable[..., SlabPool]) -> None:
    """A lend_async still waiting fails."""
    small = make_pool(budget="64KiB")
    held = small.lend(64 * 1024)
    task = asyncio.create_task(small.lend_async(4096, timeout=10))
    deadline = time.monotonic() + 5
    while small.stats()["waiting"] != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)

    with pytest.raises(AssertionError, match=r"waiting=1 \(expected 0\)"):
        assert_no_leaks(small)
    small.give_back([held])
    small.give_back([await task])


def test_garbage_arena_is_collected_first(pool: SlabPool) -> None:
    """An unreleased arena that is only garbage (a cycle) is collected before checking."""
    box: list[object] = [pool.arena()]
    box.append(box)
    del box

    with pytest.warns(ResourceWarning, match="never released"):
        assert_no_leaks(pool)


def test_without_collect_garbage_counts(pool: SlabPool) -> None:
    """With collect=False, an arena still in an uncollected cycle counts as open."""
    box: list[object] = [pool.arena()]
    box.append(box)
    del box

    with pytest.raises(AssertionError, match="arenas_open=1"):
        assert_no_leaks(pool, collect=False)
    with pytest.warns(ResourceWarning):
        assert_no_leaks(pool)


def test_object_pool_passes_when_all_returned() -> None:
    """An ObjectPool with nothing out passes."""
    objects = ObjectPool(Thing)
    with objects.borrow():
        pass

    assert_no_leaks(objects)


def test_object_pool_out_fails_with_stack() -> None:
    """An object still out fails, showing where it was acquired (full detection)."""
    objects = ObjectPool(Thing, leak_detection="full", name="things")
    thing = objects.acquire()

    with pytest.raises(AssertionError) as info:
        assert_no_leaks(objects)

    text = str(info.value)
    assert "ObjectPool 'things' is not idle: in_use=1 (expected 0)" in text
    assert "test_object_pool_out_fails_with_stack" in text
    objects.release(thing)


def test_rejects_other_objects() -> None:
    """Anything but a SlabPool or ObjectPool is a TypeError."""
    with pytest.raises(TypeError, match="SlabPool or an ObjectPool"):
        assert_no_leaks(object())  # type: ignore[arg-type]


# -- check_no_growth ------------------------------------------------------------------


def test_clean_function_reports_small_growth(pool: SlabPool) -> None:
    """A function that keeps nothing passes and reports its measurements."""

    def cycle() -> None:
        with pool.arena() as arena:
            arena.copy(b"x" * 100)

    report = check_no_growth(cycle, cycles=200, warmup=50)

    assert 200 == report.cycles
    assert report.object_growth <= 100
    assert report.objects_after - report.objects_before == report.object_growth


def test_object_leak_fails() -> None:
    """A function that keeps one object per call fails on object growth."""
    kept: list[object] = []

    with pytest.raises(AssertionError, match="object count grew by more than 100"):
        check_no_growth(lambda: kept.append([]), cycles=500, warmup=0, max_rss_growth=None)


def test_rss_leak_fails() -> None:
    """A function that keeps 256 KiB of fresh, written memory per call fails on RSS."""
    kept: list[mmap.mmap] = []
    page = b"x" * mmap.PAGESIZE

    def cycle() -> None:  # mmap, not bytearray: malloc may reuse resident free heap
        block = mmap.mmap(-1, 256 * 1024)
        for offset in range(0, len(block), len(page)):
            block[offset : offset + len(page)] = page
        kept.append(block)

    with pytest.raises(AssertionError, match=r"RSS grew by more than 4\.0 MiB"):
        check_no_growth(cycle, cycles=64, warmup=0, max_object_growth=None)
    for block in kept:
        block.close()


def test_limits_none_only_measure() -> None:
    """With both limits None, growth is reported, never asserted. Each cycle keeps 11
    lists (3,300 in all); the count is process-wide and the collector untracks or frees
    a few unrelated objects meanwhile, so the report must show at least 3,000. Measured
    in a fresh interpreter, away from threads other tests leave behind."""
    snippet = textwrap.dedent(
        """
        from arenapool.testing import check_no_growth
        kept = []
        report = check_no_growth(
            lambda: kept.append([[] for _ in range(10)]), cycles=300, warmup=0,
            max_object_growth=None, max_rss_growth=None,
        )
        print(report.object_growth)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, check=False
    )

    assert (0, "") == (result.returncode, result.stderr)
    assert int(result.stdout) >= 3000


def test_report_as_dict_and_str() -> None:
    """A GrowthReport is JSON-serialisable and prints readably."""
    report = GrowthReport(10, 100, 104, 2 * 1024 * 1024, 3 * 1024 * 1024)

    assert {
        "cycles": 10,
        "objects_before": 100,
        "objects_after": 104,
        "object_growth": 4,
        "rss_before": 2097152,
        "rss_after": 3145728,
        "rss_growth": 1048576,
    } == json.loads(json.dumps(report.as_dict()))
    assert "10 cycles: objects 100 -> 104 (+4), RSS 2.0 MiB -> 3.0 MiB (1.0 MiB)" == str(report)


@pytest.mark.parametrize(("cycles", "warmup"), [(0, 0), (1, -1)])
def test_bad_cycle_counts(cycles: int, warmup: int) -> None:
    """cycles below 1 or a negative warm-up raise ValueError."""
    with pytest.raises(ValueError, match="cycles must be at least 1"):
        check_no_growth(lambda: None, cycles=cycles, warmup=warmup)


# -- slab_pool_fixture ----------------------------------------------------------------

USER_SUITE = """
from arenapool.testing import slab_pool_fixture

slab_pool = slab_pool_fixture(budget="1MiB", decay=None)
kept = []

def test_clean(slab_pool):
    with slab_pool.arena() as arena:
        arena.alloc(10)
    assert 1048576 == slab_pool.budget

def test_leaky(slab_pool):
    kept.append(slab_pool.lend(4096))
"""


def test_fixture_yields_a_pool_and_checks_teardown(tmp_path: Path) -> None:
    """In a user's suite the fixture passes a clean test and errors a leaky one."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_SUITE))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )

    assert "2 passed, 1 error" in proc.stdout, proc.stdout
    assert "ERROR at teardown of test_leaky" in proc.stdout
    assert "lent_blocks=1 (expected 0)" in proc.stdout
