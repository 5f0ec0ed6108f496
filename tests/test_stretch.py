"""A lend stretches to a larger class's warm block when its own class has none warm.

Faults are read from ``resource.getrusage(RUSAGE_SELF).ru_minflt``, as in
``test_warm.py``: a lend served by a warm block of a larger class touches no page anew,
where a cold block of its own class would fault in every page the body writes.
"""

from __future__ import annotations

import ctypes
import resource

import pytest

from arenapool import BudgetExhausted, InvalidSize, SlabPool
from arenapool._sizeclasses import STRETCH_FROM
from arenapool._slab import Block

KiB = 1024
MiB = 1024 * KiB
PAGE = resource.getpagesize()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fill(block: Block, nbytes: int) -> None:
    assert block.view is not None
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block.view)), 0xCD, nbytes)


def warm(pool: SlabPool, nbytes: int) -> int:
    """Lend a block for ``nbytes``, write all of it, give it back; its block size."""
    block = pool.lend(nbytes)
    fill(block, nbytes)
    size = block.size
    pool.give_back([block])
    return size


def classes(pool: SlabPool) -> dict[int, dict[str, int]]:
    return {c["size"]: c for c in pool.stats()["classes"]}


def quiet_pool(**kwargs: object) -> SlabPool:
    """A pool whose maintenance thread never runs: no decay, no retain."""
    return SlabPool(decay=None, retain=None, **kwargs)  # type: ignore[arg-type]


def test_a_lend_with_no_warm_block_takes_a_larger_warm_one_and_faults_nothing() -> None:
    with quiet_pool() as pool:
        big = warm(pool, 2_000_000)  # the 2 MiB class now has a warm idle block
        mapped = pool.stats()["mapped_bytes"]
        before = minor_faults()
        block = pool.lend(700 * KiB)  # the 1 MiB class has no block at all
        fill(block, 700 * KiB)
        faults = minor_faults() - before
        assert block.size == big == 2 * MiB
        assert pool.stats()["mapped_bytes"] == mapped  # nothing new mapped
        assert faults < (700 * KiB // PAGE) // 4  # a cold block would fault ~175 pages
        assert classes(pool)[2 * MiB]["lent_blocks"] == 1
        assert pool.lent_bytes == 2 * MiB  # charged whole
        pool.give_back([block])
        # it goes back to its own class's free stack
        assert classes(pool)[2 * MiB]["idle_blocks"] == 1
        assert pool.lent_bytes == 0


def test_a_class_with_a_warm_block_of_its_own_uses_it() -> None:
    with quiet_pool() as pool:
        one = pool.lend(700 * KiB)
        two = pool.lend(2_000_000)
        fill(one, 700 * KiB)
        fill(two, 2_000_000)
        pool.give_back([one, two])
        block = pool.lend(700 * KiB)
        assert block.size == 1 * MiB
        pool.give_back([block])


def test_no_stretch_past_the_factor_below_256k_or_with_stretch_1() -> None:
    with quiet_pool(stretch=2) as pool:
        warm(pool, 4 * MiB)
        block = pool.lend(700 * KiB)  # 4 MiB is more than twice 1 MiB
        assert block.size == 1 * MiB
        pool.give_back([block])
    with quiet_pool() as pool:
        warm(pool, STRETCH_FROM)
        block = pool.lend(100 * KiB)  # the 128 KiB class is below STRETCH_FROM
        assert block.size == 128 * KiB
        pool.give_back([block])
    with quiet_pool(stretch=1) as pool:
        warm(pool, 2_000_000)
        block = pool.lend(700 * KiB)
        assert block.size == 1 * MiB
        assert pool.stats()["stretch"] == 1.0
        pool.give_back([block])


def test_a_decommitted_larger_block_is_no_warm_block() -> None:
    with quiet_pool() as pool:
        warm(pool, 2_000_000)
        assert pool.trim(keep_reserve=False) > 0  # the 2 MiB block's pages go back
        block = pool.lend(700 * KiB)
        assert block.size == 1 * MiB
        pool.give_back([block])


def test_past_half_the_budget_a_lend_takes_its_own_class() -> None:
    with quiet_pool(budget="8MiB") as pool:
        warm(pool, 2_000_000)
        held = pool.lend(3 * MiB)  # 3 of 8 MiB out: a 2 MiB block would pass half
        block = pool.lend(700 * KiB)
        assert block.size == 1 * MiB
        pool.give_back([block, held])
    with quiet_pool(budget="8MiB") as pool:
        warm(pool, 2_000_000)
        block = pool.lend(700 * KiB)  # under half the budget the same lend stretches
        assert block.size == 2 * MiB
        # and is charged whole: a 7 MiB block would fit beside 1 MiB out, not beside 2
        with pytest.raises(BudgetExhausted):
            pool.lend(6 * MiB + 1)
        pool.give_back([block])


async def test_an_async_lend_stretches_too() -> None:
    with quiet_pool() as pool:
        warm(pool, 2_000_000)
        block = await pool.lend_async(700 * KiB)
        assert block.size == 2 * MiB
        pool.give_back([block])


def test_stretch_below_1_is_refused() -> None:
    with pytest.raises(InvalidSize, match="stretch"):
        SlabPool(stretch=0.5)
