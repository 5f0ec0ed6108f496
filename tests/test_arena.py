"""Arena: bump allocation, limits, lifecycle, escapes and quarantine, scrub."""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import itertools
import pickle
import time
from collections.abc import Callable

import pytest

from arenapool import (
    Arena,
    ArenaLimitExceeded,
    ArenaPoolError,
    ArenaReleasedError,
    ArenaState,
    BudgetExhausted,
    InvalidJSON,
    InvalidSize,
    NotBytesLike,
    ObjectPool,
    SlabPool,
    ViewEscapedWarning,
    current_arena,
)
from arenapool.testing import assert_no_leaks, slab_pool_fixture

KiB = 1024
MiB = 1024 * 1024

#: conftest's pool with 4 classes per doubling from 64 KiB to 1 MiB too: these tests pin
#: the arena's block arithmetic (a grow in place within its class, a move to the next)
#: on the fine spacing; test_slab.py holds the pool to the default's coarse one
pool = slab_pool_fixture(budget="1MiB", decay=None, mid_classes=4)


def address(view: memoryview) -> int:
    """The address of a view's first byte (the ctypes export is gone on return)."""
    probe = ctypes.c_char.from_buffer(view)
    addr = ctypes.addressof(probe)
    del probe
    return addr


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


# -- allocation -----------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [1, 7, 100, 4096, 5000, 64 * KiB, 300 * KiB])
def test_alloc_returns_exactly_n_writable_bytes(pool: SlabPool, nbytes: int) -> None:
    """alloc(n) is a writable, flat byte view of exactly n bytes."""
    with pool.arena() as arena:
        view = arena.alloc(nbytes)
        view[:] = b"\xab" * nbytes

        assert (nbytes, False, "B", 1) == (view.nbytes, view.readonly, view.format, view.ndim)
        assert b"\xab" * nbytes == bytes(view)


def test_views_never_overlap(pool: SlabPool) -> None:
    """Views of one arena cover disjoint address ranges, and keep what was written."""
    sizes = [1, 3, 8, 100, 1000, 2048, 4095, 4096, 9000, 17, 30000, 5]
    with pool.arena() as arena:
        views = [arena.alloc(n) for n in sizes]
        for i, view in enumerate(views):
            view[:] = bytes([i]) * view.nbytes
        spans = sorted((address(v), address(v) + v.nbytes) for v in views)

        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
        assert [bytes([i]) * n for i, n in enumerate(sizes)] == [bytes(v) for v in views]


def test_small_allocations_are_8_byte_aligned(pool: SlabPool) -> None:
    """Consecutive small allocations start on 8-byte boundaries."""
    with pool.arena() as arena:
        addresses = [address(arena.alloc(n)) for n in (1, 3, 13, 8)]

    assert [0, 0, 0, 0] == [addr % 8 for addr in addresses]


def test_copy_returns_the_arena_copy(pool: SlabPool) -> None:
    """copy() puts bytes-like data in the arena and returns the arena's view of it."""
    source = bytearray(b"request body")
    with pool.arena() as arena:
        view = arena.copy(source)
        source[:] = b"X" * len(source)

        assert b"request body" == bytes(view)


def test_copy_accepts_typed_buffers(pool: SlabPool) -> None:
    """copy() of a non-byte buffer (array of ints) copies its raw bytes."""
    numbers = array.array("i", [1, 2, 3])
    with pool.arena() as arena:
        view = arena.copy(numbers)

        assert numbers.tobytes() == bytes(view)


def test_copy_of_empty_data(pool: SlabPool) -> None:
    """copy(b"") is an empty view and borrows nothing."""
    with pool.arena() as arena:
        view = arena.copy(b"")

        assert (0, 0) == (view.nbytes, arena.reserved)


@pytest.mark.parametrize("data", ["text", 42, None, [1, 2]])
def test_copy_rejects_non_bytes(pool: SlabPool, data: object) -> None:
    """copy() of a str, int or list raises NotBytesLike, a TypeError."""
    with pool.arena() as arena, pytest.raises(NotBytesLike) as info:
        arena.copy(data)

    assert isinstance(info.value, TypeError)
    assert "encode text first" in str(info.value)


@pytest.mark.parametrize("nbytes", [0, -1, 1.5, "10", True, None])
def test_alloc_rejects_bad_sizes(pool: SlabPool, nbytes: object) -> None:
    """Zero, negative and non-int sizes raise InvalidSize naming the value."""
    with pool.arena() as arena, pytest.raises(InvalidSize, match=repr(nbytes)):
        arena.alloc(nbytes)  # type: ignore[arg-type]


