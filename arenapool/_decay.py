"""Decay, retain and warm reserves: when idle blocks go back to the OS, off the request path.

Theory of operation
-------------------
An idle block carries the time it went idle, and each class's free stack has the blocks
idle longest at its bottom (hot blocks are reused LIFO from the top and stay committed).
Nothing here runs on the request path. ``give_back`` only counts. When the idle
committed bytes pass ``retain`` it asks for a pass that holds ``retain`` again. "Pass
``retain``" here means: pass ``retain``, or what the last pass had to keep committed for
the warm reserves if that is more, so blocks kept warm on purpose do not ask at every
return.

What runs the maintenance (:func:`start_maintenance`, at the pool's first return when
``decay`` or ``retain`` is set): when an event loop runs in the thread that returned
the blocks, timer callbacks of that loop tick (``arenapool._ticks.LoopTicks``) and no
thread is started. A thread would cost the whole process: once one has started, glibc's
``malloc`` and ``free`` take a lock for good (see :mod:`arenapool._ticks`). With no loop
there (a pool used from plain threads), one daemon thread per pool ticks
(:func:`start_decay_thread`). If the loop stops, the pool starts its maintenance again
with its next slab or the next pass it asks for, on the loop running then or on a
thread.

Where a pass asked for between ticks runs depends on the thread that returned the
blocks:
- with an event loop running in it, the pass is a callback of its own on that loop
  (``SlabPool._hold_retain``), after the code that returned the blocks;
- otherwise it goes to the maintenance: ``call_soon_threadsafe`` to the loop that
  ticks, or a wake of the maintenance thread.

A loop's pass saves the thread's GIL hand-off, which under CPU contention held the
event loop until both threads were scheduled again. Either way, passes asked for within
``WAKE_GAP`` of the last are served by one pass after it. With
the pool's lock held, a pass does this:

- *Retain* (:func:`enforce_retain`), when asked for and on every tick: while more than
  ``retain`` idle bytes stay committed, decommits idle blocks, largest classes first and
  longest idle first, warm reserves kept. It trades page faults on reuse for RSS. Before
  that it decommits every idle block of the classes that keep nothing warm (blocks of
  2 MiB and more in huge pages, unless the pool was made with ``keep_huge_warm``): a
  huge page faults back in at one fault and a kernel clear, so those blocks are not
  worth their RSS between large bodies. A return of such a block asks for the pass.
- *Decay* (:func:`trim_locked`), every ``decay / 4`` seconds: gives blocks idle longer
  than ``decay`` back to the OS, beyond each class's warm reserve: ``madvise(DONTNEED)``
  for a block inside a shared slab, unmapping for a slab that is wholly idle (as long
  as the class keeps its reserve). ``SlabPool.trim`` runs the same function on demand.
- *Calibrate* (:func:`calibrate_locked`), every tick: each class's warm reserve becomes
  the median of the most blocks lent at once over the last ``CALIBRATION_WINDOWS``
  ticks that lent anything, never below what ``reserve=``/``prealloc=`` asked for; the
  reserves together are then fitted, smallest classes first, into the median of the
  most bytes the pool had lent at once in those ticks. A reserve counts the blocks
  lent now (:func:`keep`): a class with 3 out and a reserve of 5 keeps 2 idle blocks
  warm, not 5; and a calibrated class keeps its latest peak warm for a window or two
  when that is more than the median (:func:`keep`). So the pool keeps warm what the
  traffic needs now, one burst does not pin its peak for good, and a pause does not
  cool it; ``QUIET_WINDOWS`` ticks without
  a lend reset it (bytebufferpool recalibrates its sizes every 42,000 calls from a
  histogram of the sizes seen; Netty 4.2's adaptive allocator sizes its chunks from
  histograms). A class that took less than the pool's ``warm_share`` of the lends over
  those ticks keeps only its floor: under a spread of sizes, ``retain`` alone holds
  the idle memory. A pool made with ``calibrate=False`` skips this step: its reserves stay
  at their floors, and ``retain`` alone says how much idle memory stays committed.

``decay=0`` alone still returns memory at once, inside ``give_back``: it asks for that.

The pool keeps ``_idle_committed`` (bytes of idle blocks whose pages may be resident);
every decommit here lowers it by the block's size, so it stays the sum over idle blocks
with ``committed`` set.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._ticks import Runner, every

if TYPE_CHECKING:
    from ._slab import Backing, Block, ClassState, Slab

__all__ = [
    "Reservoir",
    "calibrate_locked",
    "enforce_retain",
    "keep",
    "maintain",
    "start_decay_thread",
    "start_maintenance",
    "tick_interval",
    "trim_locked",
]

#: Seconds between ticks of a pool that has ``retain`` but no ``decay``.
RETAIN_TICK = 1.0
#: Least seconds between two passes that returns woke (not ticks): give_back wakes the
#: thread each time the idle committed bytes pass the mark, which under a mixed load was
#: about 130 times a second (each a GIL hand-off: the event loop's thread waits for this
#: one); coalesced, retain is held a fraction of a second later at worst.
WAKE_GAP = 0.1
#: Windows without a lend after which a class's reserve falls back to its floor (about
#: ``decay``, with the maintenance's ``decay / 4`` ticks).
QUIET_WINDOWS = 4


class Reservoir(Protocol):
    """What decay needs from its pool (the lock held for all but ``trim``)."""

    name: str
    backing: Backing
    decay: float | None
    retain: int | None
    calibrate: bool
    _classes: list[ClassState]
    _idle_committed: int
    _cold_idle: bool
    _calibrated_at: float
    warm_rate: float | None
    warm_share: float | None
    _spread: bool
    _lent_bytes: int
    _quarantined_bytes: int
    _window_high: int
    _byte_peaks: deque[int]
    _wake_above: int | None
    _returned_bytes: int
    _lock: threading.Lock

    @property
    def closed(self) -> bool: ...

    def _unmap_locked(self, slab: Slab) -> None: ...

    def _drain_pending(self) -> None: ...

    def trim(self, *, older_than: float = 0.0, keep_reserve: bool = True) -> int: ...


def keep(cls: ClassState) -> int:
    """Idle blocks of ``cls`` kept committed through decay and retain: what its warm
    reserve covers beyond the blocks lent now (a reserve counts lent blocks: it is how
    many the traffic has out at once), never fewer than ``base_reserve``.

    A class that keeps a calibrated reserve (neither ``cold`` nor ``minor``, and
    calibrated from at least one active window: ``peaks``) also keeps its recent peak:
    the most it had out at once in this window or the one before, when that is more
    than the reserve's median. The median is below the peak in about half the windows
    of a steady load, and without this the blocks between the two went back at every
    return and faulted in again at the next peak, several times a window under a steady
    stream of 1 MiB bodies. A burst's blocks still go back: one to two ticks after it,
    not at once."""
    if cls.cold:
        return cls.base_reserve
    need = cls.reserve
    if cls.peaks and not cls.minor:
        need = max(need, cls.window_peak, cls.last_peak)
    warm = need - cls.lent
    return warm if warm > cls.base_reserve else cls.base_reserve


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
        kept = keep(cls) if keep_reserve else 0
        candidates = len(cls.free) - kept
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
        kept = keep(owner) if keep_reserve else 0
        if owner.idle - slab.nblocks < kept:
            continue
        if all(b.idle_since <= cutoff for b in slab.blocks):
            returned += sum(b.size for b in slab.blocks if b.committed)
            pool._unmap_locked(slab)
    return returned


def enforce_retain(pool: Reservoir) -> int:
    """Decommit the idle blocks of the classes that keep nothing warm (``ClassState.cold``)
    beyond their floors, then idle blocks until at most ``retain`` idle bytes stay
    committed: largest classes first, longest idle first, warm reserves kept. The bytes
    returned."""
    returned = 0
    if pool._cold_idle:
        # the classes that keep nothing warm (SlabPool keep_huge_warm, warm_rate) first,
        # whatever retain is
        pool._cold_idle = False
        for cls in pool._classes:
            if not cls.cold:
                continue
            free = cls.free
            for block in free[: max(len(free) - keep(cls), 0)]:
                if block.committed:
                    returned += decommit(pool, block)
    retain = pool.retain
    if retain is None or pool._idle_committed <= retain:
        return returned
    for cls in reversed(pool._classes):
        free = cls.free
        # the stack's bottom holds the blocks idle longest
        for block in free[: max(len(free) - keep(cls), 0)]:
            if pool._idle_committed <= retain:
                break
            if block.committed:
                returned += decommit(pool, block)
        if pool._idle_committed <= retain:
            break
    return returned


def _upper_median(values: deque[int]) -> int:
    """The median of ``values`` (the upper one of an even count)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


