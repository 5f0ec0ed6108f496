"""Hot blocks stay hot: reuse is LIFO, committed, and nothing decommits on the request path.

Page faults are read from ``resource.getrusage(RUSAGE_SELF).ru_minflt`` (the kernel's
count of minor faults of this process). A warm cycle touches none of its block's pages
anew: a block given back between two requests would fault all of them on the next fill.
The count is the whole process's, so a stray fault of the interpreter's own heap is
allowed for; a full block's worth is not.
"""

from __future__ import annotations

import asyncio
import ctypes
import resource
import threading
import time

import pytest
from _governed import hand_calibrated

from arenapool import InvalidSize, SlabPool, _decay, _slab

KiB = 1024
MiB = 1024 * KiB


PAGES_PER_64K = 64 * KiB // resource.getpagesize()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fill(block: _slab.Block, nbytes: int) -> None:
    """Write the first ``nbytes`` of ``block``, as a body read into it would."""
    assert block.view is not None
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block.view)), 0xAB, nbytes)


def touch(pool: SlabPool, nbytes: int) -> None:
    """One request's worth: lend a block, write all of it, give it back."""
    block = pool.lend(nbytes)
    fill(block, nbytes)
    pool.give_back([block])


def test_a_warm_64k_cycle_causes_no_minor_fault() -> None:
    """Lending, filling and giving back a 64 KiB block, once warm, faults none of its pages:
    the same block comes back (LIFO) with its pages still committed."""
    with SlabPool("64MiB") as pool:  # the defaults: decay 10 s, retain 2 MiB
        for _ in range(20):
            touch(pool, 64 * KiB)
        first = pool.lend(64 * KiB)
        pool.give_back([first])
        before = minor_faults()
        for _ in range(200):
            touch(pool, 64 * KiB)
        faults = minor_faults() - before
        again = pool.lend(64 * KiB)
        pool.give_back([again])
        returned = pool.stats()["returned_bytes"]

    # The fault count is the whole process's: the interpreter's own heap may fault a page
    # in now and then. A block given back to the OS even once would fault all its pages
    # (16 at 4 KiB) on the next fill, so fewer than that means the block stayed committed;
    # the pool's own counter says no byte was returned either.
    assert (True, 0, True) == (faults < PAGES_PER_64K, returned, first is again), faults


def test_give_back_never_decommits_even_past_retain() -> None:
    """Past the retain cap, give_back leaves the block committed and only wakes the
    maintenance thread, which decommits it off the request path. (Here that thread is
    kept from starting, so what give_back itself did is what the test sees.)"""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # any thread: none is started
        block = pool.lend(64 * KiB)
        assert block.view is not None
        block.view[:] = b"\xcd" * (64 * KiB)
        pool.give_back([block])
        seen = (block.committed, pool._maintenance.is_set(), pool.stats()["returned_bytes"])
        _decay.maintain(pool, time.monotonic(), tick=False)  # what the thread then does

        assert (True, True, 0) == seen
        assert (False, 64 * KiB) == (block.committed, pool.stats()["returned_bytes"])


async def test_where_a_loop_runs_retain_is_held_by_a_pass_on_that_loop() -> None:
    """Past the retain cap, a give_back made while an event loop runs in its thread
    schedules the pass on that loop, as a callback of its own after the caller's code,
    and does not wake the maintenance thread: a thread's pass costs the loop a GIL
    hand-off, which under CPU contention held the loop until both threads were
    scheduled again. give_back itself still decommits nothing. A second give_back
    before the pass has run adds no second pass."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # any thread: none is started
        first, second = pool.lend(64 * KiB), pool.lend(64 * KiB)
        for block in (first, second):
            assert block.view is not None
            block.view[:] = b"\xcd" * (64 * KiB)
        pool.give_back([first])
        pool.give_back([second])
        seen = (
            first.committed,
            second.committed,
            pool._maintenance.is_set(),
            pool.stats()["returned_bytes"],
        )
        await asyncio.sleep(0)  # the loop runs the callbacks already due: the one pass

        assert (True, True, False, 0) == seen
        assert (False, False, 128 * KiB) == (
            first.committed,
            second.committed,
            pool.stats()["returned_bytes"],
        )


def test_a_pass_left_on_a_loop_that_stopped_does_not_hold_retain_back() -> None:
    """A pass due on a loop that stopped before running it (here: the second return
    came within WAKE_GAP of the first pass, so its pass was due later) does not keep
    later returns from asking for one: without a running loop, give_back wakes the
    maintenance thread."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # any thread: none is started
        first, second, third = (pool.lend(64 * KiB) for _ in range(3))
        for block in (first, second, third):
            assert block.view is not None
            block.view[:] = b"\xcd" * (64 * KiB)

        async def two_returns() -> None:
            pool.give_back([first])
            await asyncio.sleep(0)  # its pass runs
            pool.give_back([second])  # within WAKE_GAP of that pass: one is due later

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(two_returns())
        finally:
            loop.close()
        stranded = (first.committed, second.committed, pool._maintenance.is_set())
        pool.give_back([third])

        assert (False, True, False) == stranded
        assert (True, True) == (third.committed, pool._maintenance.is_set())