def test_limit_exceeded(pool: SlabPool) -> None:
    """Going past limit raises ArenaLimitExceeded with the figures and a 413 hint."""
    with pool.arena(limit="8KiB") as arena:
        arena.alloc(5000)
        with pytest.raises(ArenaLimitExceeded) as info:
            arena.alloc(4000)

    err = info.value
    assert (4000, 5000, 8 * KiB, 413) == (err.requested, err.used, err.limit, err.status_hint)
    assert isinstance(err, MemoryError)
    assert "raise limit=" in str(err)


def test_limit_counts_bytes_handed_out(pool: SlabPool) -> None:
    """An arena may hand out exactly its limit."""
    with pool.arena(limit=8192) as arena:
        arena.alloc(4096)
        arena.alloc(4096)

        assert (8192, 8192) == (arena.used, arena.limit)


def test_limit_defaults_to_the_budget(pool: SlabPool) -> None:
    """Without limit=, an arena may use the whole budget."""
    with pool.arena() as arena:
        assert pool.budget == arena.limit


def test_pool_budget_error_from_alloc(make_pool: Callable[..., SlabPool]) -> None:
    """alloc() raises BudgetExhausted at once when the pool has no room."""
    small = make_pool(budget="64KiB")
    with small.arena() as first, small.arena() as second:
        first.alloc(64 * KiB)

        with pytest.raises(BudgetExhausted):
            second.alloc(10)
    assert_no_leaks(small)


