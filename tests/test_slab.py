"""SlabPool: size classes, budget, async waits, decay, threads, stats and repr."""

from __future__ import annotations

import asyncio
import ctypes
import json
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import pytest
from _threads import run_threads

from arenapool import (
    BudgetExhausted,
    InvalidSize,
    PoolClosedError,
    SlabPool,
    _decay,
    size_classes,
)
from arenapool._slab import Block
from arenapool.testing import assert_no_leaks

KiB = 1024
MiB = 1024 * 1024


def accounting_holds(pool: SlabPool) -> bool:
    stats = pool.stats()
    total = stats["lent_bytes"] + stats["idle_bytes"] + stats["quarantined_bytes"]
    return bool(total == stats["mapped_bytes"])


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def poll_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- size classes ---------------------------------------------------------------------


def test_size_classes_four_per_doubling() -> None:
    """Classes run 4 per doubling from 4 KiB up to max_class."""
    expected = [4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384]
    expected += [20480, 24576, 28672, 32768, 40960, 49152, 57344, 65536]

    assert expected == size_classes(64 * KiB)


def test_size_classes_stop_at_max_class() -> None:
    """A max_class between classes is not exceeded."""
    assert [4096, 5120, 6144] == size_classes(6500)


@pytest.mark.parametrize(
    ("mid", "expected"),
    [
        (1, [64, 128, 256, 512, 1024]),
        (2, [64, 96, 128, 192, 256, 384, 512, 768, 1024]),
        (4, [64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024]),
    ],
)
def test_middle_classes_per_doubling_from_64_kib_to_1_mib(mid: int, expected: list[int]) -> None:
    """From 64 KiB to 1 MiB classes run ``mid`` per doubling; below and above, 4."""
    classes = size_classes(4 * MiB, mid)
    above = [1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096]

    assert (size_classes(64 * KiB), expected, above) == (
        classes[:17],
        [size // KiB for size in classes[16 : 16 + len(expected)]],
        [size // KiB for size in classes[16 + len(expected) :]],
    )


def test_middle_classes_must_be_one_two_or_four() -> None:
    """Another spacing is refused with a clear error, by the table and by the pool."""
    with pytest.raises(ValueError, match="1, 2 or 4"):
        size_classes(MiB, 3)
    with pytest.raises(InvalidSize, match="mid_classes must be 1, 2 or 4"):
        SlabPool("1MiB", mid_classes=3)


@pytest.mark.parametrize(
    ("mid_classes", "nbytes", "expected"),
    [
        (1, 64 * KiB + 1, 128 * KiB),
        (1, 600 * KiB, MiB),
        (2, 600 * KiB, 768 * KiB),
        (4, 600 * KiB, 640 * KiB),
        (1, MiB + 1, 1280 * KiB),
    ],
)
def test_a_body_gets_the_class_above_it(
    make_pool: Callable[..., SlabPool], mid_classes: int, nbytes: int, expected: int
) -> None:
    """A lend gets the smallest class that holds it, coarse or fine, and is charged
    that block to the budget."""
    pool = make_pool("4MiB", mid_classes=mid_classes)
    block = pool.lend(nbytes)

    assert (expected, expected, mid_classes) == (
        block.size,
        pool.lent_bytes,
        pool.stats()["mid_classes"],
    )
    pool.give_back([block])


def test_a_max_class_between_classes_is_the_class_below_it(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A max_class that is not a class is rounded down to one: a request between the
    two gets a mapping of its own instead of failing to find a class."""
    pool = make_pool("4MiB", max_class="900KiB")
    block = pool.lend(600 * KiB + 1)

    assert (512 * KiB, 600 * KiB + 4096) == (pool.max_class, block.size)
    pool.give_back([block])


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [(1, 4096), (4096, 4096), (4097, 5120), (9000, 10240), (64 * KiB, 64 * KiB)],
)
def test_block_size_rounds_up_to_a_class(
    make_pool: Callable[..., SlabPool], nbytes: int, expected: int
) -> None:
    """A request gets the smallest class that holds it."""
    pool = make_pool(max_class="64KiB")

    assert expected == pool.block_size(nbytes)


def test_block_size_above_max_class_is_page_rounded(make_pool: Callable[..., SlabPool]) -> None:
    """A request above max_class gets a page-rounded dedicated mapping."""
    pool = make_pool(max_class="64KiB")

    assert 69632 == pool.block_size(64 * KiB + 1)


def test_lend_returns_a_writable_block_of_its_class(make_pool: Callable[..., SlabPool]) -> None:
    """lend() hands out a block whose view covers the whole class size and is writable."""
    pool = make_pool()
    block = pool.lend(5000)
    assert block.view is not None
    block.view[:5] = b"hello"

    assert (5120, 5120, b"hello") == (block.size, block.view.nbytes, bytes(block.view[:5]))
    pool.give_back([block])


def test_huge_request_is_unmapped_on_return(make_pool: Callable[..., SlabPool]) -> None:
    """A block above max_class is its own mapping, counted while lent, unmapped on return."""
    pool = make_pool(budget="4MiB", max_class="64KiB")
    block = pool.lend(3 * MiB + 1)
    lent = pool.stats()

    pool.give_back([block])
    after = pool.stats()

    assert (3 * MiB + 4096, 1, 3 * MiB + 4096) == (
        lent["mapped_bytes"],
        lent["huge_lent_blocks"],
        lent["lent_bytes"],
    )
    assert (0, 0, 0) == (after["mapped_bytes"], after["huge_lent_blocks"], after["lent_bytes"])


def test_small_blocks_share_a_slab(make_pool: Callable[..., SlabPool]) -> None:
    """The first 4 KiB lend maps one 256 KiB slab of 64 blocks; the rest stay idle."""
    pool = make_pool()
    block = pool.lend(4096)
    stats = pool.stats()

    assert (256 * KiB, 1, 63) == (
        stats["mapped_bytes"],
        stats["lent_blocks"],
        stats["idle_blocks"],
    )
    pool.give_back([block])


# -- prealloc, prefault, backing ------------------------------------------------------


def test_prealloc_warms_a_class(make_pool: Callable[..., SlabPool]) -> None:
    """prealloc={"64KiB": 8} maps 8 idle 64 KiB blocks and keeps them as the reserve."""
    pool = make_pool(prealloc={"64KiB": 8})
    stats = pool.stats()
    (cls,) = stats["classes"]

    assert (512 * KiB, 8, 8, 65536) == (
        stats["mapped_bytes"],
        cls["idle_blocks"],
        cls["reserve_blocks"],
        cls["size"],
    )


def test_prealloc_blocks_are_lent_without_mapping_more(make_pool: Callable[..., SlabPool]) -> None:
    """Lending from a preallocated class maps nothing new."""
    pool = make_pool(prealloc={"64KiB": 8})
    blocks = [pool.lend(64 * KiB) for _ in range(8)]

    assert 512 * KiB == pool.stats()["mapped_bytes"]
    pool.give_back(blocks)


def test_prealloc_above_max_class_is_refused() -> None:
    """Preallocating a size above max_class raises InvalidSize."""
    with pytest.raises(InvalidSize, match="max_class"):
        SlabPool("1MiB", max_class="64KiB", prealloc={"1MiB": 1}, decay=None)


def test_prefault_commits_memory_up_front(make_pool: Callable[..., SlabPool]) -> None:
    """prefault=True touches every page of a new slab, so RSS grows by the slab size."""
    process = psutil.Process()
    before = process.memory_info().rss
    lazy = make_pool(budget="64MiB", prealloc={"1MiB": 8})
    lazy_growth = process.memory_info().rss - before
    before = process.memory_info().rss
    eager = make_pool(budget="64MiB", prealloc={"1MiB": 8}, prefault=True)
    eager_growth = process.memory_info().rss - before

    assert (8 * MiB, 8 * MiB) == (lazy.stats()["mapped_bytes"], eager.stats()["mapped_bytes"])
    assert lazy_growth < 2 * MiB
    assert eager_growth >= 7 * MiB


def test_bytearray_backing(make_pool: Callable[..., SlabPool]) -> None:
    """backing="bytearray" lends writable blocks and arenas work on them."""
    pool = make_pool(backing="bytearray")
    with pool.arena() as arena:
        view = arena.copy(b"payload")
        data = bytes(view)

    assert (b"payload", "bytearray") == (data, pool.stats()["backing"])
    assert_no_leaks(pool)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": "lots"}, "budget"),
        ({"max_class": "1KiB"}, "max_class"),
        ({"backing": "shm"}, "backing"),
        ({"decay": -1.0}, "decay"),
        ({"reserve": -1}, "reserve"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], match: str) -> None:
    """Bad budget, max_class, backing, decay or reserve raise InvalidSize naming them."""
    with pytest.raises(InvalidSize, match=match):
        SlabPool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("nbytes", [0, -1, 1.5, True, "4KiB"])
def test_lend_rejects_bad_sizes(make_pool: Callable[..., SlabPool], nbytes: object) -> None:
    """lend() takes positive int byte counts only."""
    pool = make_pool()

    with pytest.raises(InvalidSize):
        pool.lend(nbytes)  # type: ignore[arg-type]
    assert_no_leaks(pool)


# -- budget ---------------------------------------------------------------------------


def test_sync_lend_over_budget_raises_at_once(make_pool: Callable[..., SlabPool]) -> None:
    """lend() past the budget raises BudgetExhausted carrying the figures and a 503 hint."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(60 * KiB)  # a 64 KiB block

    with pytest.raises(BudgetExhausted) as info:
        pool.lend(4096)

    err = info.value
    assert (4096, 0, 64 * KiB, 503, 0.0) == (
        err.requested,
        err.available,
        err.budget,
        err.status_hint,
        err.waited,
    )
    assert isinstance(err, MemoryError)
    assert "raise budget=" in str(err)
    pool.give_back([held])


def test_request_above_whole_budget_raises_at_once_sync(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A request larger than the whole budget can never succeed: it raises, saying so."""
    pool = make_pool(budget="1MiB")

    with pytest.raises(BudgetExhausted, match="more than the whole budget"):
        pool.lend(2 * MiB)


async def test_request_above_whole_budget_raises_at_once_async(
    make_pool: Callable[..., SlabPool],
) -> None:
    """lend_async does not wait for a request that can never fit."""
    pool = make_pool(budget="1MiB")

    with pytest.raises(BudgetExhausted, match="more than the whole budget"):
        await pool.lend_async(2 * MiB, timeout=30)
    assert (0, 0) == (pool.stats()["waits"], pool.stats()["waiting"])


async def test_lend_async_grants_at_once_when_there_is_room(
    make_pool: Callable[..., SlabPool],
) -> None:
    """With budget free, lend_async returns without queueing."""
    pool = make_pool()
    block = await pool.lend_async(4096)

    assert (4096, 0) == (block.size, pool.stats()["waits"])
    pool.give_back([block])


async def test_lend_async_waiters_are_served_fifo(make_pool: Callable[..., SlabPool]) -> None:
    """Three waiters for a full budget get the block in the order they queued."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)
    order: list[str] = []

    async def waiter(name: str) -> None:
        block = await pool.lend_async(64 * KiB, timeout=10)
        order.append(name)
        await asyncio.sleep(0)
        pool.give_back([block])

    tasks = []
    for name in ["first", "second", "third"]:
        tasks.append(asyncio.create_task(waiter(name)))
        await wait_until(lambda: pool.stats()["waiting"] == len(tasks))
    pool.give_back([held])
    await asyncio.gather(*tasks)

    assert ["first", "second", "third"] == order
    assert 3 == pool.stats()["waits"]
    assert_no_leaks(pool)


async def test_sync_lend_does_not_overtake_waiters(make_pool: Callable[..., SlabPool]) -> None:
    """While an async waiter is queued, a sync lend fails even if it would fit."""
    pool = make_pool(budget="128KiB")
    held = [pool.lend(64 * KiB), pool.lend(32 * KiB)]
    task = asyncio.create_task(pool.lend_async(64 * KiB, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    with pytest.raises(BudgetExhausted):
        pool.lend(4096)

    pool.give_back(held[:1])
    pool.give_back([await task])
    pool.give_back(held[1:])
    assert_no_leaks(pool)


async def test_head_waiter_blocks_smaller_ones_behind(make_pool: Callable[..., SlabPool]) -> None:
    """A small request queued behind a large one is not served ahead of it."""
    pool = make_pool(budget="128KiB")
    held = [pool.lend(64 * KiB), pool.lend(32 * KiB)]
    big = asyncio.create_task(pool.lend_async(64 * KiB, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)
    small = asyncio.create_task(pool.lend_async(4096, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 2)
    pool.give_back(held[:1])  # 96 KiB free: both fit now, in order

    blocks = [await big, await small]

    assert [64 * KiB, 4096] == [b.size for b in blocks]
    pool.give_back(blocks + held[1:])
    assert_no_leaks(pool)


async def test_lend_async_times_out(make_pool: Callable[..., SlabPool]) -> None:
    """A waiter not served within its timeout gets BudgetExhausted; the timeout is counted."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)

    with pytest.raises(BudgetExhausted) as info:
        await pool.lend_async(4096, timeout=0.05)

    stats = pool.stats()
    assert (1, 0) == (stats["wait_timeouts"], stats["waiting"])
    assert info.value.waited > 0
    assert "after waiting" in str(info.value)
    pool.give_back([held])


async def test_lend_async_zero_timeout_fails_without_queueing(
    make_pool: Callable[..., SlabPool],
) -> None:
    """timeout=0 is a non-blocking try."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)

    with pytest.raises(BudgetExhausted):
        await pool.lend_async(4096, timeout=0)

    assert 0 == pool.stats()["waits"]
    pool.give_back([held])


async def test_cancelled_waiter_leaves_the_queue(make_pool: Callable[..., SlabPool]) -> None:
    """Cancelling a waiter removes it from the queue; later waiters are still served."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)
    doomed = asyncio.create_task(pool.lend_async(64 * KiB))
    await wait_until(lambda: pool.stats()["waiting"] == 1)
    survivor = asyncio.create_task(pool.lend_async(64 * KiB, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 2)

    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert 1 == pool.stats()["waiting"]
    pool.give_back([held])
    block = await survivor

    assert 0 == pool.stats()["waiting"]
    pool.give_back([block])
    assert_no_leaks(pool)


async def test_waiter_cancelled_after_grant_gives_the_block_back(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A waiter cancelled between grant and wake-up returns the block it was granted."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)
    task = asyncio.create_task(pool.lend_async(64 * KiB))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    pool.give_back([held])  # granted now, delivered on the next loop iteration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert_no_leaks(pool)


async def test_max_waiters_sheds_at_once(make_pool: Callable[..., SlabPool]) -> None:
    """Past max_waiters, lend_async raises BudgetExhausted without queueing."""
    pool = make_pool(budget="64KiB", max_waiters=1)
    held = pool.lend(64 * KiB)
    queued = asyncio.create_task(pool.lend_async(4096, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    with pytest.raises(BudgetExhausted, match="max_waiters=1"):
        await pool.lend_async(4096, timeout=10)

    assert (1, 1) == (pool.stats()["shed"], pool.stats()["waiting"])
    pool.give_back([held])
    pool.give_back([await queued])


# -- close ----------------------------------------------------------------------------


def test_closed_pool_refuses_use(make_pool: Callable[..., SlabPool]) -> None:
    """After close(), lend and arena raise PoolClosedError (a RuntimeError)."""
    pool = make_pool()
    pool.close()

    with pytest.raises(PoolClosedError, match="closed"):
        pool.lend(4096)
    with pytest.raises(RuntimeError):
        pool.arena()


async def test_closed_pool_refuses_async_lend(make_pool: Callable[..., SlabPool]) -> None:
    """After close(), lend_async raises PoolClosedError."""
    pool = make_pool()
    pool.close()

    with pytest.raises(PoolClosedError):
        await pool.lend_async(4096)


def test_close_is_idempotent_and_unmaps_idle_memory(make_pool: Callable[..., SlabPool]) -> None:
    """close() unmaps idle slabs; a second close() does nothing."""
    pool = make_pool(prealloc={"8KiB": 4})
    pool.close()
    pool.close()

    assert (True, 0) == (pool.closed, pool.stats()["mapped_bytes"])


def test_block_returned_after_close_is_unmapped(make_pool: Callable[..., SlabPool]) -> None:
    """A block lent at close() is unmapped when it comes back."""
    pool = make_pool()
    block = pool.lend(4096)
    pool.close()
    pool.give_back([block])

    assert (0, 0) == (pool.stats()["mapped_bytes"], pool.stats()["lent_bytes"])


async def test_close_fails_queued_waiters(make_pool: Callable[..., SlabPool]) -> None:
    """Waiters queued when the pool closes get PoolClosedError."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)
    task = asyncio.create_task(pool.lend_async(4096, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    pool.close()

    with pytest.raises(PoolClosedError, match="closed while waiting"):
        await task
    pool.give_back([held])


def test_close_unmaps_blocks_that_were_lent(make_pool: Callable[..., SlabPool]) -> None:
    """Blocks lent before (each keeps a carrier exporting its slab) do not stop close()
    from unmapping their slab."""
    pool = make_pool()
    pool.give_back([pool.lend(4096) for _ in range(3)])
    pool.give_back([pool.lend(100 * KiB)])
    pool.close()

    assert 0 == pool.stats()["mapped_bytes"]


def test_context_manager_closes(make_pool: Callable[..., SlabPool]) -> None:
    """``with SlabPool(...)`` closes the pool on exit."""
    with make_pool() as pool:
        pool.give_back([pool.lend(4096)])

    assert pool.closed


# -- decay and trim -------------------------------------------------------------------


def test_trim_returns_idle_memory(make_pool: Callable[..., SlabPool]) -> None:
    """trim() gives idle, committed memory back and unmaps wholly idle slabs."""
    pool = make_pool(budget="8MiB")
    blocks = [pool.lend(MiB) for _ in range(2)]
    for block in blocks:
        assert block.view is not None
        block.view[:] = b"x" * MiB
    pool.give_back(blocks)

    returned = pool.trim()

    assert (2 * MiB, 0, 1) == (returned, pool.stats()["mapped_bytes"], pool.stats()["trims"])


def test_trim_keeps_the_warm_reserve(make_pool: Callable[..., SlabPool]) -> None:
    """trim() keeps each class's reserve unless keep_reserve=False."""
    pool = make_pool(budget="8MiB", prealloc={"1MiB": 2})
    pool.give_back([pool.lend(MiB), pool.lend(MiB)])

    pool.trim()
    kept = pool.stats()["mapped_bytes"]
    pool.trim(keep_reserve=False)

    assert (2 * MiB, 0) == (kept, pool.stats()["mapped_bytes"])


def test_trim_older_than_spares_recent_blocks(make_pool: Callable[..., SlabPool]) -> None:
    """trim(older_than=60) leaves blocks that went idle just now."""
    pool = make_pool(budget="8MiB")
    pool.give_back([pool.lend(MiB)])

    assert (0, MiB) == (pool.trim(older_than=60), pool.stats()["mapped_bytes"])


def test_decay_zero_returns_memory_at_once(make_pool: Callable[..., SlabPool]) -> None:
    """decay=0 gives a block's slab back as soon as it is wholly idle."""
    pool = make_pool(budget="8MiB", decay=0)
    pool.give_back([pool.lend(MiB)])

    assert 0 == pool.stats()["mapped_bytes"]


def test_decay_thread_returns_idle_memory(make_pool: Callable[..., SlabPool]) -> None:
    """With decay set, idle blocks are unmapped by the pool's thread after that long."""
    pool = make_pool(budget="8MiB", decay=0.1)
    pool.give_back([pool.lend(MiB)])

    poll_until(lambda: pool.stats()["mapped_bytes"] == 0)

    assert MiB == pool.stats()["returned_bytes"]


# -- threads --------------------------------------------------------------------------


def test_threads_keep_accounting_exact(make_pool: Callable[..., SlabPool]) -> None:
    """Threads lending and returning concurrently never exceed the budget or lose a byte."""
    pool = make_pool(budget="256KiB", max_class="64KiB")
    sizes = [4096, 5000, 16 * KiB, 40 * KiB, 64 * KiB, 100 * KiB]
    max_seen: list[int] = []
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        seen = 0
        try:
            for i in range(300):
                held: list[Block] = []
                for size in sizes[(seed + i) % 3 :: 2]:
                    try:
                        held.append(pool.lend(size))
                    except BudgetExhausted:
                        continue
                    seen = max(seen, pool.stats()["lent_bytes"])
                    assert held[-1].view is not None
                    held[-1].view[:8] = seed.to_bytes(8, "little")
                for block in held:
                    assert block.view is not None
                    assert seed.to_bytes(8, "little") == bytes(block.view[:8])
                pool.give_back(held)
        except BaseException as exc:
            failures.append(exc)
        max_seen.append(seen)

    run_threads(worker, 4)

    assert [] == failures
    assert 4 == len(max_seen)
    assert max(max_seen) <= 256 * KiB
    assert pool.stats()["high_water_lent_bytes"] <= 256 * KiB
    assert accounting_holds(pool)
    assert_no_leaks(pool)


def test_arena_counts_from_threads(make_pool: Callable[..., SlabPool]) -> None:
    """Arenas opened and closed concurrently (without the pool lock) are all counted."""
    pool = make_pool()

    def worker(_index: int) -> None:
        for _ in range(500):
            with pool.arena() as arena:
                arena.alloc(64)

    run_threads(worker, 4)
    stats = pool.stats()

    assert (0, 2000) == (stats["arenas_open"], stats["arenas_total"])


# -- escape detection -----------------------------------------------------------------


def test_kept_slice_quarantines_a_block_lent_many_times(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A block keeps working through many lends: clean returns are not quarantined, a
    lend whose slice is kept is, and the block is lent again once the slice dies."""
    pool = make_pool(budget="4KiB")
    clean = []
    for _ in range(3):
        clean.append(pool.give_back([pool.lend(4096)]))
    block = pool.lend(4096)
    assert block.view is not None
    kept = block.view[:10]

    escaped = pool.give_back([block])
    quarantined = pool.stats()["quarantined_blocks"]
    del kept
    after = pool.give_back([pool.lend(4096)])

    assert ([0, 0, 0], 1, 1, 0) == (clean, escaped, quarantined, after)
    assert_no_leaks(pool)


def test_export_of_the_root_view_quarantines(make_pool: Callable[..., SlabPool]) -> None:
    """A buffer export of the block's own view (it cannot be released) quarantines it."""
    pool = make_pool()
    block = pool.lend(4096)
    assert block.view is not None
    export = ctypes.c_char.from_buffer(block.view)

    escaped = pool.give_back([block])
    quarantined = pool.stats()["quarantined_blocks"]
    del export

    assert (1, 1) == (escaped, quarantined)
    assert_no_leaks(pool)


# -- stats and repr -------------------------------------------------------------------


def test_stats_is_json_with_documented_keys(make_pool: Callable[..., SlabPool]) -> None:
    """stats() round-trips through json and has the documented keys."""
    pool = make_pool(name="api")
    block = pool.lend(4096)
    stats = json.loads(json.dumps(pool.stats()))
    pool.give_back([block])

    expected = {
        "name",
        "closed",
        "backing",
        "budget",
        "max_class",
        "mid_classes",
        "decay",
        "scrub",
        "lent_bytes",
        "lent_blocks",
        "huge_lent_blocks",
        "idle_bytes",
        "idle_committed_bytes",
        "retain",
        "stretch",
        "populate",
        "calibrate",
        "warm_rate",
        "warm_share",
        "minor_classes",
        "spread",
        "cold_classes",
        "idle_blocks",
        "quarantined_bytes",
        "quarantined_blocks",
        "mapped_bytes",
        "available_bytes",
        "high_water_lent_bytes",
        "waits",
        "waiting",
        "wait_timeouts",
        "shed",
        "returned_bytes",
        "trims",
        "escapes",
        "arenas_open",
        "arenas_total",
        "classes",
        "admission",
        "budget_auto",
    }
    assert expected == set(stats)
    assert ("api", 4096, 1) == (stats["name"], stats["lent_bytes"], stats["lent_blocks"])
    assert [
        {
            "size": 4096,
            "lent_blocks": 1,
            "lent_bytes": 4096,
            "idle_blocks": 63,
            "idle_bytes": 63 * 4096,
            "quarantined_blocks": 0,
            "quarantined_bytes": 0,
            "high_water_blocks": 1,
            "reserve_blocks": 0,
        }
    ] == stats["classes"]


def test_high_water_tracks_the_peak(make_pool: Callable[..., SlabPool]) -> None:
    """high_water_lent_bytes remembers the most lent at once."""
    pool = make_pool()
    blocks = [pool.lend(4096) for _ in range(3)]
    pool.give_back(blocks)
    pool.give_back([pool.lend(4096)])

    assert 3 * 4096 == pool.stats()["high_water_lent_bytes"]


def test_available_property(make_pool: Callable[..., SlabPool]) -> None:
    """available and lent_bytes follow lends."""
    pool = make_pool(budget="64KiB")
    block = pool.lend(4096)

    assert (60 * KiB, 4096) == (pool.available, pool.lent_bytes)
    pool.give_back([block])


def test_repr_shows_live_state(make_pool: Callable[..., SlabPool]) -> None:
    """The repr shows blocks in use, idle and the budget."""
    pool = make_pool(budget="1MiB")
    block = pool.lend(4096)

    assert "<SlabPool [in use 1 blocks / 4.0 KiB | idle 63 / 252.0 KiB | budget 1.0 MiB]>" == (
        repr(pool)
    )
    pool.give_back([block])
    assert "<SlabPool [in use 0 blocks / 0 B | idle 64 / 256.0 KiB | budget 1.0 MiB]>" == (
        repr(pool)
    )


async def test_repr_shows_waiters_and_closed(make_pool: Callable[..., SlabPool]) -> None:
    """Waiters and the closed state appear in the repr."""
    pool = make_pool(budget="64KiB")
    held = pool.lend(64 * KiB)
    task = asyncio.create_task(pool.lend_async(4096, timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    assert (
        "<SlabPool [in use 1 blocks / 64.0 KiB | idle 3 / 192.0 KiB | waiting 1 | budget 64.0 KiB]>"
        == repr(pool)
    )
    pool.close()
    with pytest.raises(PoolClosedError):
        await task
    closed = "<SlabPool closed [in use 1 blocks / 64.0 KiB | idle 3 / 192.0 KiB | budget 64.0 KiB]>"
    assert closed == repr(pool)
    pool.give_back([held])


def test_block_repr(make_pool: Callable[..., SlabPool]) -> None:
    """A block's repr shows its size, offset and state."""
    pool = make_pool()
    pool.lend(4096)
    block = pool.lend(4096)

    assert "<Block 4.0 KiB at +4096 lent>" == repr(block)


def _idle_committed(pool: SlabPool) -> int:
    """Bytes of idle blocks that may still be resident, counted from the blocks."""
    return sum(b.size for cls in pool._classes for b in cls.free if b.committed)


def _locked_idle_committed(pool: SlabPool) -> int:
    """The same, read under the pool's lock (its maintenance thread may be at work)."""
    with pool._lock:
        return _idle_committed(pool)


def test_retain_returns_idle_memory_beyond_the_cap_soon_after() -> None:
    """With retain, blocks that came back past the cap are madvised away by the pool's
    maintenance thread, woken by give_back (never inside it; no event loop runs here),
    the largest first: RSS falls without waiting for a decay."""
    proc = psutil.Process()
    with SlabPool("64MiB", max_class="8MiB", decay=None, retain="1MiB") as pool:
        sizes = [4 * MiB, 1 * MiB, 256 * KiB, 64 * KiB, 4 * KiB]
        blocks = [pool.lend(n) for n in sizes]
        for block in blocks:
            assert block.view is not None
            ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block.view)), 1, block.size)
        touched = proc.memory_info().rss
        pool.give_back(blocks)
        poll_until(lambda: pool.stats()["idle_committed_bytes"] <= MiB)
        after = proc.memory_info().rss
        stats = pool.stats()
        assert stats["idle_committed_bytes"] == _locked_idle_committed(pool) <= MiB
        assert stats["returned_bytes"] >= 4 * MiB
        assert touched - after >= 3 * MiB, "the 4 MiB block's pages left RSS"
        # largest first: the 4 MiB and 1 MiB blocks went, the small ones stay warm
        assert [False, False, True, True, True] == [b.committed for b in blocks]


def test_retain_accounting_holds_through_random_lends() -> None:
    """The pool's count of committed idle bytes matches its blocks at every step and
    stays under the cap after every pass of the maintenance thread."""

    rng = random.Random(7)
    with SlabPool("32MiB", max_class="2MiB", decay=None, retain="512KiB") as pool:
        out: list[Block] = []
        for _ in range(400):
            if out and rng.random() < 0.5:
                back = [out.pop(rng.randrange(len(out))) for _ in range(rng.randint(1, len(out)))]
                pool.give_back(back)
                _decay.maintain(pool, time.monotonic(), tick=False)  # the thread's pass
                assert pool.stats()["idle_committed_bytes"] <= 512 * KiB
            else:
                out.append(pool.lend(rng.choice([4 * KiB, 20 * KiB, 300 * KiB, 2 * MiB, 3 * MiB])))
            assert _locked_idle_committed(pool) == pool.stats()["idle_committed_bytes"]
        pool.give_back(out)
        pool.trim(keep_reserve=False)
        assert 0 == pool.stats()["idle_committed_bytes"] == _idle_committed(pool)
        assert accounting_holds(pool)


def _anon_huge_kib() -> int:
    text = Path("/proc/self/smaps_rollup").read_text()
    return int(text.split("AnonHugePages:")[1].split()[0])


def test_large_slabs_ask_for_transparent_huge_pages() -> None:
    """A touched 4 MiB block is backed by huge pages where the kernel's THP mode allows
    madvise (512 fewer faults per 2 MiB); with huge_pages=False, or THP off, it is not."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    available = "[never]" not in thp
    seen = {}
    for huge_pages in (False, True):
        with SlabPool("16MiB", decay=None, huge_pages=huge_pages) as pool:
            before = _anon_huge_kib()
            block = pool.lend(4 * MiB)
            assert block.view is not None
            ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block.view)), 1, block.size)
            seen[huge_pages] = _anon_huge_kib() - before
            pool.give_back([block])
    assert 0 == seen[False]
    if available:
        assert seen[True] >= 2048, f"THP mode {thp.strip()!r}: no huge page backs the block"
    else:
        assert 0 == seen[True]


def test_a_block_between_huge_pages_starts_on_one() -> None:
    """A 3 MiB block (not a whole number of huge pages) starts on a 2 MiB boundary, so
    its first 2 MiB fault in as one huge page; its last MiB stays in small pages, which
    commit only what a body touches. Unaligned, the kernel found no 2 MiB span inside
    the mapping and all 768 pages faulted in one by one."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    with SlabPool("16MiB", decay=None, max_class="4MiB") as pool:
        block = pool.lend(3 * MiB)
        assert block.size == 3 * MiB
        assert block.view is not None
        address = ctypes.addressof(ctypes.c_char.from_buffer(block.view))
        if "[never]" in thp:
            pool.give_back([block])
            return
        assert 0 == address % (2 * MiB)
        before_huge = _anon_huge_kib()
        before_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(address, 1, block.size)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before_faults
        huge = _anon_huge_kib() - before_huge
        pool.give_back([block])
    assert 2048 == huge, f"THP mode {thp.strip()!r}: {huge} KiB of huge pages, not 2048"
    # one fault for the huge page, one per small page of the last MiB (256), a few more
    # for the interpreter's own pages
    assert 256 < faults < 300, faults