def test_the_reserve_follows_the_traffic_not_the_burst() -> None:
    """Each class's warm reserve is the (upper) median of its recent window peaks: one
    burst of 20 blocks does not keep 20 warm once the traffic needs 2, and retain then
    decommits the rest while the 2 stay committed."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # only these windows, no thread's
        cls = pool._classes[pool._sizes.index(64 * KiB)]
        burst = [pool.lend(64 * KiB) for _ in range(20)]
        pool.give_back(burst)
        _decay.maintain(pool, time.monotonic())  # window 1: peak 20
        reserves = [cls.reserve]
        for _ in range(4):  # windows 2-5: two at a time
            pair = [pool.lend(64 * KiB), pool.lend(64 * KiB)]
            pool.give_back(pair)
            _decay.maintain(pool, time.monotonic())
            reserves.append(cls.reserve)
        with pool._lock:
            committed = sum(1 for b in cls.free if b.committed)

    assert ([20, 20, 2, 2, 2], 2) == (reserves, committed)


def test_a_class_keeps_its_recent_peak_warm_for_a_window_or_two() -> None:
    """A reserve is the median of the window peaks, and a steady load peaks above it in
    about half of its windows. The blocks between the median and the recent peak (this
    window's or the one before's) stay committed through retain, so the next peak finds
    them warm: 5 blocks out again fault none of their pages. Once a whole window has
    peaked lower, they go back (and the median, with two peaks of 5 among four, was 5
    for the window between)."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # only these windows, no thread's
        cls = pool._classes[pool._sizes.index(64 * KiB)]

        def cycle(lends: int) -> None:
            blocks = [pool.lend(64 * KiB) for _ in range(lends)]
            for block in blocks:
                fill(block, 64 * KiB)
            pool.give_back(blocks)

        def window(lends: int) -> tuple[int, int]:
            cycle(lends)
            _decay.maintain(pool, time.monotonic())  # a tick: calibrates, holds retain
            with pool._lock:
                return cls.reserve, sum(1 for b in cls.free if b.committed)

        peaked = [window(n) for n in (3, 3, 5)][-1]
        _decay.maintain(pool, time.monotonic(), tick=False)  # a pass between ticks
        before = minor_faults()
        cycle(5)  # the next peak
        faults = minor_faults() - before
        after = [window(n) for n in (3, 3, 3)]

    # 5 blocks faulted in again would be 2 blocks' pages at least (32 at 4 KiB); any
    # fault under one block's is the interpreter's own
    assert ((3, 5), True) == (peaked, faults < PAGES_PER_64K), faults
    assert [(5, 5), (3, 3), (3, 3)] == after