def lent_block_sizes(pool: SlabPool) -> list[int]:
    """The sizes (KiB) of the blocks lent right now, one entry per block."""
    return [c["size"] // KiB for c in pool.stats()["classes"] for _ in range(c["lent_blocks"])]


def test_large_allocation_gets_its_own_block(pool: SlabPool) -> None:
    """An allocation of at least LARGE (64 KiB) gets one block of its class."""
    with pool.arena() as arena:
        arena.alloc(100 * KiB)

        assert (100 * KiB, 112 * KiB) == (arena.used, arena.reserved)
        assert 1 == pool.stats()["lent_blocks"]


@pytest.mark.parametrize("between", [64 * KiB, 40 * KiB])
def test_own_block_leaves_the_current_chunk_current(pool: SlabPool, between: int) -> None:
    """A large allocation (64 KiB), or one whose new chunk would have less room than the
    current one (40 KiB), gets its own block; small ones around it keep bumping in the
    same chunk."""
    with pool.arena() as arena:
        first = arena.alloc(100)
        arena.alloc(between)
        after = arena.alloc(1000)

        assert address(first) + 104 == address(after)
        assert [4, between // KiB] == lent_block_sizes(pool)


def test_many_medium_allocations_share_few_chunks(pool: SlabPool) -> None:
    """64 allocations of 4 KiB bump in 7 doubling chunks instead of 64 own blocks."""
    with pool.arena() as arena:
        views = [arena.alloc(4096) for _ in range(64)]

        assert [4, 8, 16, 32, 64, 128, 256] == lent_block_sizes(pool)
        assert (64 * 4096, 508 * KiB) == (arena.used, arena.reserved)
    del views


def test_first_allocation_is_exactly_one_block(pool: SlabPool) -> None:
    """A body-sized first allocation below LARGE is one block of its class, no more."""
    with pool.arena() as arena:
        body = arena.alloc(10000)
        tail = arena.alloc(100)  # fits in the 240 bytes the 10 KiB class leaves

        assert (10 * KiB, [10]) == (arena.reserved, lent_block_sizes(pool))
        assert address(body) + 10000 == address(tail)


def test_medium_allocations_after_an_own_block_grow_chunks(pool: SlabPool) -> None:
    """Once a medium allocation got its own block, the next chunk is twice its size."""
    with pool.arena() as arena:
        arena.alloc(100)
        for _ in range(3):
            arena.alloc(40 * KiB)

        assert [4, 40, 80] == lent_block_sizes(pool)


def test_chunks_never_reach_past_the_limit(pool: SlabPool) -> None:
    """A new chunk is no larger than what the limit still allows (rounded to a class)."""
    with pool.arena(limit=5 * KiB) as arena:
        arena.alloc(4000)
        arena.alloc(1000)

        assert [4, 4] == lent_block_sizes(pool)


def test_limit_is_exact_despite_alignment(pool: SlabPool) -> None:
    """Alignment runs the offset ahead of used; the limit still counts bytes handed out."""
    with pool.arena(limit=100) as arena:
        for _ in range(14):
            arena.alloc(7)
        arena.alloc(2)

        assert 100 == arena.used
        with pytest.raises(ArenaLimitExceeded):
            arena.alloc(1)


def test_chunk_falls_back_to_the_allocation_when_the_budget_is_short(
    make_pool: Callable[..., SlabPool],
) -> None:
    """When the budget cannot hold the next chunk, a block of the allocation's own size
    is borrowed instead of failing."""
    small = make_pool(budget="16KiB")
    with small.arena(limit="1MiB") as arena:
        for _ in range(4):
            arena.alloc(4096)

        assert (16 * KiB, 16 * KiB) == (arena.used, arena.reserved)
        with pytest.raises(BudgetExhausted):
            arena.alloc(100)
    assert_no_leaks(small)


def test_growth_doubles_chunks(pool: SlabPool) -> None:
    """Many small allocations borrow chunks of 4, 8, 16, 32 KiB (bumpalo growth)."""
    with pool.arena() as arena:
        for _ in range(300):
            arena.alloc(100)

        assert (30000, (4 + 8 + 16 + 32) * KiB) == (arena.used, arena.reserved)
        assert [4, 8, 16, 32] == [
            c["size"] // KiB for c in pool.stats()["classes"] if c["lent_blocks"]
        ]


def test_used_reserved_high_water(pool: SlabPool) -> None:
    """used counts bytes handed out, reserved the blocks held, high_water the peak."""
    with pool.arena() as arena:
        arena.alloc(100)
        arena.alloc(200)
        before = (arena.used, arena.reserved, arena.high_water)
        arena.reset()
        arena.alloc(10)

        assert (300, 4096, 300) == before
        assert (10, 4096, 300) == (arena.used, arena.reserved, arena.high_water)


def test_reset_returns_blocks_and_stays_open(pool: SlabPool) -> None:
    """reset() releases every view and block but the arena stays OPEN and usable."""
    with pool.arena() as arena:
        view = arena.alloc(100)
        arena.reset()
        lent_after_reset = pool.stats()["lent_blocks"]

        assert (ArenaState.OPEN, 0, 0) == (arena.state, arena.reserved, lent_after_reset)
        with pytest.raises(ValueError):
            view[0]
        assert 5 == arena.alloc(5).nbytes


def test_repr_shows_state(pool: SlabPool) -> None:
    """The arena repr shows its name, state, use, limit and blocks."""
    arena = pool.arena(limit="1MiB", name="upload")
    arena.alloc(100)
    shown = repr(arena)
    arena.release()

    assert "<Arena 'upload' OPEN used 100 B of 1.0 MiB limit | 1 blocks / 4.0 KiB>" == shown
    assert "<Arena 'upload' RELEASED used 0 B of 1.0 MiB limit | 0 blocks / 0 B>" == repr(arena)


# -- lifecycle --------------------------------------------------------------------------


def test_release_returns_everything(pool: SlabPool) -> None:
    """release() gives every block back; the pool is idle again."""
    arena = pool.arena()
    for n in (10, 5000, 100 * KiB):
        arena.alloc(n)
    arena.release()

    assert ArenaState.RELEASED == arena.state
    assert_no_leaks(pool)


def test_release_is_idempotent(pool: SlabPool) -> None:
    """A second release() does nothing."""
    arena = pool.arena()
    arena.alloc(10)
    arena.release()
    arena.release()

    assert (0, 0) == (pool.stats()["arenas_open"], pool.stats()["lent_blocks"])


def test_released_views_are_dead(pool: SlabPool) -> None:
    """A view handed out is released with its arena: touching it raises ValueError."""
    with pool.arena() as arena:
        view = arena.alloc(10)

    with pytest.raises(ValueError, match="released"):
        view[0]


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("alloc", lambda a: a.alloc(1)),
        ("copy", lambda a: a.copy(b"x")),
        ("json", lambda a: a.json(b"{}")),
        ("borrow", lambda a: a.borrow(ObjectPool(dict))),
        ("reset", lambda a: a.reset()),
        ("__enter__", lambda a: a.__enter__()),
    ],
)
def test_released_arena_refuses_operations(
    pool: SlabPool, operation: str, call: Callable[[Arena], object]
) -> None:
    """Every operation but release() on a released arena raises, naming the state."""
    arena = pool.arena()
    arena.release()

    with pytest.raises(ArenaReleasedError) as info:
        call(arena)

    assert ("RELEASED", operation) == (info.value.state, info.value.operation)  # type: ignore[attr-defined]
    assert "RELEASED" in str(info.value)


