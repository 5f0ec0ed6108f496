"""SlabPool: the process-wide memory reservoir that arenas borrow blocks from.

Theory of operation
-------------------
Memory lives in *slabs*: one anonymous ``mmap`` (or one ``bytearray``) per slab, each
cut into equal *blocks* of one size class. Classes run 4 per doubling from 4 KiB up to
``max_class`` (4, 5, 6, 7, 8, 10, 12, 14, 16 KiB ... as jemalloc and Netty space
them). A request above ``max_class`` gets a *huge* slab of its own (page-rounded) that
is unmapped as soon as it comes back.

Every block is in exactly one state::

    IDLE --lend--> LENT --return, no view alive--> IDLE
                   LENT --return, a view escaped--> QUARANTINED --last view dies--> IDLE

so at every moment ``lent + idle + quarantined == mapped`` (bytes and blocks, per
class). The budget caps ``lent + quarantined``: quarantined memory is still in use by
whoever kept the view, so it counts.

Liveness of a lend is tracked through a *carrier*: each block has a ctypes array over
its bytes (``from_buffer``, made on the block's first lend and kept), and every lend
hands out a fresh root view cast from it. Every memoryview derived from that root
(slices included) holds the carrier through CPython's managed buffer, and a released
view no longer does, so "the carrier's reference count is back to its baseline" is
exactly "no view of this lend is alive". The baseline is read with the same
expression (``_getrefcount(block.carrier)``) right after the carrier is made, before
any view exists. On return we release the root view and compare: at the baseline the
block is reusable at once; above it a view escaped, and the block is quarantined: it
drops its carrier (the next lend makes a new one) and a ``weakref.finalize`` on the old
carrier fires when the last stale view dies. Finalizers may run in any thread at any
point (including inside our own locked sections, when the GC runs), so they only
append to a deque; whoever next takes the lock drains it. A carrier holds an export of
its slab, so a slab drops its blocks' carriers before it is unmapped.

Concurrency: one ``threading.Lock`` guards all pool state except the arena counters:
two ``itertools.count`` objects (``next()`` on one is atomic), read as opened - closed.
Async waiters queue FIFO; grants are decided under the lock and delivered on the
waiter's own loop with ``call_soon_threadsafe``. The waiter at the head blocks the
ones behind it (no overtaking), so a large request cannot be starved by a stream of
small ones.

Decay: an idle block carries the time it went idle. A daemon thread (one per pool,
started on first use) wakes every ``decay / 4`` seconds and gives blocks idle longer
than ``decay`` back to the OS, beyond a warm reserve per class: ``madvise(DONTNEED)``
for a block inside a shared slab, unmapping for a slab that is wholly idle.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import itertools
import logging
import mmap
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from ._errors import BudgetExhausted, InvalidSize, PoolClosedError
from ._registry import register_slab_pool
from ._units import format_size, parse_size

if TYPE_CHECKING:
    from ._arena import Arena

__all__ = ["Block", "SlabPool", "size_classes"]

log = logging.getLogger("arenapool")

PAGE: Final = mmap.PAGESIZE
MIN_CLASS: Final = 4096
#: Transparent huge page size on x86-64 and most arm64 kernels.
HUGE_PAGE: Final = 2 * 1024 * 1024
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)
#: Slabs of small classes hold several blocks; a slab aims at this many bytes.
SLAB_TARGET: Final = 256 * 1024

_IDLE: Final = 0
_LENT: Final = 1
_QUARANTINED: Final = 2
_HUGE: Final = -1

_getrefcount = sys.getrefcount
_monotonic = time.monotonic
_bisect_left = bisect.bisect_left

Backing = Literal["mmap", "bytearray"]


def size_classes(max_class: int) -> list[int]:
    """The block sizes a pool with this ``max_class`` uses: 4 per doubling from 4 KiB."""
    classes: list[int] = []
    base = MIN_CLASS
    while base <= max_class:
        for quarter in (4, 5, 6, 7):
            size = base * quarter // 4
            if size > max_class:
                break
            classes.append(size)
        base *= 2
    return classes


def _blocks_per_slab(size: int) -> int:
    """How many blocks of ``size`` one slab holds; slab bytes are a multiple of a page."""
    if size >= SLAB_TARGET:
        return 1
    count = SLAB_TARGET // size
    if size % PAGE:
        # Four blocks of any class below 16 KiB span a whole number of pages
        # (each class is base * q / 4 with base a multiple of 4 KiB).
        count -= count % 4
    return max(count, 1)


class _Slab:
    __slots__ = ("addr", "blocks", "buf", "class_index", "idle", "mapped", "nblocks", "size")

    def __init__(
        self,
        class_index: int,
        block_size: int,
        nblocks: int,
        backing: Backing,
        huge_pages: bool = False,
    ) -> None:
        self.class_index = class_index
        self.size = block_size * nblocks
        self.nblocks = nblocks
        self.buf: mmap.mmap | bytearray
        if backing == "mmap":
            self.buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if huge_pages and self.size >= HUGE_PAGE and _MADV_HUGEPAGE is not None:
                # one fault and one kernel clear per 2 MiB instead of 512 faults
                with contextlib.suppress(OSError):  # THP "never": the kernel refuses
                    self.buf.madvise(_MADV_HUGEPAGE)
        else:
            self.buf = bytearray(self.size)
        probe = ctypes.c_char.from_buffer(self.buf)
        self.addr = ctypes.addressof(probe)
        del probe
        self.idle = nblocks
        self.mapped = True
        self.blocks = [Block(self, i * block_size, block_size) for i in range(nblocks)]

    def unmap(self) -> None:
        self.mapped = False
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        else:
            self.buf = bytearray()


class Block:
    """One block of a slab, as lent to an arena.

    ``view`` is a writable ``memoryview`` over the whole block while it is lent; the
    borrower slices it and must not keep any view past :meth:`SlabPool.give_back`.
    ``used`` is how many leading bytes the borrower may have written (for scrubbing).
    """

    __slots__ = (
        "baseline",
        "carrier",
        "committed",
        "idle_since",
        "offset",
        "scrub",
        "size",
        "slab",
        "state",
        "used",
        "view",
    )

    def __init__(self, slab: _Slab, offset: int, size: int) -> None:
        self.slab = slab
        self.offset = offset
        self.size = size
        self.state = _IDLE
        self.idle_since = 0.0
        self.committed = False
        self.used = 0
        self.scrub = False
        self.view: memoryview | None = None
        # the ctypes array every view of a lend derives from (see the module docs),
        # and its reference count while no view of it is alive
        self.carrier: ctypes.Array[ctypes.c_char] | None = None
        self.baseline = 0

    def __repr__(self) -> str:
        state = {_IDLE: "idle", _LENT: "lent", _QUARANTINED: "quarantined"}[self.state]
        return f"<Block {format_size(self.size)} at +{self.offset} {state}>"


class _ClassState:
    __slots__ = ("free", "high_water", "idle", "lent", "quarantined", "reserve", "size")

    def __init__(self, size: int, reserve: int) -> None:
        self.size = size
        self.free: list[Block] = []  # a stack: the most recently returned block on top
        self.lent = 0
        self.idle = 0
        self.quarantined = 0
        self.high_water = 0
        self.reserve = reserve


class _Waiter:
    __slots__ = ("block", "fut", "handle", "loop", "nbytes", "size")

    def __init__(self, nbytes: int, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.nbytes = nbytes
        self.size = size
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.block: Block | None = None
        self.handle: asyncio.TimerHandle | None = None


def _deliver(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SlabPool:
    """A process-wide reservoir of memory blocks with a budget.

    Args:
        budget: most bytes lent out (and quarantined) at once; ``lend`` beyond it
            raises :class:`BudgetExhausted` (sync) or waits (async).
        max_class: the largest size class; larger requests get a dedicated mapping.
        decay: seconds a block may stay idle before it is returned to the OS (beyond the
            warm reserve); ``None`` never returns memory on a timer, ``0`` at once.
        backing: ``"mmap"`` (anonymous, lazily committed, returnable with madvise) or
            ``"bytearray"``.
        prefault: commit every page of a slab when it is created, so the request path
            never page-faults (pair with ``decay=None`` to keep it that way).
        huge_pages: ask for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on
            slabs of 2 MiB and more, so a large block faults in 2 MiB at a time; it
            has an effect where the kernel's THP mode is ``madvise`` or ``always``.
        scrub: zero every block when it comes back, so no later borrower can read it.
        prealloc: blocks to map up front, ``{"64KiB": 32}``; they also set that class's
            warm reserve.
        reserve: idle blocks per class kept committed through decay (default 0).
        retain: most idle bytes kept committed (resident) between decays (default
            8 MiB); beyond it, blocks coming back are returned to the OS at once,
            largest classes and longest idle first. ``None`` sets no cap: only
            ``decay`` returns memory. A cap trades page faults on reuse for a lower
            RSS under load.
        retry_after: the ``Retry-After`` hint (seconds) carried by budget errors.
        max_waiters: most async lends queued at once; beyond it ``lend_async`` sheds at
            once with :class:`BudgetExhausted`. ``None`` means unbounded.
        name: shown in the repr, stats and metrics.

    A pool is safe to share between threads; an :class:`Arena` belongs to one task
    or thread.
    """

    def __init__(
        self,
        budget: int | str = "256MiB",
        *,
        max_class: int | str = "16MiB",
        decay: float | None = 10.0,
        backing: Backing = "mmap",
        prefault: bool = False,
        huge_pages: bool = True,
        scrub: bool = False,
        prealloc: Mapping[int | str, int] | None = None,
        reserve: int = 0,
        retain: int | str | None = "8MiB",
        retry_after: float = 1.0,
        max_waiters: int | None = None,
        name: str | None = None,
    ) -> None:
        self.budget = parse_size(budget, name="budget")
        self.max_class = parse_size(max_class, name="max_class")
        if self.max_class < MIN_CLASS:
            msg = f"max_class must be at least 4 KiB, got {max_class!r}"
            raise InvalidSize(msg, value=max_class)
        if backing not in ("mmap", "bytearray"):
            msg = f"backing must be 'mmap' or 'bytearray', got {backing!r}"
            raise InvalidSize(msg, value=backing)
        if decay is not None and decay < 0:
            msg = f"decay must be None or zero or more seconds, got {decay!r}"
            raise InvalidSize(msg, value=decay)
        if reserve < 0:
            msg = f"reserve must be zero or more blocks, got {reserve!r}"
            raise InvalidSize(msg, value=reserve)
        self.decay = decay
        self.retain = None if retain is None else parse_size(retain, name="retain", allow_zero=True)
        self.backing: Backing = backing
        self.prefault = prefault
        self.huge_pages = huge_pages
        self.scrub = scrub
        self.retry_after = retry_after
        self.max_waiters = max_waiters
        self.name = name or f"pool-{id(self):x}"
        self._sizes = size_classes(self.max_class)
        self._classes = [_ClassState(size, reserve) for size in self._sizes]
        self._lock = threading.Lock()
        self._slabs: set[_Slab] = set()
        self._huge: set[Block] = set()
        self._pending: deque[Block] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._lent_bytes = 0
        self._quarantined_bytes = 0
        self._mapped_bytes = 0
        self._high_water = 0
        self._waits = 0
        self._wait_timeouts = 0
        self._shed = 0
        self._returned_bytes = 0
        self._trims = 0
        self._escapes = 0
        self._huge_lent = 0
        self._idle_committed = 0  # bytes of idle blocks whose pages may be resident
        # arenas opened and closed: next() on an itertools.count is atomic, so arenas
        # come and go without the lock; _arena_counts() reads them
        self._opened = itertools.count()
        self._closed_arenas = itertools.count()
        self._decay_thread: threading.Thread | None = None
        self._stop = threading.Event()
        for key, count in (prealloc or {}).items():
            self._prealloc(parse_size(key, name="prealloc size"), count)
        register_slab_pool(self)

    # -- public API --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def lent_bytes(self) -> int:
        """Bytes lent out right now (block sizes, not the sizes asked for)."""
        return self._lent_bytes

    @property
    def available(self) -> int:
        """Bytes the budget still allows to be lent."""
        return max(0, self.budget - self._lent_bytes - self._quarantined_bytes)

    def arena(
        self, *, limit: int | str | None = None, scrub: bool | None = None, name: str | None = None
    ) -> Arena:
        """A new :class:`Arena` drawing from this pool (use it as a context manager)."""
        return (_ARENA or _arena_class())(self, limit=limit, scrub=scrub, name=name)

    def block_size(self, nbytes: int) -> int:
        """The size of block a request for ``nbytes`` gets (its class, or page-rounded)."""
        if nbytes <= self.max_class:
            return self._sizes[bisect.bisect_left(self._sizes, nbytes)]
        return -(-nbytes // PAGE) * PAGE

    def lend(self, nbytes: int) -> Block:
        """Lend a block of at least ``nbytes`` now, or raise :class:`BudgetExhausted`.

        A sync lend never overtakes async waiters: while any are queued it fails.
        """
        if type(nbytes) is int and 0 < nbytes <= self.max_class:  # the common case
            sizes = self._sizes
            index = _bisect_left(sizes, nbytes)
            size = sizes[index]
            lock = self._lock
            lock.acquire()  # not `with`: its __exit__ call costs as much as the rest
            try:
                if self._pending:
                    self._drain_pending()
                if (
                    not (self._closed or self._waiters)
                    and self._lent_bytes + self._quarantined_bytes + size <= self.budget
                ):
                    return self._take_class(index, size)
            finally:
                lock.release()
        # everything else, and every refusal with its error
        size = self._check_request(nbytes)
        with self._lock:
            if self._pending:
                self._drain_pending()
            if self._closed:
                self._check_open()
            if self._waiters or self._lent_bytes + self._quarantined_bytes + size > self.budget:
                raise self._exhausted(nbytes, size, waited=0.0)
            return self._take(nbytes, size)

    async def lend_async(self, nbytes: int, *, timeout: float | None = None) -> Block:
        """Lend a block of at least ``nbytes``, waiting FIFO up to ``timeout`` seconds.

        Never blocks the event loop. Raises :class:`BudgetExhausted` when the wait times
        out, when the queue is at ``max_waiters``, or when ``nbytes`` exceeds the whole
        budget. A cancelled waiter leaves the queue and gives back anything granted.
        """
        size = self._check_request(nbytes)
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drain_pending()
            self._check_open()
            if not self._waiters and self._fits(size):
                return self._take(nbytes, size)
            if timeout is not None and timeout <= 0:
                raise self._exhausted(nbytes, size, waited=0.0)
            if self.max_waiters is not None and len(self._waiters) >= self.max_waiters:
                self._shed += 1
                raise self._exhausted(nbytes, size, waited=0.0, shed=True)
            waiter = _Waiter(nbytes, size, loop)
            self._waiters.append(waiter)
            self._waits += 1
        started = time.monotonic()
        if timeout is not None:
            waiter.handle = loop.call_later(timeout, self._expire, waiter, started)
        try:
            await waiter.fut
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            if waiter.handle is not None:
                waiter.handle.cancel()
        block = waiter.block
        waiter.block = None
        if block is None:  # pragma: no cover - defensive; a result always carries a block
            raise self._exhausted(nbytes, size, waited=time.monotonic() - started)
        return block

    def give_back(self, blocks: Iterable[Block]) -> int:
        """Return lent blocks. Returns how many were quarantined (a view escaped)."""
        returned = blocks if type(blocks) is list else list(blocks)
        for block in returned:
            view = block.view
            if view is not None:
                block.view = None
                try:  # noqa: SIM105 - per block; contextlib.suppress costs a frame
                    view.release()
                except BufferError:  # an export of the root: the carrier stays held
                    pass
        view = None  # hold no view while counting references below
        quarantined = 0
        classes = self._classes
        lock = self._lock
        lock.acquire()
        try:
            now = _monotonic()
            # a block that needs no scrub, trim or unmap goes straight onto its free list
            plain = not (self.scrub or self._closed or self.decay == 0)
            for block in returned:
                if block.state != _LENT:
                    continue
                if _getrefcount(block.carrier) > block.baseline:  # a view is alive
                    self._quarantine(block)
                    quarantined += 1
                    continue
                self._lent_bytes -= block.size
                slab = block.slab
                if slab.class_index == _HUGE:
                    self._huge_lent -= 1
                    self._make_idle(block, now)
                    continue
                cls = classes[slab.class_index]
                cls.lent -= 1
                if plain and not block.scrub:  # _make_idle's common case, inline
                    block.used = 0
                    block.state = _IDLE
                    block.idle_since = now
                    cls.free.append(block)
                    cls.idle += 1
                    slab.idle += 1
                    self._idle_committed += block.size
                else:
                    self._make_idle(block, now)
            if self.retain is not None and self._idle_committed > self.retain:
                self._enforce_retain()
            if self._pending:
                self._drain_pending()
            elif self._waiters:
                self._grant_waiters()
        finally:
            lock.release()
        return quarantined

    def trim(self, *, older_than: float = 0.0, keep_reserve: bool = True) -> int:
        """Give idle memory back to the OS now; returns the bytes returned.

        Blocks idle for at least ``older_than`` seconds beyond each class's warm reserve
        (all of them with ``keep_reserve=False``) are ``madvise``d away, and slabs that
        are wholly idle are unmapped.
        """
        with self._lock:
            self._drain_pending()
            if self._closed:
                return 0
            returned = self._trim_locked(time.monotonic() - older_than, keep_reserve)
            if returned:
                self._trims += 1
        if returned:
            log.debug("%s: returned %s to the OS", self.name, format_size(returned))
        return returned

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the pool's state and counters."""
        with self._lock:
            self._drain_pending()
            classes = [
                {
                    "size": c.size,
                    "lent_blocks": c.lent,
                    "lent_bytes": c.lent * c.size,
                    "idle_blocks": c.idle,
                    "idle_bytes": c.idle * c.size,
                    "quarantined_blocks": c.quarantined,
                    "quarantined_bytes": c.quarantined * c.size,
                    "high_water_blocks": c.high_water,
                    "reserve_blocks": c.reserve,
                }
                for c in self._classes
                if c.lent or c.idle or c.quarantined or c.high_water
            ]
            idle_bytes = sum(c.idle * c.size for c in self._classes)
            arenas_open, arenas_total = self._arena_counts()
            return {
                "name": self.name,
                "closed": self._closed,
                "backing": self.backing,
                "budget": self.budget,
                "max_class": self.max_class,
                "decay": self.decay,
                "scrub": self.scrub,
                "lent_bytes": self._lent_bytes,
                "lent_blocks": sum(c.lent for c in self._classes) + self._huge_lent,
                "huge_lent_blocks": self._huge_lent,
                "idle_bytes": idle_bytes,
                "idle_committed_bytes": self._idle_committed,
                "retain": self.retain,
                "idle_blocks": sum(c.idle for c in self._classes),
                "quarantined_bytes": self._quarantined_bytes,
                "quarantined_blocks": sum(c.quarantined for c in self._classes)
                + sum(1 for b in self._huge if b.state == _QUARANTINED),
                "mapped_bytes": self._mapped_bytes,
                "available_bytes": max(0, self.budget - self._lent_bytes - self._quarantined_bytes),
                "high_water_lent_bytes": self._high_water,
                "waits": self._waits,
                "waiting": len(self._waiters),
                "wait_timeouts": self._wait_timeouts,
                "shed": self._shed,
                "returned_bytes": self._returned_bytes,
                "trims": self._trims,
                "escapes": self._escapes,
                "arenas_open": arenas_open,
                "arenas_total": arenas_total,
                "classes": classes,
            }

    def close(self) -> None:
        """Unmap everything idle and refuse further use (idempotent).

        Blocks still lent are unmapped when they come back; queued waiters fail with
        :class:`PoolClosedError`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drain_pending()
            for waiter in self._waiters:
                waiter.loop.call_soon_threadsafe(self._fail_waiter, waiter)
            self._waiters.clear()
            for slab in list(self._slabs):
                if slab.idle == slab.nblocks:
                    self._unmap_locked(slab)
        self._stop.set()

    def __enter__(self) -> SlabPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            self._drain_pending()
        lent_blocks = sum(c.lent for c in self._classes) + self._huge_lent
        idle_blocks = sum(c.idle for c in self._classes)
        idle_bytes = sum(c.idle * c.size for c in self._classes)
        parts = [
            f"in use {lent_blocks} blocks / {format_size(self._lent_bytes)}",
            f"idle {idle_blocks} / {format_size(idle_bytes)}",
        ]
        if self._quarantined_bytes:
            parts.append(f"quarantined {format_size(self._quarantined_bytes)}")
        if self._waiters:
            parts.append(f"waiting {len(self._waiters)}")
        parts.append(f"budget {format_size(self.budget)}")
        closed = " closed" if self._closed else ""
        return f"<SlabPool{closed} [{' | '.join(parts)}]>"

    # -- arena bookkeeping (called by Arena) ---------------------------------------

    def _arena_opened(self) -> None:
        if self._closed:
            self._check_open()
        next(self._opened)

    def _arena_closed(self) -> None:
        next(self._closed_arenas)

    def _arena_counts(self) -> tuple[int, int]:
        """(arenas open now, arenas opened in all): lock-free, so close enough."""
        closed = _count_value(self._closed_arenas)  # first: opened >= closed then
        opened = _count_value(self._opened)
        return opened - closed, opened

    # -- internals (the lock is held where a name ends in _locked or says so) -----

    def _check_request(self, nbytes: int) -> int:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            msg = f"size must be an int number of bytes, got {nbytes!r}"
            raise InvalidSize(msg, value=nbytes)
        if nbytes <= 0:
            msg = f"size must be positive, got {nbytes!r}"
            raise InvalidSize(msg, value=nbytes)
        size = self.block_size(nbytes)
        if size > self.budget:
            msg = (
                f"requested {format_size(nbytes)} ({nbytes!r} bytes) is more than the whole "
                f"budget of {format_size(self.budget)}; raise budget= or read the data in parts"
            )
            raise BudgetExhausted(
                msg,
                requested=nbytes,
                available=self.available,
                budget=self.budget,
                waited=0.0,
                retry_after=self.retry_after,
            )
        return size

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{self.name} is closed; create a new SlabPool"
            raise PoolClosedError(msg)

    def _fits(self, size: int) -> bool:
        return self._lent_bytes + self._quarantined_bytes + size <= self.budget

    def _exhausted(
        self, nbytes: int, size: int, *, waited: float, shed: bool = False
    ) -> BudgetExhausted:
        available = self.available
        why = (
            f"{len(self._waiters)} requests are already waiting (max_waiters={self.max_waiters})"
            if shed
            else f"{format_size(available)} of the {format_size(self.budget)} budget is free"
        )
        waited_text = f" after waiting {waited:.3f}s" if waited else ""
        msg = (
            f"memory budget exhausted: requested {format_size(nbytes)} "
            f"(a {format_size(size)} block){waited_text}; {why}. "
            f"Retry after {self.retry_after:g}s, or raise budget="
        )
        return BudgetExhausted(
            msg,
            requested=nbytes,
            available=available,
            budget=self.budget,
            waited=waited,
            retry_after=self.retry_after,
        )

    def _take(self, nbytes: int, size: int) -> Block:
        """Lend one block (lock held, budget already checked)."""
        if nbytes <= self.max_class:
            return self._take_class(_bisect_left(self._sizes, size), size)
        slab = self._new_slab(_HUGE, size, 1)
        block = slab.blocks[0]
        slab.idle = 0
        self._huge.add(block)
        self._huge_lent += 1
        return self._lent(block, size)

    def _take_class(self, index: int, size: int) -> Block:
        """Lend one block of class ``index`` (lock held, budget already checked)."""
        cls = self._classes[index]
        if not cls.free:
            slab = self._new_slab(index, size, _blocks_per_slab(size))
            # push in reverse so the lowest offsets come out first
            cls.free.extend(reversed(slab.blocks))
            cls.idle += slab.nblocks
        block = cls.free.pop()
        block.slab.idle -= 1
        cls.idle -= 1
        if block.committed:
            self._idle_committed -= size
        lent = cls.lent = cls.lent + 1
        if lent > cls.high_water:  # noqa: PLR1730 - hot path: max() is a call
            cls.high_water = lent
        return self._lent(block, size)

    def _lent(self, block: Block, size: int) -> Block:
        """Mark a block taken off a free list (or mapped) as lent and arm its root view."""
        block.state = _LENT
        block.committed = True
        block.used = 0
        held = self._lent_bytes = self._lent_bytes + size
        held += self._quarantined_bytes
        if held > self._high_water:  # noqa: PLR1730 - hot path: max() is a call
            self._high_water = held
        carrier = block.carrier
        if carrier is None:
            carrier = self._arm(block)
        block.view = memoryview(carrier).cast("B")
        return block

    def _arm(self, block: Block) -> ctypes.Array[ctypes.c_char]:
        """Give a block its carrier and record the carrier's baseline reference count."""
        huge = block.slab.class_index == _HUGE
        block.carrier = _carrier_type(block.size, cache=not huge).from_buffer(
            block.slab.buf, block.offset
        )
        # No view exists yet and no local holds the carrier: the same expression in
        # give_back counts the same temporaries, so equal counts mean no view is alive.
        block.baseline = _getrefcount(block.carrier)
        return block.carrier

    def _new_slab(self, index: int, block_size: int, nblocks: int) -> _Slab:
        slab = _Slab(index, block_size, nblocks, self.backing, self.huge_pages)
        if self.prefault:
            ctypes.memset(slab.addr, 0, slab.size)
        self._slabs.add(slab)
        self._mapped_bytes += slab.size
        if self.decay is not None and self._decay_thread is None:
            self._start_decay_thread()
        return slab

    def _prealloc(self, nbytes: int, count: int) -> None:
        size = self.block_size(nbytes)
        if nbytes > self.max_class:
            msg = f"prealloc size {format_size(nbytes)} is above max_class; raise max_class="
            raise InvalidSize(msg, value=nbytes)
        index = bisect.bisect_left(self._sizes, size)
        cls = self._classes[index]
        cls.reserve = max(cls.reserve, count)
        per_slab = _blocks_per_slab(size)
        with self._lock:
            while cls.idle < count:
                slab = self._new_slab(index, size, per_slab)
                now = time.monotonic()
                for block in slab.blocks:
                    block.idle_since = now
                    block.committed = self.prefault
                    if self.prefault:
                        self._idle_committed += block.size
                cls.free[:0] = reversed(slab.blocks)
                cls.idle += slab.nblocks

    def _quarantine(self, block: Block) -> None:
        """LENT -> QUARANTINED: a view of the block outlived its lend (lock held)."""
        carrier = block.carrier
        assert carrier is not None
        block.carrier = None  # the next lend gets a fresh one
        block.state = _QUARANTINED
        size = block.size
        self._lent_bytes -= size
        self._quarantined_bytes += size
        if block.slab.class_index == _HUGE:
            self._huge_lent -= 1
        else:
            cls = self._classes[block.slab.class_index]
            cls.lent -= 1
            cls.quarantined += 1
        # fires when the last stale view dies, perhaps at once (another thread)
        weakref.finalize(carrier, _on_carrier_death, weakref.ref(self), block)
        del carrier
        self._escapes += 1
        log.debug(
            "%s: a view of a %s block outlived its lend; quarantined until it is gone",
            self.name,
            format_size(size),
        )

    def _make_idle(self, block: Block, now: float) -> None:
        """LENT or QUARANTINED -> IDLE, or unmapped (lock held, counters already moved)."""
        slab = block.slab
        if slab.class_index == _HUGE:
            block.state = _IDLE
            self._huge.discard(block)
            self._unmap_locked(slab)
            return
        if (self.scrub or block.scrub) and block.used:
            ctypes.memset(slab.addr + block.offset, 0, block.used)
        block.used = 0
        block.scrub = False
        block.state = _IDLE
        block.idle_since = now
        cls = self._classes[slab.class_index]
        cls.free.append(block)
        cls.idle += 1
        slab.idle += 1
        if block.committed:
            self._idle_committed += block.size
        if self._closed and slab.idle == slab.nblocks:
            self._unmap_locked(slab)
        elif self.decay == 0:
            self._trim_locked(now, keep_reserve=True)

    def _drain_pending(self) -> None:
        """Move blocks whose escaped views died out of quarantine (lock held)."""
        pending = self._pending
        if not pending:
            return
        now = time.monotonic()
        while pending:
            block = pending.popleft()
            if block.state != _QUARANTINED:
                continue
            self._quarantined_bytes -= block.size
            if block.slab.class_index != _HUGE:
                self._classes[block.slab.class_index].quarantined -= 1
            self._make_idle(block, now)
        self._grant_waiters()

    def _grant_waiters(self) -> None:
        """Hand blocks to queued waiters, strictly in order (lock held)."""
        waiters = self._waiters
        while waiters and not self._closed:
            head = waiters[0]
            if head.fut.done():  # expired or cancelled, cleanup pending in its loop
                waiters.popleft()
                continue
            if not self._fits(head.size):
                return
            waiters.popleft()
            head.block = self._take(head.nbytes, head.size)
            head.loop.call_soon_threadsafe(_deliver, head.fut)

    def _expire(self, waiter: _Waiter, started: float) -> None:
        """A waiter's timeout fired (in its loop)."""
        with self._lock:
            if waiter.block is not None or waiter.fut.done():
                return
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._wait_timeouts += 1
            exc = self._exhausted(waiter.nbytes, waiter.size, waited=time.monotonic() - started)
            self._grant_waiters()  # the head may have been the one in the way
        if not waiter.fut.done():
            waiter.fut.set_exception(exc)

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiting task was cancelled or failed: leave the queue, give back grants."""
        with self._lock:
            block = waiter.block
            waiter.block = None
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        if block is not None:
            self.give_back([block])
        else:
            with self._lock:
                self._grant_waiters()

    def _wake(self) -> None:
        """Scheduled by a carrier finalizer: drain quarantine and serve waiters."""
        with self._lock:
            self._drain_pending()

    def _fail_waiter(self, waiter: _Waiter) -> None:
        if not waiter.fut.done():
            waiter.fut.set_exception(PoolClosedError(f"{self.name} was closed while waiting"))

    def _trim_locked(self, cutoff: float, keep_reserve: bool) -> int:
        returned = 0
        emptied: set[_Slab] = set()
        for cls in self._classes:
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
                    returned += self._decommit(block)
        for slab in emptied:
            cls = self._classes[slab.class_index]
            keep = cls.reserve if keep_reserve else 0
            if cls.idle - slab.nblocks < keep:
                continue
            if all(b.idle_since <= cutoff for b in slab.blocks):
                returned += sum(b.size for b in slab.blocks if b.committed)
                self._unmap_locked(slab)
        self._returned_bytes += returned
        return returned

    def _enforce_retain(self) -> None:
        """Return idle blocks to the OS until at most ``retain`` idle bytes stay
        committed: largest classes first, longest idle first, warm reserves kept
        (lock held)."""
        retain = self.retain
        if retain is None or self.backing != "mmap":
            return
        returned = 0
        for cls in reversed(self._classes):
            free = cls.free
            # the stack's bottom holds the blocks idle longest
            for block in free[: max(len(free) - cls.reserve, 0)]:
                if self._idle_committed <= retain:
                    break
                if block.committed:
                    returned += self._decommit(block)
            if self._idle_committed <= retain:
                break
        self._returned_bytes += returned

    def _decommit(self, block: Block) -> int:
        """Give a committed idle block's whole pages back to the OS; the bytes returned
        (lock held)."""
        block.committed = False
        self._idle_committed -= block.size
        slab = block.slab
        if not isinstance(slab.buf, mmap.mmap):
            return 0
        start = -(-block.offset // PAGE) * PAGE
        end = (block.offset + block.size) // PAGE * PAGE
        if end <= start:
            return 0
        slab.buf.madvise(mmap.MADV_DONTNEED, start, end - start)
        return end - start

    def _unmap_locked(self, slab: _Slab) -> None:
        if not slab.mapped:
            return
        for block in slab.blocks:  # each holds an export of the slab's buffer
            block.carrier = None
        if slab.class_index != _HUGE:
            self._idle_committed -= sum(
                b.size for b in slab.blocks if b.committed and b.state == _IDLE
            )
            cls = self._classes[slab.class_index]
            members = set(map(id, slab.blocks))
            cls.free = [b for b in cls.free if id(b) not in members]
            cls.idle -= slab.nblocks
        try:
            slab.unmap()
        except BufferError:  # pragma: no cover - a carrier is still alive; keep it mapped
            log.exception("%s: slab still exported at unmap; leaving it mapped", self.name)
            return
        self._slabs.discard(slab)
        self._mapped_bytes -= slab.size

    def _start_decay_thread(self) -> None:
        interval = max(0.05, (self.decay or 0.0) / 4)
        thread = threading.Thread(
            target=_decay_loop,
            args=(weakref.ref(self), self._stop, interval),
            name=f"arenapool-decay-{self.name}",
            daemon=True,
        )
        self._decay_thread = thread
        thread.start()


def _arena_class() -> type[Arena]:
    """The Arena class: ``_arena`` imports this module, so it is looked up on first use
    (an import statement per call costs more than a whole arena)."""
    global _ARENA
    if _ARENA is None:
        from ._arena import Arena  # noqa: PLC0415 - _arena imports this module

        _ARENA = Arena
    return _ARENA


_ARENA: type[Arena] | None = None


def _on_carrier_death(pool_ref: weakref.ref[SlabPool], block: Block) -> None:
    """The last view of a quarantined block died. Runs anywhere: no locks here."""
    pool = pool_ref()
    if pool is None:
        return
    pool._pending.append(block)
    for loop in {w.loop for w in list(pool._waiters)}:
        with contextlib.suppress(RuntimeError):  # that loop is closed
            loop.call_soon_threadsafe(pool._wake)


def _count_value(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without taking it (its repr: count(N))."""
    return int(repr(counter)[6:-1])


def _decay_loop(pool_ref: weakref.ref[SlabPool], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        decay = pool.decay
        if decay is not None:
            pool.trim(older_than=decay)
        del pool


_CARRIERS: dict[int, type[ctypes.Array[ctypes.c_char]]] = {}


def _carrier_type(size: int, *, cache: bool = True) -> type[ctypes.Array[ctypes.c_char]]:
    """A ctypes char-array type of ``size`` bytes that supports weak references.

    Size classes are few, so their types are cached. Huge sizes are not: defining the
    array through ``_type_``/``_length_`` bypasses ctypes' own unbounded cache of
    ``c_char * n`` types as well.
    """
    carrier = _CARRIERS.get(size)
    if carrier is None:
        namespace = {"_type_": ctypes.c_char, "_length_": size, "__slots__": ("__weakref__",)}
        metaclass: Any = type(ctypes.Array)
        carrier = metaclass(f"_Carrier{size}", (ctypes.Array,), namespace)
        if cache:
            _CARRIERS[size] = carrier
    return carrier