#: A pool's traffic is *spread* (``SlabPool.spread``) while no size class took this share
#: of its lends over the recent active windows. One steady size takes them all; the
#: issue-11 soak's mix of 1 KiB-4 MiB bodies gave its largest class about a quarter.
SPREAD_SHARE: Final = 0.5


def calibrate_locked(pool: Reservoir, now: float) -> None:
    """Close a calibration window: each class's reserve becomes the median of its recent
    active window peaks, never below its ``base_reserve``; then the reserves together are
    fitted into the median of the pool's recent window peaks in bytes (lock held).

    A window without a lend is no sample of what the traffic needs: it leaves the median
    alone (a server that pauses for a few seconds finds its blocks warm when the traffic
    comes back, instead of faulting them in again while the median recovers). After
    ``QUIET_WINDOWS`` of them in a row (about ``decay``) the reserve falls back to its
    floor and the history is forgotten, so an idle pool does give its memory back, and
    the first active window after sets the reserve on its own. :func:`maintain` skips
    this for a pool made with ``calibrate=False``: its reserves stay at their floors.

    Why the fit: classes do not peak together. Under a mix of body sizes, each of a dozen
    classes has its own peak of one to five blocks, and their sum (what per-class medians
    alone keep warm) is several times the most bytes the pool ever has out at once. The
    fit keeps the median of those pool-wide peaks, the smallest classes first: for the
    same bytes, they cover the most requests (every class is hit about equally often by
    log-spread sizes, and a fault costs per page, so per byte all classes cost the same).

    Why ``warm_rate``: a class's warm reserve saves page faults only as often as the class
    is lent. Per byte kept resident, a block saves (lends a second) x (pages per byte)
    faults a second, whatever its size; so a class lent fewer than ``warm_rate`` blocks a
    second over the window keeps nothing warm beyond its floor (``ClassState.cold``) and
    its idle blocks go back at the pass that follows. A window with no lend in any class
    changes no class's standing. Classes in huge pages (``ClassState.huge``) keep nothing
    warm at any rate: a huge page faults back in at one fault and a kernel clear.

    Why ``warm_share``: a reserve is the median of a class's window peaks, and a class
    lent now and then by a mix peaks at one or two blocks while it has, on average, a
    fraction of one out: the reserve holds idle what the traffic seldom needs. A class
    that takes a large share of the pool's lends is one the traffic leans on, and its
    peaks are close to what it has out. So a class whose lends over the recent active
    windows (the windows the medians cover) are under ``warm_share`` of the pool's keeps
    no calibrated reserve (``ClassState.minor``), only its floor, and ``retain`` alone
    decides whether its idle blocks stay warm. A steady size (or two, or three) keeps
    its reserve; under a spread over a dozen classes none does, and the pool acts as one
    made with ``calibrate=False``. Unlike ``warm_rate``, it reads no rate: the same
    traffic, slower or faster, keeps the same classes warm.

    The same standings say whether the pool's sizes are *spread* (``SlabPool.spread``,
    whatever ``warm_share`` is): no class took :data:`SPREAD_SHARE` of the recent lends.
    The governor then trims the C heap on a clock instead of by its busy rule
    (``GovernorConfig.spread_trim_every``).
    """
    elapsed = now - pool._calibrated_at
    pool._calibrated_at = now
    classes = pool._classes
    # a pause is no sample of the rates or the shares either: standings stay
    active = any(cls.lends != cls.lends_seen for cls in classes)
    floor_rate = pool.warm_rate if active else None
    if active:
        for cls in classes:
            cls.recent_lends.append(cls.lends - cls.lends_seen)
        recent = [sum(cls.recent_lends) for cls in classes]
        total = sum(recent)
        share = pool.warm_share
        if share is not None:
            share_floor = share * total
            for cls, taken in zip(classes, recent, strict=True):
                cls.minor = taken < share_floor
        # no class took SPREAD_SHARE of the recent lends: the sizes are spread
        pool._spread = max(recent) < SPREAD_SHARE * total
    for cls in classes:
        peak = cls.window_peak
        peaks = cls.peaks
        cls.last_peak = peak
        cls.window_peak = cls.lent  # the next window starts with what is out now
        lends = cls.lends - cls.lends_seen
        cls.lends_seen = cls.lends
        if floor_rate is not None:
            cold = cls.huge or lends < floor_rate * elapsed
            if cold and not cls.cold:
                pool._cold_idle = True  # the pass that follows gives its idle blocks back
            cls.cold = cold
        if not peak:
            cls.quiet += 1
            if cls.quiet >= QUIET_WINDOWS and peaks:
                peaks.clear()
                cls.reserve = cls.base_reserve
        else:
            cls.quiet = 0
            peaks.append(peak)
            median = _upper_median(peaks)
            cls.reserve = median if median > cls.base_reserve else cls.base_reserve
        if cls.minor:  # under warm_share: its floor only, whatever its peaks say
            cls.reserve = cls.base_reserve
    high = pool._window_high
    pool._window_high = pool._lent_bytes + pool._quarantined_bytes
    byte_peaks = pool._byte_peaks
    if high:
        byte_peaks.append(high)
    elif all(not cls.peaks for cls in pool._classes):
        byte_peaks.clear()  # every class went quiet: so does the pool
    if not byte_peaks:
        return
    room = _upper_median(byte_peaks)
    for cls in pool._classes:  # smallest first
        if cls.cold:
            continue
        size = cls.size
        want = cls.reserve
        fits = room // size if room > 0 else 0
        if want > fits:
            want = fits if fits > cls.base_reserve else cls.base_reserve
        cls.reserve = want
        room -= want * size