async def test_released_arena_refuses_async_operations(pool: SlabPool) -> None:
    """alloc_async and copy_async on a released arena raise ArenaReleasedError."""
    arena = pool.arena()
    arena.release()

    with pytest.raises(ArenaReleasedError, match="RELEASED"):
        await arena.alloc_async(1)
    with pytest.raises(ArenaReleasedError, match="RELEASED"):
        await arena.copy_async(b"x")


def test_context_manager_releases_on_exception(pool: SlabPool) -> None:
    """Leaving the with block by an exception still releases the arena."""
    seen: list[Arena] = []

    def handler() -> None:
        with pool.arena() as arena:
            seen.append(arena)
            arena.alloc(100)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        handler()

    assert ArenaState.RELEASED == seen[0].state
    assert_no_leaks(pool)


async def test_async_context_manager(pool: SlabPool) -> None:
    """``async with pool.arena()`` sets the current arena and releases on exit."""
    async with pool.arena() as arena:
        await arena.copy_async(b"abc")
        inside = current_arena()

    assert (arena, ArenaState.RELEASED) == (inside, arena.state)
    assert_no_leaks(pool)


def test_current_arena_outside_is_none() -> None:
    """With no arena entered, current_arena() is None."""
    assert current_arena() is None


def test_current_arena_nested(pool: SlabPool) -> None:
    """Nested with blocks set and restore the current arena."""
    with pool.arena() as outer:
        seen = [current_arena()]
        with pool.arena() as inner:
            seen.append(current_arena())
        seen.append(current_arena())
    seen.append(current_arena())

    assert [outer, inner, outer, None] == seen


async def test_current_arena_in_tasks(pool: SlabPool) -> None:
    """A task sees the arena current when it was created; its own arena stays its own."""

    async def child() -> tuple[Arena | None, Arena | None]:
        inherited = current_arena()
        async with pool.arena() as mine:
            return inherited, mine

    async with pool.arena() as parent:
        inherited, mine = await asyncio.create_task(child())
        after = current_arena()

    assert (parent, parent) == (inherited, after)
    assert mine is not parent


# -- escapes and quarantine -------------------------------------------------------------


def test_escaped_slice_warns_and_quarantines(pool: SlabPool) -> None:
    """A sub-slice alive at release: ViewEscapedWarning, the block is quarantined."""
    arena = pool.arena(name="upload")
    view = arena.alloc(100)
    kept = view[10:20]

    with pytest.warns(ViewEscapedWarning, match="'upload'.*quarantined"):
        arena.release()

    stats = pool.stats()
    assert (1, 4096, 0, 1) == (
        stats["quarantined_blocks"],
        stats["quarantined_bytes"],
        stats["lent_blocks"],
        arena.escapes,
    )
    del kept


def test_quarantined_block_is_not_lent_while_the_slice_lives(pool: SlabPool) -> None:
    """Later arenas never get the quarantined block, so the kept slice is unchanged."""
    arena = pool.arena()
    view = arena.alloc(100)
    view[:] = b"a" * 100
    kept = view[10:20]
    escaped_at = address(view)
    with pytest.warns(ViewEscapedWarning):
        arena.release()

    addresses = []
    for _ in range(70):  # more than one slab of 4 KiB blocks
        with pool.arena() as other:
            other_view = other.alloc(4096)
            other_view[:] = b"b" * 4096
            addresses.append(address(other_view))

    assert escaped_at not in addresses
    assert b"a" * 10 == bytes(kept)
    del kept


def test_quarantined_block_is_reused_after_the_slice_dies(pool: SlabPool) -> None:
    """Once the escaped slice is gone, the block comes back and is lent again."""
    arena = pool.arena()
    view = arena.alloc(100)
    kept = view[10:20]
    escaped_at = address(view)
    with pytest.warns(ViewEscapedWarning):
        arena.release()

    del kept
    idle = pool.stats()
    with pool.arena() as other:
        reused_at = address(other.alloc(100))

    assert (0, 0) == (idle["quarantined_blocks"], idle["quarantined_bytes"])
    assert escaped_at == reused_at