def test_a_reserve_keeps_a_warm_cycle_fault_free_under_retain_zero() -> None:
    """With retain=0 (keep nothing idle committed), a calibrated class still keeps the
    block its traffic uses warm: after one maintenance pass, cycles fault none of its pages."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        touch(pool, 64 * KiB)
        _decay.maintain(pool, time.monotonic())  # calibrates: this class needs 1 block
        touch(pool, 64 * KiB)
        _decay.maintain(pool, time.monotonic(), tick=False)  # retain keeps the reserve
        returned_before = pool.stats()["returned_bytes"]
        before = minor_faults()
        for _ in range(100):
            touch(pool, 64 * KiB)
        faults = minor_faults() - before
        returned = pool.stats()["returned_bytes"] - returned_before

    # As above: fewer faults than one block's pages (any other page fault is the
    # interpreter's), and the pool returned nothing to the OS while the cycles ran.
    assert (True, 0) == (faults < PAGES_PER_64K, returned), faults


def test_prealloc_is_a_floor_for_the_calibrated_reserve() -> None:
    """A class preallocated with 8 blocks keeps a reserve of 8 however little it is used."""
    with SlabPool("64MiB", decay=None, retain=0, prealloc={"64KiB": 8}) as pool:
        cls = pool._classes[pool._sizes.index(64 * KiB)]
        for _ in range(3):
            touch(pool, 64 * KiB)
            _decay.maintain(pool, time.monotonic())

    assert (8, 8) == (cls.base_reserve, cls.reserve)


def test_returns_the_reserve_keeps_warm_do_not_wake_the_maintenance_thread() -> None:
    """Once a maintenance pass has kept a class's reserve committed past ``retain``,
    returning blocks the reserve covers does not wake the thread again (each wake is a
    GIL hand-off on the request path); a block beyond the reserve does."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # any thread: none is started
        touch(pool, 64 * KiB)
        woke_first = pool._maintenance.is_set()
        _decay.maintain(pool, time.monotonic())  # calibrates: 1 block kept warm
        pool._maintenance.clear()
        for _ in range(10):
            touch(pool, 64 * KiB)
        woke_within = pool._maintenance.is_set()
        pair = [pool.lend(64 * KiB), pool.lend(64 * KiB)]
        for block in pair:
            assert block.view is not None
            block.view[:] = b"\x01" * (64 * KiB)
        pool.give_back(pair)
        woke_beyond = pool._maintenance.is_set()

    assert (True, False, True) == (woke_first, woke_within, woke_beyond)


def test_a_pause_keeps_the_reserve_and_a_long_idle_resets_it() -> None:
    """Windows without a lend leave the reserve alone (a short pause finds the blocks
    warm); QUIET_WINDOWS of them in a row reset it to its floor and forget the history,
    so the first active window after sets it on its own."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # only these windows, no thread's
        cls = pool._classes[pool._sizes.index(64 * KiB)]

        def window(lends: int) -> int:
            blocks = [pool.lend(64 * KiB) for _ in range(lends)]
            pool.give_back(blocks)
            _decay.maintain(pool, time.monotonic())
            return cls.reserve

        busy = [window(3) for _ in range(3)]
        paused = [window(0) for _ in range(_decay.QUIET_WINDOWS)]
        back = window(2)

    assert ([3, 3, 3], [3] * (_decay.QUIET_WINDOWS - 1) + [0], 2) == (busy, paused, back)


def test_a_reserve_counts_the_blocks_lent_now() -> None:
    """A class whose traffic has 3 blocks out at once keeps 3 committed in all: with 2
    lent, retain keeps 1 idle block warm, not 3 beside the 2 (the reserve is what the
    traffic has out at once, lent blocks included)."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # only these passes, no thread's
        cls = pool._classes[pool._sizes.index(64 * KiB)]
        five = [pool.lend(64 * KiB) for _ in range(5)]
        pool.give_back(five)  # 5 idle blocks committed
        for lends in (0, 3, 3):  # windows that peak at 5, 3, 3: a reserve of 3
            blocks = [pool.lend(64 * KiB) for _ in range(lends)]
            pool.give_back(blocks)
            with pool._lock:  # calibrates without the retain pass a tick holds
                _decay.calibrate_locked(pool, time.monotonic())
        held = [pool.lend(64 * KiB) for _ in range(2)]
        _decay.maintain(pool, time.monotonic(), tick=False)  # retain: keep what the reserve covers
        with pool._lock:
            warm = sum(1 for b in cls.free if b.committed)
        pool.give_back(held)

    assert (3, 3, 1) == (cls.reserve, cls.last_peak, warm)


def test_the_reserves_together_fit_the_most_bytes_lent_at_once() -> None:
    """Classes that peak at different moments do not each keep their own peak warm: in a
    window where four 64 KiB blocks were out together and, later, two 256 KiB ones, the
    pool never had more than 512 KiB out. The reserves fit in that, smallest class
    first: four 64 KiB blocks (256 KiB) and one 256 KiB block, not two."""
    with SlabPool("64MiB", decay=None, retain=0) as pool:
        pool._maintainer = threading.current_thread()  # only these windows, no thread's
        small = pool._classes[pool._sizes.index(64 * KiB)]
        large = pool._classes[pool._sizes.index(256 * KiB)]
        four = [pool.lend(64 * KiB) for _ in range(4)]
        pool.give_back(four)
        two = [pool.lend(256 * KiB) for _ in range(2)]
        pool.give_back(two)
        _decay.maintain(pool, time.monotonic())
        stats = pool.stats()

    assert (4, 1) == (small.reserve, large.reserve)
    assert 512 * KiB == stats["high_water_lent_bytes"]