def maintain(pool: Reservoir, now: float, *, tick: bool = True) -> int:
    """One pass of the maintenance (a tick, or a pass asked for); the bytes returned to the OS.

    Always holds ``retain``; on a ``tick`` also recalibrates the warm reserves (unless
    the pool's ``calibrate`` is off) and, with ``decay`` set, returns blocks idle longer
    than that.
    """
    returned = 0
    with pool._lock:
        if pool.closed:
            return 0
        pool._drain_pending()
        if tick:
            if pool.calibrate:
                calibrate_locked(pool, now)
            decay = pool.decay
            if decay is not None:
                returned += trim_locked(pool, now - decay, keep_reserve=True)
        if pool.backing == "mmap":  # a bytearray's pages cannot be given back
            returned += enforce_retain(pool)
        retain = pool.retain
        if retain is not None:
            # what is still committed now is the reserves' (or retain's): returns up to
            # it need not wake this thread again before the next tick
            pool._wake_above = max(retain, pool._idle_committed)
        pool._returned_bytes += returned
    return returned


def tick_interval(pool: Reservoir) -> float:
    """Seconds between two ticks of ``pool``'s maintenance: ``decay / 4`` (at least
    50 ms), ``RETAIN_TICK`` without decay."""
    return max(0.05, pool.decay / 4) if pool.decay is not None else RETAIN_TICK