def test_export_of_a_view_also_quarantines(pool: SlabPool) -> None:
    """A buffer export of a view (here ctypes) alive at release quarantines the block."""
    arena = pool.arena()
    view = arena.alloc(100)
    export = ctypes.c_char.from_buffer(view)

    with pytest.warns(ViewEscapedWarning):
        arena.release()

    assert 1 == pool.stats()["quarantined_blocks"]
    del export


def test_reset_with_an_escaped_slice_warns(pool: SlabPool) -> None:
    """reset() detects escapes like release() does."""
    with pool.arena() as arena:
        kept = arena.alloc(100)[:10]
        with pytest.warns(ViewEscapedWarning):
            arena.reset()

        assert 1 == pool.stats()["quarantined_blocks"]
    del kept


def test_bytes_copy_does_not_escape(pool: SlabPool) -> None:
    """Keeping bytes(view) is the supported way to keep data: no warning, no quarantine."""
    with pool.arena() as arena:
        kept = bytes(arena.copy(b"keep me"))

    assert b"keep me" == kept
    assert_no_leaks(pool)


# -- scrub ------------------------------------------------------------------------------


def write_and_reread(pool: SlabPool, *, scrub: bool | None = None) -> bytes:
    """Write a secret in one arena, then read the same block from the next arena."""
    with pool.arena(scrub=scrub) as arena:
        view = arena.alloc(64)
        view[:] = b"S" * 64
        first = address(view)
    with pool.arena() as arena:
        view = arena.alloc(64)
        assert first == address(view)
        return bytes(view)


def test_without_scrub_the_next_borrower_sees_old_bytes(pool: SlabPool) -> None:
    """Blocks are not zeroed by default (which is why scrub exists)."""
    assert b"S" * 64 == write_and_reread(pool)


def test_pool_scrub_zeroes_returned_blocks(make_pool: Callable[..., SlabPool]) -> None:
    """With SlabPool(scrub=True) the next borrower of a block reads zeros."""
    assert bytes(64) == write_and_reread(make_pool(scrub=True))


def test_arena_scrub_zeroes_returned_blocks(pool: SlabPool) -> None:
    """arena(scrub=True) zeroes that arena's blocks even when the pool does not scrub."""
    assert bytes(64) == write_and_reread(pool, scrub=True)


def test_scrub_applies_when_a_quarantined_block_returns(
    make_pool: Callable[..., SlabPool],
) -> None:
    """A quarantined block is zeroed when its last view dies, before anyone reuses it."""
    scrubbing = make_pool(scrub=True)
    arena = scrubbing.arena()
    view = arena.alloc(64)
    view[:] = b"S" * 64
    kept = view[:8]
    escaped_at = address(view)
    with pytest.warns(ViewEscapedWarning):
        arena.release()
    del kept

    with scrubbing.arena() as other:
        again = other.alloc(64)

        assert (escaped_at, bytes(64)) == (address(again), bytes(again))


def test_scrub_covers_every_chunk(make_pool: Callable[..., SlabPool]) -> None:
    """All bytes an arena handed out, over several chunks, are zero after release."""
    scrubbing = make_pool(scrub=True)
    with scrubbing.arena() as arena:
        for _ in range(300):
            arena.alloc(100)[:] = b"S" * 100
    with scrubbing.arena() as arena:
        views = [arena.alloc(100) for _ in range(300)]

        assert [bytes(100)] * 300 == [bytes(v) for v in views]


# -- GC, JSON, borrow, failures ---------------------------------------------------------


def test_unreleased_arena_warns_and_returns_blocks(pool: SlabPool) -> None:
    """An arena garbage-collected while OPEN warns with ResourceWarning and gives back."""

    def abandon() -> None:
        pool.arena().alloc(100)  # the arena is garbage when this returns

    with pytest.warns(ResourceWarning, match="never released"):
        abandon()

    stats = pool.stats()
    assert (0, 0) == (stats["lent_blocks"], stats["arenas_open"])


def test_unreleased_arena_in_a_cycle_is_released_by_gc(pool: SlabPool) -> None:
    """An open arena only reachable from a reference cycle warns and returns at gc."""
    box: list[object] = [pool.arena()]
    box.append(box)
    box[0].alloc(100)  # type: ignore[attr-defined]
    del box

    with pytest.warns(ResourceWarning, match="never released"):
        gc.collect()

    stats = pool.stats()
    assert (0, 0) == (stats["lent_blocks"], stats["arenas_open"])