def test_calibrate_off_keeps_each_reserve_at_its_floor() -> None:
    """With ``calibrate=False`` a class that had 3 blocks out at once keeps its reserve at
    the floor its ``prealloc`` set (1), and ``retain=0`` then leaves that one block
    committed, where a calibrating pool keeps all 3 warm."""

    def after_three_at_once(calibrate: bool) -> tuple[int, int, bool]:
        floor = {"64KiB": 1}
        with SlabPool("64MiB", decay=None, retain=0, prealloc=floor, calibrate=calibrate) as pool:
            pool._maintainer = threading.current_thread()  # only these passes
            cls = pool._classes[pool._sizes.index(64 * KiB)]
            three = [pool.lend(64 * KiB) for _ in range(3)]
            pool.give_back(three)
            _decay.maintain(pool, time.monotonic())  # a tick: calibrates, unless off
            _decay.maintain(pool, time.monotonic(), tick=False)  # retain=0 holds
            with pool._lock:
                warm = sum(1 for b in cls.free if b.committed)
            return cls.reserve, warm, pool.stats()["calibrate"]

    assert ((3, 3, True), (1, 1, False)) == (
        after_three_at_once(calibrate=True),
        after_three_at_once(calibrate=False),
    )


def test_the_lean_pool_faults_a_reused_block_in_again() -> None:
    """``retain=0, calibrate=False`` is the leanest pool: once a maintenance pass has run,
    the block a 64 KiB cycle used is back with the OS, and the next cycle faults all its
    pages in again (the trade: the calibrating pool's warm cycle faults none)."""
    with SlabPool("64MiB", decay=None, retain=0, calibrate=False) as pool:
        pool._maintainer = threading.current_thread()  # only these passes
        touch(pool, 64 * KiB)
        _decay.maintain(pool, time.monotonic())  # a tick: no calibration
        _decay.maintain(pool, time.monotonic(), tick=False)
        returned = pool.stats()["returned_bytes"]
        before = minor_faults()
        touch(pool, 64 * KiB)
        faults = minor_faults() - before

    # the count is the whole process's: other faults only add to it
    assert (64 * KiB, True) == (returned, faults >= PAGES_PER_64K), faults


def test_huge_page_blocks_keep_nothing_warm_and_fault_back_cheaply() -> None:
    """Where the kernel gives huge pages, an idle 4 MiB block (its class in huge pages)
    is not kept warm: give_back leaves it committed (nothing is decommitted on the
    request path) and asks for a pass, and the pass gives it back whatever ``retain``
    allows, while a 64 KiB block stays warm under the same cap. Its next fill faults
    in 2 MiB at a time: a few faults, not 1,024. Made with ``keep_huge_warm=True`` the
    pool keeps it warm like any other block, and where the kernel gives no huge pages
    every class is kept warm. (``warm_rate=None``: no class is cold for its rate; a
    ``retain`` of 8 MiB holds both idle blocks, so only coldness gives one back.)"""

    def cycle(keep_huge_warm: bool) -> tuple[bool, bool, int, int, bool, object]:
        with SlabPool(
            "64MiB", decay=None, retain="8MiB", keep_huge_warm=keep_huge_warm, warm_rate=None
        ) as pool:
            pool._maintainer = threading.current_thread()  # only these passes
            pool._maintenance.clear()
            touch(pool, 64 * KiB)
            small = pool.lend(64 * KiB)
            pool.give_back([small])
            touch(pool, 4 * MiB)
            large = pool.lend(4 * MiB)
            asked = pool._maintenance.is_set()
            pool.give_back([large])
            asked = asked or pool._maintenance.is_set()
            committed_after_return = large.committed
            _decay.maintain(pool, time.monotonic())  # a tick, as the thread's
            returned = pool.stats()["returned_bytes"]
            before = minor_faults()
            touch(pool, 4 * MiB)
            faults = minor_faults() - before
            return (
                committed_after_return,
                asked,
                returned,
                faults,
                small.committed,
                min(pool.stats()["cold_classes"], default=None),
            )

    cold = cycle(keep_huge_warm=False)
    warm = cycle(keep_huge_warm=True)
    pages = 4 * MiB // resource.getpagesize()
    # the fault counts are the whole process's: other faults only add to them
    assert (True, 0, True, None) == (warm[0], warm[2], warm[4], warm[5])
    assert warm[3] < pages // 8
    if not _slab.thp_available():
        assert cold[:3] == warm[:3]
        assert cold[5] is None
        return
    assert (True, True, 4 * MiB, True, 2 * MiB) == (cold[0], cold[1], cold[2], cold[4], cold[5])
    assert cold[3] < pages // 8  # huge pages: 2 faults and a clear each, not 1,024