def _tick(pool: Reservoir, now: float) -> None:
    maintain(pool, now, tick=True)


def start_maintenance(
    pool: Reservoir,
    stop: threading.Event,
    wake: threading.Event,
    current: Callable[[Any], object],
) -> Runner:
    """Start ``pool``'s maintenance: ticks on the event loop running in this thread
    (:class:`arenapool._ticks.LoopTicks`; a pass asked for from another thread is
    handed to that loop, see ``SlabPool._hold_retain``), or the maintenance thread
    (:func:`start_decay_thread`) when no loop runs here. ``current(pool)`` is the
    pool's runner now: ticks that are no longer it stop."""
    return every(
        pool,
        tick_interval(pool),
        _tick,
        stop=stop,
        current=current,
        name=f"arenapool-decay-{pool.name}",
        thread=lambda: start_decay_thread(pool, stop, wake),
    )


def start_decay_thread(
    pool: Reservoir, stop: threading.Event, wake: threading.Event
) -> threading.Thread:
    """Start the daemon thread that maintains ``pool``: every ``decay / 4`` seconds
    (``RETAIN_TICK`` without decay) and whenever ``wake`` is set. It holds the pool
    weakly and ends when ``stop`` is set or the pool is gone or closed."""
    interval = tick_interval(pool)
    thread = threading.Thread(
        target=_decay_loop,
        args=(weakref.ref(pool), stop, wake, interval),
        name=f"arenapool-decay-{pool.name}",
        daemon=True,
    )
    thread.start()
    return thread


def _decay_loop(
    pool_ref: weakref.ref[Reservoir],
    stop: threading.Event,
    wake: threading.Event,
    interval: float,
) -> None:
    next_tick = time.monotonic() + interval
    while True:
        wake.wait(max(0.0, next_tick - time.monotonic()))
        wake.clear()
        if stop.is_set():
            return
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        now = time.monotonic()
        tick = now >= next_tick
        if tick:
            next_tick = now + interval
        maintain(pool, now, tick=tick)
        del pool
        if not tick and stop.wait(WAKE_GAP):
            # a wake-up pass: the returns that wake this thread come in bursts under
            # load, each wake a GIL hand-off on the request path; the ones within
            # WAKE_GAP are served by one pass after it
            return