def test_json_decodes_from_the_view(pool: SlabPool) -> None:
    """arena.json(view) decodes a document held in arena memory."""
    with pool.arena() as arena:
        view = arena.copy(b'{"items": [1, 2, 3], "name": "caf\xc3\xa9"}')

        assert {"items": [1, 2, 3], "name": "café"} == arena.json(view)


def test_json_error_from_the_view(pool: SlabPool) -> None:
    """Malformed JSON in the arena raises InvalidJSON with a 400 hint."""
    with pool.arena() as arena, pytest.raises(InvalidJSON) as info:
        arena.json(arena.copy(b'{"a": }'))

    assert (6, 400) == (info.value.position, info.value.status_hint)


def test_borrow_returns_the_object_on_release(pool: SlabPool) -> None:
    """arena.borrow(object_pool) hands out an object that goes back at release."""
    objects: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(16), maxsize=2)
    with pool.arena() as arena:
        buffer = arena.borrow(objects)
        out = objects.in_use

    assert (1, 0, 1) == (out, objects.in_use, objects.idle)
    assert objects.acquire() is buffer


def test_borrow_failure_on_release_is_reported(pool: SlabPool) -> None:
    """If an object cannot go back, release still finishes and raises ArenaPoolError."""
    objects: ObjectPool[bytearray] = ObjectPool(bytearray, maxsize=2)
    arena = pool.arena()
    buffer = arena.borrow(objects)
    objects.release(buffer)  # released behind the arena's back

    with pytest.raises(ArenaPoolError, match="could not be returned"):
        arena.release()

    assert ArenaState.RELEASED == arena.state
    assert_no_leaks(pool)


def test_failed_calls_leak_nothing(make_pool: Callable[..., SlabPool]) -> None:
    """Limit, size, type and budget errors leave the pool idle after release."""
    small = make_pool(budget="64KiB")
    with small.arena(limit="32KiB") as arena:
        arena.alloc(1000)
        with pytest.raises(ArenaLimitExceeded):
            arena.alloc(40 * KiB)
        with pytest.raises(InvalidSize):
            arena.alloc(0)
        with pytest.raises(NotBytesLike):
            arena.copy("s")
        with small.arena() as other:
            other.alloc(56 * KiB)
            with pytest.raises(BudgetExhausted):
                arena.alloc(20 * KiB)

    assert_no_leaks(small)
    assert 0 == small.stats()["lent_bytes"]


async def test_alloc_async_waits_for_budget(make_pool: Callable[..., SlabPool]) -> None:
    """alloc_async waits until another arena gives memory back."""
    small = make_pool(budget="64KiB")
    holder = small.arena()
    holder.alloc(64 * KiB)
    async with small.arena() as arena:
        task = asyncio.create_task(arena.alloc_async(40 * KiB, timeout=10))
        await wait_until(lambda: small.stats()["waiting"] == 1)
        holder.release()
        view = await task

        assert 40 * KiB == view.nbytes
    assert_no_leaks(small)


async def test_alloc_async_times_out(make_pool: Callable[..., SlabPool]) -> None:
    """alloc_async raises BudgetExhausted after its timeout and leaks nothing."""
    small = make_pool(budget="64KiB")
    with small.arena() as holder:
        holder.alloc(64 * KiB)
        async with small.arena() as arena:
            with pytest.raises(BudgetExhausted):
                await arena.alloc_async(100, timeout=0.01)
    assert_no_leaks(small)


async def test_alloc_async_on_arena_released_while_waiting(
    make_pool: Callable[..., SlabPool],
) -> None:
    """If the arena is released while alloc_async waits, the grant goes straight back."""
    small = make_pool(budget="64KiB")
    holder = small.arena()
    holder.alloc(64 * KiB)
    arena = small.arena()
    task = asyncio.create_task(arena.alloc_async(100, timeout=10))
    await wait_until(lambda: small.stats()["waiting"] == 1)
    arena.release()
    holder.release()

    with pytest.raises(ArenaReleasedError):
        await task
    assert_no_leaks(small)


@pytest.mark.parametrize("nbytes", [10 * KiB, 100 * KiB])
async def test_alloc_async_of_a_body_is_one_block(pool: SlabPool, nbytes: int) -> None:
    """alloc_async of a declared body size, as the adapter does, borrows one block."""
    async with pool.arena() as arena:
        body = await arena.alloc_async(nbytes)

        assert (nbytes, 1) == (body.nbytes, pool.stats()["lent_blocks"])
        assert pool.block_size(nbytes) == arena.reserved