def test_a_class_lent_seldom_keeps_nothing_warm() -> None:
    """``warm_rate``: at a tick, a class lent fewer than ``warm_rate`` blocks a second
    over the window keeps nothing warm beyond its floor, and the pass that follows gives
    its idle blocks back whatever ``retain`` allows; a class lent often keeps its
    calibrated reserve. A window with no lend at all (a pause) changes no class's
    standing, and ``warm_rate=None`` keeps every reserve."""

    def run(warm_rate: float | None) -> tuple[list[int], bool, bool, list[int], bool]:
        with SlabPool("64MiB", decay=None, warm_rate=warm_rate) as pool:
            pool._maintainer = threading.current_thread()  # only these passes
            start = time.monotonic()
            pool._calibrated_at = start
            for _ in range(40):  # 64 KiB: 40 lends in the window
                touch(pool, 64 * KiB)
            touch(pool, 256 * KiB)  # 256 KiB: one
            hot = pool.lend(64 * KiB)
            seldom = pool.lend(256 * KiB)
            pool.give_back([hot, seldom])
            # a one-second window, whatever the wall clock says
            _decay.maintain(pool, start + 1.0)
            cold = sorted(set(pool.stats()["cold_classes"]) & {64 * KiB, 256 * KiB})
            kept = (hot.committed, seldom.committed)
            _decay.maintain(pool, start + 2.0)  # a window without a lend: a pause
            after_pause = sorted(set(pool.stats()["cold_classes"]) & {64 * KiB, 256 * KiB})
            return cold, kept[0], kept[1], after_pause, hot.committed

    assert ([256 * KiB], True, False, [256 * KiB], True) == run(20.0)
    assert ([], True, True, [], True) == run(None)
    with pytest.raises(InvalidSize, match="warm_rate must be None or zero or more"):
        SlabPool("64MiB", warm_rate=-1.0)


def test_a_lend_that_stretches_counts_for_the_class_it_asked_for() -> None:
    """``warm_rate`` reads the traffic, not where the blocks came from: 40 lends of a
    1 MiB class that each stretched into a warm 2 MiB block count for the 1 MiB class, so
    at the tick the 2 MiB class, asked for once, keeps nothing warm and its block goes
    back; counted where the block came from, the stretch would keep the larger class hot
    and warm on the smaller one's traffic."""
    with SlabPool("64MiB", decay=None, warm_rate=20.0) as pool:
        pool._maintainer = threading.current_thread()  # only these passes
        start = time.monotonic()
        pool._calibrated_at = start
        touch(pool, 2 * MiB)
        stretched = 0
        for _ in range(40):
            block = pool.lend(1 * MiB)
            stretched += block.size == 2 * MiB
            pool.give_back([block])
        _decay.maintain(pool, start + 1.0)  # a one-second window
        cold = set(pool.stats()["cold_classes"])
        returned = pool.stats()["returned_bytes"]

    assert (40, True, False, 2 * MiB) == (stretched, 2 * MiB in cold, 1 * MiB in cold, returned)


def lend_in_waves(pool: SlabPool, sizes: list[int], waves: int) -> None:
    """``waves`` times: lend one block of each size in ``sizes`` at once, fill them, give
    them back (so a size listed three times has three blocks out at once)."""
    for _ in range(waves):
        blocks = [pool.lend(size) for size in sizes]
        for block, size in zip(blocks, sizes, strict=True):
            fill(block, size)
        pool.give_back(blocks)


