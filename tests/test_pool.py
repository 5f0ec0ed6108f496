"""ObjectPool: reuse, bounds, async waits, reset hooks, leak detection, close."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable

import pytest
from _threads import run_threads

from arenapool import (
    DoubleRelease,
    InvalidSize,
    ObjectLeakWarning,
    ObjectPool,
    PoolClosedError,
    PoolTimeout,
    SlabPool,
)
from arenapool.testing import assert_no_leaks


class Thing:
    """A weak-referenceable pooled object that remembers how often it was reset."""

    def __init__(self) -> None:
        self.resets = 0
        self.data: dict[str, int] = {}


def reset_thing(thing: Thing) -> None:
    thing.resets += 1
    thing.data.clear()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


# -- basics ---------------------------------------------------------------------------


def test_acquire_builds_lazily_and_release_reuses() -> None:
    """The factory runs on demand; a released object is handed out again."""
    pool = ObjectPool(Thing, maxsize=4)
    first = pool.acquire()
    pool.release(first)
    again = pool.acquire()

    assert first is again
    assert (1, 1, 0) == (pool.stats()["created"], pool.in_use, pool.idle)
    pool.release(again)


def test_reset_hook_runs_on_release() -> None:
    """reset(obj) runs each time an object comes back."""
    pool = ObjectPool(Thing, reset=reset_thing)
    thing = pool.acquire()
    thing.data["x"] = 1
    pool.release(thing)

    assert (1, {}) == (thing.resets, thing.data)


def test_prealloc_builds_up_front() -> None:
    """prealloc objects are built at construction and idle."""
    built: list[Thing] = []

    def factory() -> Thing:
        built.append(Thing())
        return built[-1]

    pool = ObjectPool(factory, maxsize=4, prealloc=3)

    assert (3, 3, 3) == (len(built), pool.idle, pool.stats()["created"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maxsize": 0}, "maxsize"),
        ({"maxsize": 2, "prealloc": 3}, "prealloc"),
        ({"prealloc": -1}, "prealloc"),
        ({"leak_detection": "paranoid"}, "leak_detection"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    """Bad maxsize, prealloc or leak_detection raise InvalidSize naming them."""
    with pytest.raises(InvalidSize, match=match):
        ObjectPool(Thing, **kwargs)  # type: ignore[arg-type]


def test_maxsize_bounds_sync_acquire() -> None:
    """With maxsize objects out, acquire() raises PoolTimeout (a TimeoutError) at once."""
    pool = ObjectPool(Thing, maxsize=2)
    held = [pool.acquire(), pool.acquire()]

    with pytest.raises(PoolTimeout) as info:
        pool.acquire()

    assert (0.0, 2, 503) == (info.value.timeout, info.value.maxsize, info.value.status_hint)
    assert isinstance(info.value, TimeoutError)
    assert "all 2 objects out" in str(info.value)
    for thing in held:
        pool.release(thing)


def test_borrow_returns_the_object() -> None:
    """``with pool.borrow()`` gives the object back, also on an exception."""
    pool = ObjectPool(Thing, reset=reset_thing)
    with pytest.raises(KeyError), pool.borrow() as thing:
        raise KeyError("boom")

    assert (0, 1, 1) == (pool.in_use, pool.idle, thing.resets)


async def test_borrow_async_returns_the_object() -> None:
    """``async with pool.borrow_async()`` gives the object back."""
    pool = ObjectPool(Thing)
    async with pool.borrow_async() as thing:
        out = pool.in_use

    assert (1, 0, 1) == (out, pool.in_use, pool.idle)
    assert isinstance(thing, Thing)


def test_double_release_raises() -> None:
    """Releasing an object twice raises DoubleRelease and leaves the pool consistent."""
    pool = ObjectPool(Thing)
    thing = pool.acquire()
    pool.release(thing)

    with pytest.raises(DoubleRelease, match="released twice"):
        pool.release(thing)
    assert (0, 1) == (pool.in_use, pool.idle)


def test_double_release_raises_without_leak_detection() -> None:
    """The lock-free path of leak_detection="off" still catches a double release."""
    pool = ObjectPool(Thing, leak_detection="off")
    with pool.borrow() as thing:
        pass

    with pytest.raises(DoubleRelease, match="released twice"):
        pool.release(thing)
    with pytest.raises(DoubleRelease):
        pool.release(Thing())
    assert (0, 1) == (pool.in_use, pool.idle)


def test_release_of_a_foreign_object_raises() -> None:
    """Releasing an object this pool never lent raises DoubleRelease."""
    pool = ObjectPool(Thing)

    with pytest.raises(DoubleRelease):
        pool.release(Thing())


def test_failing_reset_drops_the_object() -> None:
    """If reset raises, the object is dropped and a fresh one is built next time."""

    def bad_reset(thing: Thing) -> None:
        raise RuntimeError("cannot reset")

    pool = ObjectPool(Thing, reset=bad_reset)
    thing = pool.acquire()
    pool.release(thing)
    stats = pool.stats()

    assert (0, 0, 1, 0) == (stats["idle"], stats["in_use"], stats["reset_errors"], stats["created"])
    with pool.borrow() as fresh:
        assert fresh is not thing


async def test_failing_reset_serves_a_waiter_with_a_new_object() -> None:
    """A waiter is not stranded when the object it would get is dropped."""

    def bad_reset(thing: Thing) -> None:
        raise RuntimeError("cannot reset")

    pool = ObjectPool(Thing, reset=bad_reset, maxsize=1)
    thing = pool.acquire()
    task = asyncio.create_task(pool.acquire_async(timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)
    pool.release(thing)
    fresh = await task

    assert fresh is not thing
    assert 1 == pool.stats()["created"]
    pool.release(fresh)


# -- async ----------------------------------------------------------------------------


async def test_acquire_async_without_contention() -> None:
    """acquire_async returns at once when an object is free."""
    pool = ObjectPool(Thing, maxsize=1)
    thing = await pool.acquire_async()

    assert (1, 0) == (pool.in_use, pool.stats()["waits"])
    pool.release(thing)


async def test_acquire_async_waiters_are_served_fifo() -> None:
    """With maxsize out, acquire_async waits; waiters get objects in queue order."""
    pool = ObjectPool(Thing, maxsize=1)
    held = pool.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with pool.borrow_async(timeout=10):
            order.append(name)
            await asyncio.sleep(0)

    tasks = []
    for name in ["first", "second", "third"]:
        tasks.append(asyncio.create_task(waiter(name)))
        await wait_until(lambda: pool.stats()["waiting"] == len(tasks))
    pool.release(held)
    await asyncio.gather(*tasks)

    assert ["first", "second", "third"] == order
    assert_no_leaks(pool)


async def test_acquire_async_timeout() -> None:
    """A waiter not served in time gets PoolTimeout; the timeout is counted."""
    pool = ObjectPool(Thing, maxsize=1)
    held = pool.acquire()

    with pytest.raises(PoolTimeout) as info:
        await pool.acquire_async(timeout=0.01)

    assert 0.01 == info.value.timeout
    assert (1, 0) == (pool.stats()["timeouts"], pool.stats()["waiting"])
    pool.release(held)
    assert (0, 1) == (pool.in_use, pool.idle)


async def test_cancelled_waiter_leaves_no_ghost() -> None:
    """A cancelled waiter leaves the queue; a released object goes idle, not to it."""
    pool = ObjectPool(Thing, maxsize=1)
    held = pool.acquire()
    task = asyncio.create_task(pool.acquire_async())
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waiting = pool.stats()["waiting"]
    pool.release(held)

    assert (0, 0, 1) == (waiting, pool.in_use, pool.idle)


@pytest.mark.parametrize("timeout", [None, 10.0])
async def test_waiter_cancelled_after_grant_returns_the_object(timeout: float | None) -> None:
    """An object handed to a waiter that is cancelled before waking goes back to the pool."""
    pool = ObjectPool(Thing, maxsize=1)
    held = pool.acquire()
    task = asyncio.create_task(pool.acquire_async(timeout=timeout))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    pool.release(held)  # granted; delivered on the next loop iteration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: pool.idle == 1)

    assert (0, 1) == (pool.in_use, pool.idle)


# -- leak detection -------------------------------------------------------------------


@pytest.mark.parametrize("level", ["sample", "full"])
def test_lost_object_warns_and_frees_its_slot(level: str) -> None:
    """An object collected without release warns ObjectLeakWarning and frees its slot."""
    pool = ObjectPool(Thing, maxsize=1, leak_detection=level)  # type: ignore[arg-type]

    with pytest.warns(ObjectLeakWarning, match="without being released"):
        pool.acquire()  # dropped at once

    assert (0, 1) == (pool.in_use, pool.stats()["leaks"])
    with pool.borrow() as again:  # the slot is free again
        assert isinstance(again, Thing)


def test_object_lost_after_reuse_warns() -> None:
    """An object returned and lent again several times is still reported when lost."""
    pool = ObjectPool(Thing, maxsize=1)
    for _ in range(3):
        with pool.borrow():
            pass

    with pytest.warns(ObjectLeakWarning, match="without being released"):
        pool.acquire()  # dropped at once

    assert (0, 1, 0) == (pool.in_use, pool.stats()["leaks"], pool.stats()["created"])


def test_idle_and_dropped_objects_dying_are_not_leaks() -> None:
    """Objects collected after close() or after their reset failed are no leaks."""

    failures = [RuntimeError("cannot reset")]

    def reset_once_fails(thing: Thing) -> None:
        if failures:
            raise failures.pop()

    pool = ObjectPool(Thing, reset=reset_once_fails, maxsize=2, prealloc=1)
    dropped = pool.acquire()
    pool.release(dropped)  # the reset hook fails: dropped, not idle
    with pool.borrow():
        pass
    del dropped
    pool.close()
    gc.collect()

    assert (0, 1) == (pool.stats()["leaks"], pool.stats()["reset_errors"])


def test_full_detection_records_the_acquiring_stack() -> None:
    """With leak_detection="full", outstanding() shows where each object was acquired."""
    pool = ObjectPool(Thing, leak_detection="full")
    thing = pool.acquire()

    (stack,) = pool.outstanding()

    assert "test_full_detection_records_the_acquiring_stack" in stack
    pool.release(thing)


def test_full_detection_puts_the_stack_in_the_warning() -> None:
    """The leak warning says where the lost object was acquired."""
    pool = ObjectPool(Thing, leak_detection="full")

    with pytest.warns(ObjectLeakWarning, match="test_full_detection_puts_the_stack"):
        pool.acquire()


def test_detection_off_keeps_the_slot() -> None:
    """With leak_detection="off" a lost object is held by the pool: no warning, slot kept."""
    pool = ObjectPool(Thing, maxsize=1, leak_detection="off")
    pool.acquire()
    gc.collect()

    assert (1, 0) == (pool.in_use, pool.stats()["leaks"])
    assert ["(stack not recorded)"] == pool.outstanding()


def test_objects_without_weakrefs_are_held_strongly() -> None:
    """A dict (no weak references) is never reported as a leak under "sample"."""
    pool: ObjectPool[dict[str, int]] = ObjectPool(dict, maxsize=1)
    pool.acquire()
    gc.collect()

    assert (1, 0) == (pool.in_use, pool.stats()["leaks"])


# -- stats, close, threads ------------------------------------------------------------


def test_stats_is_json_with_documented_keys() -> None:
    """stats() round-trips through JSON with the documented keys and figures."""
    pool = ObjectPool(Thing, maxsize=3, name="things")
    thing = pool.acquire()
    stats = json.loads(json.dumps(pool.stats()))
    pool.release(thing)

    assert {
        "name": "things",
        "maxsize": 3,
        "created": 1,
        "idle": 0,
        "in_use": 1,
        "high_water": 1,
        "acquired": 1,
        "waits": 0,
        "waiting": 0,
        "timeouts": 0,
        "leaks": 0,
        "reset_errors": 0,
        "leak_detection": "sample",
        "closed": False,
    } == stats


@pytest.mark.parametrize("level", ["off", "sample"])
def test_stats_count_lock_free_acquisitions(level: str) -> None:
    """acquired, high_water and created stay exact on the lock-free paths."""
    pool = ObjectPool(Thing, maxsize=4, leak_detection=level)  # type: ignore[arg-type]
    things = [pool.acquire() for _ in range(3)]
    for thing in things:
        pool.release(thing)
    for _ in range(5):
        with pool.borrow():
            pass
    stats = pool.stats()

    assert (8, 3, 3, 0, 3) == (
        stats["acquired"],
        stats["high_water"],
        stats["created"],
        stats["in_use"],
        stats["idle"],
    )


def test_sample_every_one_records_every_stack() -> None:
    """sample_every=1 records where every acquisition happened."""
    pool = ObjectPool(Thing, sample_every=1)
    things = [pool.acquire(), pool.acquire()]

    stacks = pool.outstanding()

    assert 2 == sum("test_sample_every_one_records_every_stack" in s for s in stacks)
    for thing in things:
        pool.release(thing)


def test_repr_shows_live_state() -> None:
    """The repr shows objects out, idle and the bound."""
    pool = ObjectPool(Thing, maxsize=8, prealloc=2)
    thing = pool.acquire()

    assert "<ObjectPool 'Thing' [out 1 | idle 1 | max 8]>" == repr(pool)
    pool.release(thing)


def test_close_drops_idle_and_refuses_acquire() -> None:
    """After close(), idle objects are gone and acquire raises PoolClosedError."""
    pool = ObjectPool(Thing, prealloc=2)
    pool.close()
    pool.close()

    with pytest.raises(PoolClosedError):
        pool.acquire()
    assert (True, 0) == (pool.closed, pool.idle)


def test_release_after_close_drops_the_object() -> None:
    """An object released after close() is not kept."""
    pool = ObjectPool(Thing)
    thing = pool.acquire()
    pool.close()
    pool.release(thing)

    assert (0, 0) == (pool.in_use, pool.idle)


async def test_close_fails_waiters() -> None:
    """Waiters queued at close() get PoolClosedError."""
    pool = ObjectPool(Thing, maxsize=1)
    held = pool.acquire()
    task = asyncio.create_task(pool.acquire_async(timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    pool.close()

    with pytest.raises(PoolClosedError, match="closed"):
        await task
    pool.release(held)


def test_threads_share_a_pool() -> None:
    """Threads borrowing concurrently never exceed maxsize and leave nothing out."""
    pool = ObjectPool(Thing, reset=reset_thing, maxsize=3, leak_detection="full")
    failures: list[BaseException] = []

    def worker(_index: int) -> None:
        try:
            for _ in range(500):
                try:
                    with pool.borrow() as thing:
                        thing.data["n"] = 1
                except PoolTimeout:
                    continue
        except BaseException as exc:
            failures.append(exc)

    run_threads(worker, 4)
    stats = pool.stats()

    assert [] == failures
    assert stats["high_water"] <= 3
    assert stats["created"] <= 3
    assert_no_leaks(pool)


@pytest.mark.parametrize("level", ["off", "sample"])
def test_threads_share_a_pool_without_leak_detection(level: str) -> None:
    """Lock-free acquire and release from threads: never two holders of one object,
    never more than maxsize built, every acquisition counted, nothing left out."""
    pool = ObjectPool(Thing, maxsize=3, leak_detection=level)  # type: ignore[arg-type]
    failures: list[BaseException] = []
    borrowed = [0] * 4
    holders: dict[int, int] = {}

    def worker(index: int) -> None:
        try:
            for _ in range(2000):
                try:
                    with pool.borrow() as thing:
                        if holders.setdefault(id(thing), index) != index:
                            failures.append(AssertionError("two holders of one object"))
                        del holders[id(thing)]
                except PoolTimeout:
                    continue
                borrowed[index] += 1
        except BaseException as exc:
            failures.append(exc)

    run_threads(worker, 4, switch_interval=1e-6)  # switch threads as often as possible
    stats = pool.stats()

    assert [] == failures
    assert stats["created"] <= 3
    assert stats["high_water"] <= 3
    assert sum(borrowed) == stats["acquired"]
    assert_no_leaks(pool)


async def test_release_from_a_thread_wakes_an_async_waiter() -> None:
    """An object released by another thread (lock-free) reaches a queued waiter."""
    pool = ObjectPool(Thing, maxsize=1, leak_detection="off")
    held = pool.acquire()
    task = asyncio.create_task(pool.acquire_async(timeout=10))
    await wait_until(lambda: pool.stats()["waiting"] == 1)

    thread = threading.Thread(target=pool.release, args=(held,))
    thread.start()
    got = await task
    thread.join()

    assert got is held
    pool.release(got)
    assert_no_leaks(pool)


def test_idle_bytes_is_what_stats_counts() -> None:
    """``SlabPool.idle_bytes`` (what the governor reads every tick) agrees with
    ``stats()["idle_bytes"]`` as blocks are lent and given back."""
    pool = SlabPool("64MiB", decay=None)
    try:
        assert pool.idle_bytes == pool.stats()["idle_bytes"]
        blocks = [pool.lend(n) for n in (4096, 100_000, 1_000_000, 3_000_000)]
        assert pool.idle_bytes == pool.stats()["idle_bytes"]
        pool.give_back(blocks[:3])
        assert pool.idle_bytes == pool.stats()["idle_bytes"] > 0
        pool.give_back(blocks[3:])
        assert pool.idle_bytes == pool.stats()["idle_bytes"] > 0
    finally:
        pool.close()


def test_idle_bytes_counts_a_quarantined_block_once_its_view_died() -> None:
    """A block given back with a view still alive is quarantined; when that view dies,
    the block is idle again for ``idle_bytes`` as for ``stats()``, with no event loop
    running to drain the quarantine first."""
    pool = SlabPool("64MiB", decay=None)
    try:
        block = pool.lend(4096)
        assert block.view is not None
        kept = block.view[:10]
        assert 1 == pool.give_back([block])  # escaped: quarantined
        before = pool.idle_bytes
        del kept  # the carrier dies: the block waits to be drained
        after = pool.idle_bytes
        assert after == pool.stats()["idle_bytes"] > before
    finally:
        pool.close()
