"""A lend whose pages were given back is faulted in before it is filled, in one call.

The pages resident are read from the kernel (``mincore`` through the breakdown's slab
reading), before the allocation is written: with ``populate`` they are there already,
without it none are. Kernels older than 5.14 lack ``MADV_POPULATE_WRITE``: there the
call must be a no-op that is not asked again.
"""

from __future__ import annotations

import os

import pytest

from arenapool import SlabPool, _slab
from arenapool._breakdown import read_breakdown

MiB = 1024 * 1024


def kernel_has_populate() -> bool:
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 14)


def lent_resident(pool: SlabPool) -> int:
    """Bytes of the pool's lent blocks resident now (``mincore``)."""
    reading = read_breakdown([pool])
    assert "mincore" == reading.details["slab_source"]
    return int(reading.parts["slabs_lent"])


@pytest.mark.parametrize("populate", [True, False])
def test_a_cold_allocation_is_resident_before_it_is_written(populate: bool) -> None:
    """With populate, a 1 MiB allocation from a block never touched (and again from one
    given back) is resident before a byte of it is written; without, none of it is."""
    pool = SlabPool("64MiB", populate=populate, decay=None, retain=None, calibrate=False)
    try:
        for _ in range(2):  # a fresh slab's block, then the same block given back
            arena = pool.arena()
            view = arena.alloc(MiB)
            resident = lent_resident(pool)
            if populate and kernel_has_populate():
                assert resident >= MiB, resident
            else:
                assert 0 == resident
            view[:] = b"\x5a" * MiB  # the fill works as ever over populated pages
            assert view[MiB - 1] == 0x5A
            del view
            arena.release()
            assert pool.trim() >= MiB  # every idle block given back: the next is cold
        # a kernel without the advice refuses it once, and is not asked again
        assert _slab._populate_works is kernel_has_populate() or not populate
    finally:
        pool.close()


def test_a_warm_block_and_a_small_allocation_are_left_to_the_fill() -> None:
    """A block lent again with its pages kept is not fresh (no call for it), and an
    allocation under POPULATE_MIN from a cold block is not populated."""
    pool = SlabPool("64MiB", decay=None, retain=None, calibrate=False)
    try:
        arena = pool.arena()
        view = arena.alloc(MiB)
        view[:] = b"\x01" * MiB
        del view
        arena.release()
        arena = pool.arena()
        arena.alloc(MiB)
        (block,) = arena._blocks
        assert not block.fresh  # warm: its pages stayed resident
        arena.release()
        pool.trim()
        arena = pool.arena()
        arena.alloc(_slab.POPULATE_MIN // 2)  # a chunk of a cold block, not filled
        (block,) = arena._blocks
        assert block.fresh
        assert 0 == lent_resident(pool)
        arena.release()
    finally:
        pool.close()


def test_populate_stays_inside_the_block() -> None:
    """Asked for more than the block holds, populate covers the block and no more."""
    pool = SlabPool("64MiB", decay=None, retain=None, calibrate=False)
    try:
        arena = pool.arena()
        views = [arena.alloc(MiB) for _ in range(3)]
        blocks = list(arena._blocks)
        last = max(blocks, key=lambda b: b.offset)
        done = last.populate(10 * MiB)
        if kernel_has_populate():
            assert done == last.size
        else:
            assert 0 == done
        del views
        arena.release()
    finally:
        pool.close()


async def test_a_waited_for_allocation_is_populated_too() -> None:
    """alloc_async takes the same path: a cold 1 MiB block is resident before the fill."""
    pool = SlabPool("64MiB", decay=None, retain=None, calibrate=False)
    try:
        arena = pool.arena()
        view = await arena.alloc_async(MiB)
        resident = lent_resident(pool)
        assert (resident >= MiB) is kernel_has_populate(), resident
        del view
        arena.release()
    finally:
        pool.close()