async def test_alloc_async_uses_the_current_chunk(pool: SlabPool) -> None:
    """A small alloc_async that fits the current chunk borrows nothing new."""
    async with pool.arena() as arena:
        arena.alloc(10)
        await arena.alloc_async(10)

        assert 4096 == arena.reserved


# -- realloc: the growable allocation a body read uses -------------------------------


def test_realloc_grows_an_own_block_in_place_while_its_class_has_room(pool: SlabPool) -> None:
    """A 100 KiB allocation sits in a 112 KiB block: growing it to 110 KiB keeps the
    address and the bytes, and ``used`` follows the new size."""
    with pool.arena() as arena:
        view = arena.alloc(100 * KiB)
        view[:3] = b"abc"
        where = address(view)
        grown = arena.realloc(view, 110 * KiB)

        assert (where, b"abc") == (address(grown), bytes(grown[:3]))
        assert (110 * KiB, [112]) == (arena.used, lent_block_sizes(pool))


def test_realloc_moves_to_a_new_block_and_returns_the_old_one_at_once(pool: SlabPool) -> None:
    """Growing past the block's class moves the bytes into a block of the new size and
    gives the old block back before returning: the arena holds one block, not two."""
    with pool.arena() as arena:
        view = arena.alloc(100 * KiB)
        view[-4:] = b"tail"
        grown = arena.realloc(view, 300 * KiB)

        assert b"tail" == bytes(grown[100 * KiB - 4 : 100 * KiB])
        assert (300 * KiB, 1) == (arena.used, pool.stats()["lent_blocks"])
        assert 300 * KiB <= arena.reserved < 400 * KiB


def test_realloc_shrinks_in_place_and_frees_the_room_of_a_chunk(pool: SlabPool) -> None:
    """Shrinking the last bump of the current chunk gives its room back to the next
    allocation."""
    with pool.arena() as arena:
        first = arena.alloc(1000)
        first[:2] = b"hi"
        small = arena.realloc(first, 16)
        after = arena.alloc(8)

        assert (b"hi", 24) == (bytes(small[:2]), arena.used)
        assert address(small) + 16 == address(after)


def test_realloc_of_a_chunk_bump_moves_and_reclaims_its_room(pool: SlabPool) -> None:
    """A small allocation grown past its chunk moves; the chunk it was alone in goes
    back to the pool at once: one block lent until the next small allocation starts a
    new chunk."""
    with pool.arena() as arena:
        view = arena.alloc(100)
        view[:] = bytes(range(100))
        grown = arena.realloc(view, 200 * KiB)

        assert bytes(range(100)) == bytes(grown[:100])
        assert (200 * KiB, [224]) == (arena.used, lent_block_sizes(pool))
        arena.alloc(8)
        assert 200 * KiB + 8 == arena.used


def test_realloc_keeps_a_chunk_that_holds_other_allocations(pool: SlabPool) -> None:
    """A view that shares its chunk moves out; the chunk stays (the other view lives in
    it) and only the moved view's room comes back."""
    with pool.arena() as arena:
        first = arena.alloc(100)
        first[:1] = b"k"
        second = arena.alloc(100)
        grown = arena.realloc(second, 200 * KiB)
        after = arena.alloc(8)

        assert (b"k", 2) == (bytes(first[:1]), len(lent_block_sizes(pool)))
        assert address(first) + 104 == address(after)
        assert 200 * KiB + 108 == arena.used
        del grown


def test_realloc_counts_only_the_new_size_against_the_limit(pool: SlabPool) -> None:
    """Growing to the limit works although old and new exist together while bytes move;
    one byte more is ArenaLimitExceeded."""
    with pool.arena(limit=300 * KiB) as arena:
        view = arena.alloc(100 * KiB)
        grown = arena.realloc(view, 300 * KiB)
        with pytest.raises(ArenaLimitExceeded):
            arena.realloc(grown, 300 * KiB + 1)

        assert 300 * KiB == arena.used


def test_realloc_takes_only_the_most_recent_allocation(pool: SlabPool) -> None:
    """Resizing an older view would move memory under a newer one: refused."""
    with pool.arena() as arena:
        older = arena.alloc(100)
        arena.alloc(100)
        with pytest.raises(ArenaPoolError, match="most recent allocation"):
            arena.realloc(older, 200)