def test_a_class_with_a_small_share_of_the_lends_keeps_no_calibrated_reserve() -> None:
    """``warm_share``: at a tick, a class asked for less than ``warm_share`` of the pool's
    lends over the recent windows keeps only its floor, and ``retain`` decides whether its
    idle blocks stay warm; a class the traffic leans on keeps its calibrated reserve,
    however little ``retain`` allows. With ``retain=0``: a steady 1 MiB stream with three
    bodies out at once keeps its three blocks warm while the 64 KiB body that came once
    in 61 lends has its block given back; the same traffic spread evenly over eight
    classes (an eighth of the lends each) keeps none warm, and ``warm_share=None``
    keeps every class's reserve. The share reads no rate: the same lends over a window a
    hundred times longer leave the same classes minor. A window without a lend (a pause)
    changes no class's standing."""

    def run(
        sizes: list[int], share: float | None, window: float, odd: int | None = None
    ) -> tuple[list[int], int, list[int], int, bool | None]:
        """Twenty waves of ``sizes`` (and one lend of ``odd`` after them) in a window of
        ``window`` seconds, then a window without a lend: the minor classes among the
        sizes lent and the idle committed bytes after each, and whether the odd block
        is still committed."""
        lent = {*sizes, odd} if odd else set(sizes)
        with SlabPool("64MiB", decay=None, retain=0, warm_share=share) as pool:
            pool._maintainer = threading.current_thread()  # only these passes
            start = time.monotonic()
            pool._calibrated_at = start
            lend_in_waves(pool, sizes, 20)
            odd_block = pool.lend(odd) if odd else None
            if odd_block is not None:
                pool.give_back([odd_block])
            _decay.maintain(pool, start + window)
            minor = sorted(set(pool.stats()["minor_classes"]) & lent)
            kept = pool.stats()["idle_committed_bytes"]
            _decay.maintain(pool, start + 2 * window)  # a window without a lend: a pause
            return (
                minor,
                kept,
                sorted(set(pool.stats()["minor_classes"]) & lent),
                pool.stats()["idle_committed_bytes"],
                None if odd_block is None else odd_block.committed,
            )

    steady = [1 * MiB] * 3
    # the odd body: one lend in the window, beside 60 of 1 MiB
    assert ([64 * KiB], 3 * MiB, [64 * KiB], 3 * MiB, False) == run(steady, 0.25, 1.0, 64 * KiB)
    for window in (1.0, 100.0):
        assert ([], 3 * MiB, [], 3 * MiB, None) == run(steady, 0.25, window)
    spread = [64 * KiB << i for i in range(5)] + [5 * MiB // 4, 3 * MiB // 2, 7 * MiB // 4]
    for window in (1.0, 100.0):
        assert (spread, 0, spread, 0, None) == run(spread, 0.25, window)
    assert ([], sum(spread), [], sum(spread), None) == run(spread, None, 1.0)
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidSize, match="warm_share must be None or a share"):
            SlabPool("64MiB", warm_share=bad)


def test_a_pool_says_whether_its_sizes_are_spread() -> None:
    """``SlabPool.spread``: at a tick with lends, True when no size class took half of
    the pool's recent lends (a mix of sizes), False under one steady size, and a window
    without a lend (a pause) leaves the verdict as it was; ``warm_share`` does not
    matter. False before the first tick, and with ``calibrate=False`` (no standings)."""

    def verdicts(sizes: list[int], share: float | None, calibrate: bool = True) -> list[bool]:
        with SlabPool("64MiB", decay=None, retain=0, warm_share=share, calibrate=calibrate) as pool:
            start = hand_calibrated(pool)  # only these passes
            seen = [pool.spread]
            lend_in_waves(pool, sizes, 20)
            _decay.maintain(pool, start + 1.0)
            seen.append(pool.spread)
            _decay.maintain(pool, start + 2.0)  # no lend in this window
            seen.append(pool.spread)
            seen.append(pool.stats()["spread"])
            return seen

    steady = [1 * MiB] * 3
    two = [1 * MiB, 1 * MiB, 256 * KiB]  # one class takes two thirds
    spread = [64 * KiB << i for i in range(5)] + [5 * MiB // 4, 3 * MiB // 2, 7 * MiB // 4]
    for share in (0.25, None):
        assert [False, False, False, False] == verdicts(steady, share)
        assert [False, False, False, False] == verdicts(two, share)
        assert [False, True, True, True] == verdicts(spread, share)
    assert [False, False, False, False] == verdicts(spread, 0.25, calibrate=False)
