"""Decay and retain: when idle blocks go back to the OS.

Theory of operation
-------------------
An idle block carries the time it went idle, and each class's free stack has the blocks
idle longest at its bottom. Two policies return memory, both with the pool's lock held:

- *Decay* (:func:`trim_locked`): a daemon thread per pool (:func:`start_decay_thread`,
  started on the pool's first slab) wakes every ``decay / 4`` seconds and gives blocks
  idle longer than ``decay`` back to the OS, beyond each class's warm reserve:
  ``madvise(DONTNEED)`` for a block inside a shared slab, unmapping for a slab that is
  wholly idle (as long as the class keeps its reserve). ``SlabPool.trim`` runs the same
  function on demand.
- *Retain* (:func:`enforce_retain`): after a return, while more than ``retain`` idle
  bytes stay committed, idle blocks are decommitted at once, largest classes first and
  longest idle first, warm reserves kept. It trades page faults on reuse for RSS.

The pool keeps ``_idle_committed`` (bytes of idle blocks whose pages may be resident);
every decommit here lowers it by the block's size, so it stays the sum over idle blocks
with ``committed`` set.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._slab import Block, ClassState, Slab

__all__ = ["Reservoir", "enforce_retain", "start_decay_thread", "trim_locked"]


class Reservoir(Protocol):
    """What decay needs from its pool (the lock held for all but ``trim``)."""

    name: str
    decay: float | None
    retain: int | None
    _classes: list[ClassState]
    _idle_committed: int

    @property
    def closed(self) -> bool: ...

    def _unmap_locked(self, slab: Slab) -> None: ...

    def trim(self, *, older_than: float = 0.0, keep_reserve: bool = True) -> int: ...


def decommit(pool: Reservoir, block: Block) -> int:
    """Give a committed idle block's pages back; the bytes returned (lock held)."""
    pool._idle_committed -= block.size
    return block.decommit()


def trim_locked(pool: Reservoir, cutoff: float, keep_reserve: bool) -> int:
    """Return blocks idle since before ``cutoff`` beyond the reserves (all of them
    without ``keep_reserve``); unmap slabs that are wholly so. The bytes returned."""
    returned = 0
    emptied: set[Slab] = set()
    for cls in pool._classes:
        keep = cls.reserve if keep_reserve else 0
        candidates = len(cls.free) - keep
        # the stack's bottom holds the blocks idle longest
        for block in cls.free[: max(candidates, 0)]:
            if block.idle_since > cutoff:
                break
            slab = block.slab
            if slab.idle == slab.nblocks:
                emptied.add(slab)
            if block.committed:
                returned += decommit(pool, block)
    for slab in emptied:
        owner = slab.cls
        assert owner is not None  # only class slabs sit on free stacks
        keep = owner.reserve if keep_reserve else 0
        if owner.idle - slab.nblocks < keep:
            continue
        if all(b.idle_since <= cutoff for b in slab.blocks):
            returned += sum(b.size for b in slab.blocks if b.committed)
            pool._unmap_locked(slab)
    return returned


def enforce_retain(pool: Reservoir) -> int:
    """Decommit idle blocks until at most ``retain`` idle bytes stay committed: largest
    classes first, longest idle first, warm reserves kept. The bytes returned."""
    retain = pool.retain
    if retain is None:
        return 0
    returned = 0
    for cls in reversed(pool._classes):
        free = cls.free
        # the stack's bottom holds the blocks idle longest
        for block in free[: max(len(free) - cls.reserve, 0)]:
            if pool._idle_committed <= retain:
                break
            if block.committed:
                returned += decommit(pool, block)
        if pool._idle_committed <= retain:
            break
    return returned


def start_decay_thread(pool: Reservoir, stop: threading.Event) -> threading.Thread:
    """Start the daemon thread that trims ``pool`` every ``decay / 4`` seconds; it holds
    the pool weakly and ends when ``stop`` is set or the pool is gone or closed."""
    interval = max(0.05, (pool.decay or 0.0) / 4)
    thread = threading.Thread(
        target=_decay_loop,
        args=(weakref.ref(pool), stop, interval),
        name=f"arenapool-decay-{pool.name}",
        daemon=True,
    )
    thread.start()
    return thread


def _decay_loop(pool_ref: weakref.ref[Reservoir], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        decay = pool.decay
        if decay is not None:
            pool.trim(older_than=decay)
        del pool