def test_realloc_on_a_released_arena_is_refused(pool: SlabPool) -> None:
    """realloc follows the state table like every other operation."""
    arena = pool.arena()
    view = arena.alloc(100)
    arena.release()
    with pytest.raises(ArenaReleasedError):
        arena.realloc(view, 200)


def test_free_gives_an_own_block_back_to_the_pool_at_once(pool: SlabPool) -> None:
    """A large allocation freed goes back to the pool before the arena ends: no block
    lent, ``used`` back to 0, the view dead; ``high_water`` still counts it."""
    with pool.arena() as arena:
        view = arena.alloc(300 * KiB)
        view[:4] = b"body"
        assert [320] == lent_block_sizes(pool)

        assert arena.free(view) is True
        assert ([], 0, 0) == (lent_block_sizes(pool), arena.used, arena.reserved)
        assert 300 * KiB == arena.high_water
        with pytest.raises(ValueError, match="released"):
            bytes(view)
        again = arena.alloc(300 * KiB)  # the arena goes on as before
        assert 300 * KiB == again.nbytes
    assert [] == lent_block_sizes(pool)


def test_free_of_a_chunk_bump_gives_its_room_back(pool: SlabPool) -> None:
    """A small allocation freed: its room in the current chunk serves the next one (the
    chunk stays: it is the arena's)."""
    with pool.arena() as arena:
        first = arena.alloc(100)
        first[:1] = b"k"
        second = arena.alloc(1000)
        where = address(second)

        assert arena.free(second) is True
        after = arena.alloc(8)
        assert (where, 108, b"k") == (address(after), arena.used, bytes(first[:1]))
        assert 1 == len(lent_block_sizes(pool))


def test_free_keeps_a_view_that_something_still_holds(pool: SlabPool) -> None:
    """A view with a live buffer export (a decoder's zero-copy value such as msgspec's
    Raw; here a PickleBuffer) is not freed: free() says so, its block stays lent, and
    the release reports the escape."""
    arena = pool.arena()
    view = arena.alloc(300 * KiB)
    export = pickle.PickleBuffer(view)
    assert arena.free(view) is False
    assert ([320], 300 * KiB) == (lent_block_sizes(pool), arena.used)
    with pytest.warns(ViewEscapedWarning):
        arena.release()
    assert 1 == arena.escapes
    del export, view
    assert_no_leaks(pool)


def test_free_quarantines_a_block_a_slice_still_reads(pool: SlabPool) -> None:
    """A slice of the freed view outlives it: the block is quarantined at once (never
    lent to another borrower while the slice lives), with the warning of a release."""
    with pool.arena() as arena:
        view = arena.alloc(300 * KiB)
        view[:4] = b"mine"
        kept = view[:4]
        with pytest.warns(ViewEscapedWarning, match="after free") as caught:
            assert arena.free(view) is False
        assert __file__ == caught[0].filename  # it names the caller's line
        stats = pool.stats()
        assert (0, 1, 1) == (stats["lent_blocks"], stats["quarantined_blocks"], arena.escapes)
        with pool.arena() as other:
            assert address(other.alloc(300 * KiB)) != address(kept)
        assert b"mine" == bytes(kept)
    del kept
    assert_no_leaks(pool)


def test_free_takes_only_the_most_recent_allocation(pool: SlabPool) -> None:
    """Freeing an older view would leave a hole under a newer one: refused, and after
    release, refused by the state table."""
    arena = pool.arena()
    older = arena.alloc(100)
    newer = arena.alloc(100)
    with pytest.raises(ArenaPoolError, match="most recent allocation"):
        arena.free(older)
    arena.release()
    with pytest.raises(ArenaReleasedError):
        arena.free(newer)


async def test_realloc_async_waits_for_budget_and_leaves_no_block_behind(
    make_pool: Callable[..., SlabPool],
) -> None:
    """With the budget full, realloc_async waits until budget comes back; after the
    release every block is back in the pool."""
    small = make_pool("512KiB", mid_classes=4)  # 300 KiB takes 320 KiB, 64 KiB fits beside it
    holder = small.arena()
    held = holder.alloc(300 * KiB)
    arena = small.arena()
    view = arena.alloc(64 * KiB)
    task = asyncio.ensure_future(arena.realloc_async(view, 200 * KiB, timeout=5.0))
    await asyncio.sleep(0)
    assert not task.done()
    del held
    holder.release()
    grown = await task

    assert 200 * KiB == grown.nbytes
    del grown
    arena.release()
    assert_no_leaks(small)
