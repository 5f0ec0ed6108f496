"""SlabPool: the process-wide memory reservoir that arenas borrow blocks from.

Theory of operation
-------------------
A pool owns slabs (``_slab``) of its size classes (``_sizeclasses``) and lends their
blocks under a *budget*. Per class it keeps a free stack (the most recently returned
block on top, so hot blocks are reused while their pages are still resident) and
counts, and for the whole pool the bytes lent, quarantined and mapped, so at every
moment ``lent + idle + quarantined == mapped`` (bytes and blocks, per class). The budget
caps ``lent + quarantined``: quarantined memory is still in use by whoever kept the
view, so it counts.

Concurrency: one ``threading.Lock`` guards all pool state except the arena counters
(``_counter``: ``next()`` is atomic, read as opened - closed). Carrier finalizers
(``_slab``) may run in any thread at any point, including inside our own locked
sections when the GC runs, so they only append to ``_pending``; whoever next takes the
lock drains it. Async lends that find no room wait in the budget queue (``_waiters``),
whose every decision is made under this lock; idle memory goes back to the OS through
decay and retain (``_decay``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import _decay
from ._admission import Admission, Ticket, TicketState, current_ticket
from ._arena import Arena
from ._container import BudgetDerivation, auto_budget, rederive
from ._counter import counter, peek
from ._errors import ArenaPoolError, BudgetExhausted, InvalidSize, PoolClosedError
from ._registry import register_slab_pool
from ._sizeclasses import MIN_CLASS, STRETCH_FROM, blocks_per_slab, class_size, size_classes
from ._slab import (
    CALIBRATION_WINDOWS,
    HUGE_PAGE,
    IDLE,
    LENT,
    ON_LEND,
    ON_QUARANTINE,
    ON_RECLAIM,
    QUARANTINED,
    Backing,
    Block,
    ClassState,
    Slab,
    arm,
    detach_carrier,
    thp_available,
)
from ._ticks import LoopTicks, Runner, every, serving
from ._units import format_size, parse_size
from ._waiters import WaitQueue

__all__ = ["SlabPool"]

log = logging.getLogger("arenapool")

_monotonic = time.monotonic
_getrefcount = sys.getrefcount
_running_loop = asyncio._get_running_loop
_bisect_left = bisect.bisect_left


class SlabPool:
    """A process-wide reservoir of memory blocks with a budget.

    Args:
        budget: most bytes lent out (and quarantined) at once; ``lend`` beyond it
            raises :class:`BudgetExhausted` (sync) or waits (async).
        max_class: the largest size class (rounded down to a class); larger requests
            get a dedicated mapping.
        mid_classes: size classes per doubling from 64 KiB to 1 MiB: 1 (the default:
            64 KiB, 128 KiB, 256 KiB, 512 KiB, 1 MiB), 2 or 4 (as everywhere else).
            Fewer classes keep bodies of a spread of sizes on fewer, warmer blocks (fewer
            idle blocks committed, fewer page faults); more charge the budget closer to
            the sizes asked for, since a block is charged whole (``_sizeclasses`` says
            more).
        decay: seconds a block may stay idle before it is returned to the OS (beyond the
            warm reserve); ``None`` never returns memory on a timer, ``0`` at once.
            The pool's maintenance (decay, ``retain``, calibration) starts with its
            first return (``give_back``): as timer callbacks of the event loop running
            in that thread, or, with none running there, on a daemon thread of the
            pool's own (a thread makes glibc's ``malloc`` take a lock for the rest of
            the process; see ``_ticks``).
        backing: ``"mmap"`` (anonymous, lazily committed, returnable with madvise) or
            ``"bytearray"``.
        prefault: commit every page of a slab when it is created, so the request path
            never page-faults (pair with ``decay=None`` to keep it that way).
        populate: when a lend's block has had its pages given back (or never had
            any), the arena that takes it for an allocation of 16 KiB or more faults
            that allocation's pages in with one ``madvise(MADV_POPULATE_WRITE)`` before
            it is filled, instead of one page fault per 4 KiB page as the fill first
            touches each (default ``True``; Linux 5.14 and later, a no-op elsewhere).
            The pages are the ones the fill commits anyway; on this machine a cold
            1 MiB allocation and fill took two thirds of the time
            (``benchmarks/cold_lend.py``). Blocks in huge pages are left to fault
            (one fault per 2 MiB). It matters for pools that give memory back under
            load (``retain=0``, ``warm_rate``), and for every block's first lend.
        huge_pages: ask for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on
            slabs of 2 MiB and more, so a large block faults in 2 MiB at a time; it
            has an effect where the kernel's THP mode is ``madvise`` or ``always``.
        keep_huge_warm: ``False`` has the classes of 2 MiB and more keep nothing warm
            beyond ``reserve=``/``prealloc``, however often they are lent: their idle
            blocks go back to the OS at the next maintenance pass (off the request path,
            within ``_decay.WAKE_GAP``), whatever ``retain`` is. It acts with
            ``huge_pages`` where the kernel gives huge pages, without ``prefault``, and
            when the pool returns memory at all (``decay`` or ``retain`` set). A huge
            page faults back in at one fault and one kernel clear per 2 MiB, where small
            pages cost 512 faults: on this machine refilling 16 MiB given back took
            1.03 ms more than a warm fill in huge pages and 10.30 ms more in small ones
            (``benchmarks/huge_refill.py``). Default ``True``: under a mixed load the
            large blocks kept warm also serve smaller lends (``stretch``).
        warm_rate: lends a second a class needs to keep a warm reserve (default
            ``None``: every class keeps its calibrated reserve, however seldom lent; 20
            is the value measured under a mixed load, see docs/core.md). At each tick,
            a class asked for fewer times than that over the window keeps nothing warm
            beyond its floor: its idle blocks go back at the next pass, whatever
            ``retain`` allows (a lend that stretches counts for the class it asked
            for). A reserve saves faults only as often as its class is lent, so per
            byte it holds a seldom-lent class saves few; a steady stream of one size
            keeps its blocks warm. A window without any lend changes nothing. Acts on
            calibrating pools (``calibrate=True``); ``stats()["cold_classes"]`` lists
            the classes that keep nothing warm now.
        warm_share: the share of the pool's lends a class needs to keep a calibrated
            warm reserve (default 0.25; ``None``: every class keeps its own). At each
            tick, a class asked for less than that share of the pool's lends over the
            recent active windows (the 8 ticks its reserve's median covers) keeps only
            its floor, and ``retain`` alone decides whether its idle blocks stay warm.
            A mix of sizes spread over many classes has each class peak at a block or
            two while it has a fraction of one out on average, so per-class reserves
            hold idle what the traffic seldom needs; a steady size (or two or three)
            the traffic leans on keeps its reserve. Unlike ``warm_rate`` it
            reads no rate: the same traffic keeps the same classes warm at any speed.
            ``stats()["minor_classes"]`` lists the classes under it now.
        scrub: zero every block when it comes back, so no later borrower can read it.
        prealloc: blocks to map up front, ``{"64KiB": 32}``; they also set that class's
            warm reserve.
        reserve: idle blocks per class kept committed through decay and retain
            (default 0): the floor of each class's warm reserve, which the pool's
            maintenance recalibrates from the traffic (the median of the most
            blocks lent at once over its last 8 ticks, and for a tick or two its
            latest peak when that is more; see ``_decay``).
        calibrate: recalibrate the warm reserves from the traffic (default True).
            ``False`` keeps each class's reserve at its floor (``reserve=``, or its
            ``prealloc`` count), so ``retain`` alone says how much idle memory stays
            committed: with ``retain=0``, the leanest pool, every idle block beyond the
            floors goes back to the OS soon after it comes back, and the next lend of
            it faults its pages in again.
        retain: most idle bytes kept committed (resident) between decays (default
            2 MiB); beyond it, the pool's maintenance returns idle blocks to the
            OS soon after they come back (``give_back`` itself never does: nothing is
            decommitted on the request path), largest classes and longest idle first,
            warm reserves kept. ``None`` sets no cap: only ``decay`` returns memory. A
            cap trades page faults on reuse for a lower RSS under load; the classes
            that keep a calibrated reserve (``warm_share``) are not under it.
        stretch: a lend of 256 KiB or more that finds no warm (committed) idle block in
            its class takes one from a larger class, up to ``stretch`` times its own
            size (default 4; ``1``: never), instead of faulting a cold block in. A
            general allocator hands a freed chunk's warm pages to the next request of
            any size, where a class's blocks serve only that class. The larger block is
            charged to the budget whole, so a lend stretches only while it leaves half
            the budget free.
        retry_after: the ``Retry-After`` hint (seconds) carried by budget errors.
        max_waiters: most async lends queued at once; beyond it ``lend_async`` sheds at
            once with :class:`BudgetExhausted`. ``None`` means unbounded.
        name: shown in the repr, stats and metrics.
        workers: with ``budget="auto"``, the worker processes sharing the container
            (default: read from the environment; docs/scaling.md).
        auto_interval: with ``budget="auto"``, seconds between two readings of the
            container's limit (default 10; ``0``: read once). The readings start with
            the pool's first return, on the event loop running there or on a thread,
            as the maintenance does.

    A pool is safe to share between threads; an :class:`Arena` belongs to one task
    or thread.
    """

    def __init__(
        self,
        budget: int | str = "256MiB",
        *,
        max_class: int | str = "16MiB",
        mid_classes: int = 1,
        decay: float | None = 10.0,
        backing: Backing = "mmap",
        prefault: bool = False,
        populate: bool = True,
        huge_pages: bool = True,
        keep_huge_warm: bool = True,
        warm_rate: float | None = None,
        warm_share: float | None = 0.25,
        scrub: bool = False,
        prealloc: Mapping[int | str, int] | None = None,
        reserve: int = 0,
        calibrate: bool = True,
        retain: int | str | None = "2MiB",
        stretch: float = 4.0,
        retry_after: float = 1.0,
        max_waiters: int | None = None,
        name: str | None = None,
        workers: int | None = None,
        auto_interval: float = 10.0,
    ) -> None:
        #: how ``budget="auto"`` was derived (``None`` for a given budget)
        self.derivation: BudgetDerivation | None = None
        if budget == "auto":
            self.derivation = auto_budget(workers)
            self.budget = self.derivation.budget
            log.info("%s", self.derivation.describe())
        else:
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
        if not stretch >= 1:
            msg = f"stretch must be 1 or more, got {stretch!r}"
            raise InvalidSize(msg, value=stretch)
        self.stretch = float(stretch)
        self.decay = decay
        self.calibrate = calibrate
        self.retain = None if retain is None else parse_size(retain, name="retain", allow_zero=True)
        self.backing: Backing = backing
        self.prefault = prefault
        self.populate = populate
        self.huge_pages = huge_pages
        self.scrub = scrub
        self.retry_after = retry_after
        self.max_waiters = max_waiters
        self.name = name or f"pool-{id(self):x}"
        self._sizes = size_classes(self.max_class, mid_classes)  # checks mid_classes
        self.mid_classes = mid_classes
        # a max_class between two classes is the class below it: a request above that
        # gets a mapping of its own (a class would have to be found above max_class)
        self.max_class = self._sizes[-1]
        self._classes = [ClassState(size, reserve) for size in self._sizes]
        self.keep_huge_warm = keep_huge_warm
        if warm_rate is not None and not warm_rate >= 0:
            msg = f"warm_rate must be None or zero or more lends a second, got {warm_rate!r}"
            raise InvalidSize(msg, value=warm_rate)
        self.warm_rate = warm_rate
        if warm_share is not None and not 0 <= warm_share <= 1:
            msg = f"warm_share must be None or a share of the lends from 0 to 1, got {warm_share!r}"
            raise InvalidSize(msg, value=warm_share)
        self.warm_share = warm_share
        self._calibrated_at = _monotonic()
        self._spread = False  # see the spread property
        returns = decay is not None or self.retain is not None
        if not (keep_huge_warm or prefault) and huge_pages and backing == "mmap" and returns:
            cold_huge = thp_available()
            for cls in self._classes:
                cls.cold = cls.huge = cold_huge and cls.size >= HUGE_PAGE
        self._lock = threading.Lock()
        self._slabs: set[Slab] = set()
        self._huge: set[Block] = set()
        self._pending: deque[Block] = deque()
        self._queue = WaitQueue(self._lock)
        self._waiters = self._queue.waiting  # the same deque: truthiness at C speed
        self._admission = Admission(self.budget, outside=_outside(weakref.ref(self)))
        self._ticket_blocks: dict[Block, Ticket] = {}  # blocks lent under a ticket
        self._closed = False
        self._lent_bytes = 0
        self._quarantined_bytes = 0
        self._mapped_bytes = 0
        self._high_water = 0
        # the most bytes lent at once since the last calibration, and the recent
        # active windows' values: the pool's warm reserves together fit in their median
        self._window_high = 0
        self._byte_peaks: deque[int] = deque(maxlen=CALIBRATION_WINDOWS)
        self._returned_bytes = 0
        self._trims = 0
        self._escapes = 0
        self._huge_lent = 0
        self._idle_committed = 0  # bytes of idle blocks whose pages may be resident
        # give_back asks for a retain pass above this many idle committed bytes:
        # ``retain``, or what the last pass had to keep (the warm reserves) if more, so
        # blocks the reserves keep warm do not ask at every return (_decay.maintain)
        self._wake_above = self.retain
        self._cold_idle = False
        # arenas opened and closed: next() on a counter is atomic, so arenas come and
        # go without the lock; _arena_counts() reads them
        self._opened = counter()
        self._closed_arenas = counter()
        # what runs the maintenance (_decay.start_maintenance) and what re-reads a
        # budget="auto" limit every _auto_interval seconds (_start_periodic)
        self._maintainer: Runner | None = None
        self._auto_reader: Runner | None = None
        self._auto_interval = auto_interval if self.derivation is not None else 0.0
        if self._auto_interval > 0 or self.decay is not None or self.retain is not None:
            # both start with the first return, on the loop that serves it (if one
            # runs there): -1 has give_back ask _hold_retain, which starts them. A pool
            # made before the loop (at import, in setup()) then starts no thread.
            self._wake_above = -1
        self._stop = threading.Event()
        # set to wake the maintenance thread (retain passed): give_back never decommits
        self._maintenance = threading.Event()
        # retain passed with an event loop running: the loop its pass is due on (one at
        # a time; None: none due), and the loop time before which the next one may not
        # run (_hold_retain)
        self._retain_due_on: asyncio.AbstractEventLoop | None = None
        self._retain_after = 0.0
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
    def spread(self) -> bool:
        """True while this pool's lends are spread over its size classes: at its last
        calibration with lends (every ``decay / 4`` seconds), no class had taken half
        of the lends over the recent active windows (``_decay.SPREAD_SHARE``; about
        the last 20 s with the default ``decay``), as under a mix of body sizes. False
        under one steady size, before the first lend, when the bodies are small
        enough to be decoded without one (``inline_max``), and with
        ``calibrate=False`` (no standings are kept). The governor reads it to choose
        how it trims the C heap under load (``GovernorConfig.spread_trim_every``)."""
        return self._spread

    @property
    def idle_bytes(self) -> int:
        """Bytes of the size classes' idle blocks, kept for reuse (committed or not),
        as ``stats()["idle_bytes"]`` counts them, without the rest of ``stats()``."""
        with self._lock:
            self._drain_pending()  # as stats() does: quarantined blocks whose views died
            return self._idle_bytes_locked()

    def _idle_bytes_locked(self) -> int:
        """The size classes' idle bytes, under the lock: :attr:`idle_bytes` and
        ``stats()`` (``repr()`` reads it and the rest without, once it has drained)."""
        return sum(c.idle * c.size for c in self._classes)

    @property
    def available(self) -> int:
        """Bytes the budget still allows to be lent."""
        return max(0, self.budget - self._lent_bytes - self._quarantined_bytes)

    def arena(
        self, *, limit: int | str | None = None, scrub: bool | None = None, name: str | None = None
    ) -> Arena:
        """A new :class:`Arena` drawing from this pool (use it as a context manager)."""
        return Arena(self, limit=limit, scrub=scrub, name=name)

    def block_size(self, nbytes: int) -> int:
        """The size of block a request for ``nbytes`` gets (its class, or page-rounded)."""
        return class_size(self._sizes, self.max_class, nbytes)

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
                    cls = self._classes[index]
                    cls.lends += 1  # the class asked for, even when a lend stretches
                    if size >= STRETCH_FROM and self.stretch > 1:
                        return self._take_class(self._warm_class(index, None))
                    return self._take_class(cls)
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

    async def lend_async(
        self, nbytes: int, *, timeout: float | None = None, ticket: Ticket | None = None
    ) -> Block:
        """Lend a block of at least ``nbytes``, waiting FIFO up to ``timeout`` seconds.

        Never blocks the event loop. Raises :class:`BudgetExhausted` when the wait times
        out, when the queue is at ``max_waiters``, when the admission predictor says the
        wait would outlast ``timeout``, or when ``nbytes`` exceeds the whole budget. A
        cancelled waiter leaves the queue and gives back anything granted. A lend under
        an admission ``ticket`` (see :meth:`admit`) draws on the room kept for it and
        goes ahead of lends without one.
        """
        size = self._check_request(nbytes)
        if ticket is None:
            ticket = current_ticket.get()
            if ticket is not None and ticket.state is not TicketState.ADMITTED:
                ticket = None  # finished, or another pool's refused one
        with self._lock:
            self._drain_pending()
            self._check_open()
            waiters = self._waiters
            first = not waiters or (ticket is not None and waiters[0].ticket is None)
            if first and self._fits(size, ticket):
                return self._take(nbytes, size, ticket)
            waiter = self._queue.join(self, nbytes, size, timeout, ticket)
        return await self._queue.wait(self, waiter, timeout)

    async def admit(
        self, nbytes: int, *, timeout: float | None = None, within: float | None = None
    ) -> Ticket:
        """Admit a body of ``nbytes`` as a whole before it is read past its first step.

        Returns a :class:`~arenapool._admission.Ticket` once the pool can keep room for
        all of it (lend its steps with ``lend_async(..., ticket=ticket)``), waiting FIFO
        when that is likely within ``timeout``; raises :class:`BudgetExhausted` at once
        when it is not (see ``arenapool._admission``); with ``within``, also when it is
        not likely to be done within that many seconds (a proxy's deadline for the whole
        request). Call :meth:`finish` on every path.
        """
        need = self._admission_need(nbytes)
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drain_pending()
            self._check_open()
            ticket = self._admission.offer(need, timeout, within)
            if ticket.state is TicketState.QUEUED:
                fut: asyncio.Future[None] = loop.create_future()
                ticket.waiter = (loop, fut)
        if ticket.state is TicketState.ADMITTED:
            return ticket
        if ticket.state is TicketState.REFUSED:
            raise self._refused(ticket, nbytes)
        handle = None
        if timeout is not None:
            handle = loop.call_later(timeout, self._expire_ticket, ticket)
        try:
            await fut
        except BaseException:
            self.finish(ticket)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if _state(ticket) is TicketState.ADMITTED:  # set meanwhile, under the lock
            return ticket
        self._check_open()  # cancelled by close()
        raise self._refused(ticket, nbytes)

    def expect(
        self, nbytes: int, *, timeout: float | None = None, within: float | None = None
    ) -> int:
        """Judge a declared body of ``nbytes`` as it arrives, before its first step.

        Raises :class:`BudgetExhausted` at once when it could not be admitted in time
        (``Admission.judge``: everything queued and everything expected before it goes
        first); else counts it as expected, and returns the amount to hand back to
        :meth:`unexpect` when it asks :meth:`admit` or ends. Reserves nothing.
        """
        need = self._admission_need(nbytes)  # as admit() will ask
        with self._lock:
            refused = self._admission.judge(need, timeout, within)
            if refused is None:
                self._admission.pending += need
                return need
        raise self._refused(refused, nbytes)

    def unexpect(self, need: int) -> None:
        """An expected body (:meth:`expect`) asked for its ticket, or ended."""
        with self._lock:
            self._admission.pending -= need

    def finish(self, ticket: Ticket) -> None:
        """End ``ticket`` (its body is read, or its client left); idempotent."""
        with self._lock:
            changed = self._admission.finish(ticket)
            if self._waiters:
                self._queue.settle(self)  # the room kept for it is free for others now
        _wake_tickets(changed)

    def expected_fit(self) -> bool:
        """True while every body judged on its head and not yet admitted (``pending``,
        :meth:`expect`) fits what the budget still allows to be lent (lock-free: a
        hint)."""
        return self._admission.pending <= self.available

    def admitting(self) -> bool:
        """True while lends or bodies wait for memory (lock-free: a hint). A body that
        arrives then is judged for admission before its first step, not after it."""
        return bool(self._admission.queue) or bool(self._waiters)

    def accepting(self) -> bool:
        """False while admission sheds new arrivals (its queue is standing)."""
        with self._lock:
            return self._admission.accepting()

    def refresh_budget(self) -> bool:
        """Re-read the container limit of a ``budget="auto"`` pool; True if it changed."""
        previous = self.derivation
        if previous is None:
            return False
        try:
            derived = rederive(previous)
        except ArenaPoolError as exc:
            log.warning("budget=auto: keeping %s: %s", format_size(self.budget), exc)
            return False
        if derived.budget == self.budget:
            return False
        log.info("budget=auto: the limit changed; %s", derived.describe())
        with self._lock:
            self.derivation = derived
            self.budget = derived.budget
            changed = self._admission.resize(derived.budget)
            if self._waiters:
                self._queue.settle(self)
        _wake_tickets(changed)
        return True

    def _expire_ticket(self, ticket: Ticket) -> None:
        with self._lock:
            changed = self._admission.cancel(ticket, expired=True)
        _wake_tickets(changed)

    def _refused(self, ticket: Ticket, nbytes: int) -> BudgetExhausted:
        reasons = {
            "too-large": "it is larger than the whole budget",
            "no-wait": "nothing is free and it may not wait",
            "predicted": "at the rate memory comes back it would not be admitted in time",
            "standing-queue": "requests have queued for memory longer than the target",
            "expired": "it was not admitted in time",
        }
        why = reasons.get(ticket.reason, ticket.reason or "the pool was closed")
        waited = 0.0 if ticket.admitted_at is None else ticket.admitted_at - ticket.enqueued
        if ticket.reason == "expired":
            waited = max(0.0, self._admission.clock() - ticket.enqueued)
        return self._exhausted(
            nbytes, ticket.need, waited=waited, reason=why, retry_after=ticket.retry_after
        )

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
        lock = self._lock
        lock.acquire()
        try:
            now = _monotonic()
            tickets = self._ticket_blocks
            freed = 0
            for block in returned:
                growing = False
                if tickets:
                    ticket = tickets.pop(block, None)
                    if ticket is not None:
                        growing = ticket.state is TicketState.ADMITTED
                        self._admission.charge(ticket, -block.size)
                if block.state is not LENT:
                    continue
                if not growing:  # a body's outgrown step is no request done: no rate
                    freed += block.size
                if _getrefcount(block.carrier) > block.baseline:  # _slab.escaped(), inlined
                    self._quarantine(block)
                    quarantined += 1
                    continue
                self._lent_bytes -= block.size
                cls = block.slab.cls
                if cls is None:
                    self._huge_lent -= 1
                else:
                    cls.lent -= 1
                self._make_idle(block, now)
            wake_above = self._wake_above
            if self._cold_idle or (wake_above is not None and self._idle_committed > wake_above):
                # off the request path: a pass of its own decommits (see _decay)
                self._hold_retain()
            if self._pending:
                self._drain_pending()
            elif self._waiters:
                self._queue.settle(self)
            admission = self._admission
            changed = None
            if admission.queue or self._waiters:
                changed = admission.returned(freed, contended=True)
            else:  # a return without contention closes the rate's window unsampled
                admission.rate.start = None
        finally:
            lock.release()
        if changed:
            _wake_tickets(changed)
        return quarantined

    def _hold_retain(self) -> None:
        """Idle committed bytes passed ``retain`` (lock held): have a pass hold it soon,
        off the request path.

        When an event loop runs in this thread, the pass is a callback of that loop's
        own, after the request that returned the blocks; otherwise it goes to the
        maintenance: to the loop that ticks (``call_soon_threadsafe``), or to the
        maintenance thread, woken. The pool's first return also starts the periodic work
        (``_start_periodic``). The loop's pass does the same work without the thread's
        GIL hand-off. Under CPU contention (workers sharing cores), each hand-off held the
        event loop until both threads were scheduled again. In a 3-minute soak, these
        hand-offs left arenapool 4-6% of a core behind the servers beside it. Passes
        come at most every ``WAKE_GAP``, as the thread's do.
        """
        if self._wake_above == -1:  # the pool's first return (see __init__)
            self._wake_above = self.retain
            self._start_periodic()
        due_on = self._retain_due_on
        if due_on is not None and due_on.is_running():
            return  # a pass is due (on a loop that stopped before running it: ask again)
        loop: asyncio.AbstractEventLoop | None = _running_loop()
        if loop is None:
            maintainer = self._maintainer
            if type(maintainer) is LoopTicks:
                if not maintainer.loop.is_running():  # it stopped: a thread from now on
                    self._start_periodic()
                else:  # hand the pass to the loop that ticks
                    loop = maintainer.loop
                    try:
                        loop.call_soon_threadsafe(self._retain_soon, loop)
                    except RuntimeError:  # closed since: a thread from now on
                        self._start_periodic()
                    else:
                        self._retain_due_on = loop
                        return
            maintenance = self._maintenance
            if not maintenance.is_set():
                maintenance.set()
            return
        self._retain_soon(loop)

    def _retain_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule the pass ``_hold_retain`` asked for on ``loop`` (its thread), no sooner
        than ``WAKE_GAP`` after the last."""
        self._retain_due_on = loop
        delay = self._retain_after - loop.time()
        if delay > 0:
            loop.call_later(delay, self._retain_pass, loop)
        else:
            loop.call_soon(self._retain_pass, loop)

    def _retain_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pass :meth:`_hold_retain` scheduled on ``loop``: ``retain`` held again."""
        self._retain_due_on = None
        try:
            _decay.maintain(self, _monotonic(), tick=False)
        finally:
            self._retain_after = loop.time() + _decay.WAKE_GAP

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
            returned = _decay.trim_locked(self, time.monotonic() - older_than, keep_reserve)
            self._returned_bytes += returned
            if returned:
                self._trims += 1
        if returned:
            log.debug("%s: returned %s to the OS", self.name, format_size(returned))
        return returned

    def regions(self) -> dict[str, list[tuple[int, int]]]:
        """Address ranges of this pool's memory, for residency readings (``mincore``).

        ``"mapped"``: ``(address, length)`` of every live slab (huge ones included);
        ``"lent"``: ``(address, length)`` of every block lent or quarantined now. With
        ``backing="bytearray"`` the ranges lie in the C heap. Taken under the lock;
        costs O(slabs + blocks of slabs with a block out).
        """
        with self._lock:
            self._drain_pending()
            slabs = [s for s in self._slabs if s.mapped]
            mapped = [(s.addr, s.size) for s in slabs]
            lent = [
                (s.addr + b.offset, b.size)
                for s in slabs
                if s.idle < s.nblocks
                for b in s.blocks
                if b.state is not IDLE
            ]
        return {"mapped": mapped, "lent": lent}

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
            idle_bytes = self._idle_bytes_locked()
            arenas_open, arenas_total = self._arena_counts()
            return {
                "name": self.name,
                "closed": self._closed,
                "backing": self.backing,
                "budget": self.budget,
                "max_class": self.max_class,
                "mid_classes": self.mid_classes,
                "decay": self.decay,
                "scrub": self.scrub,
                "lent_bytes": self._lent_bytes,
                "lent_blocks": sum(c.lent for c in self._classes) + self._huge_lent,
                "huge_lent_blocks": self._huge_lent,
                "idle_bytes": idle_bytes,
                "idle_committed_bytes": self._idle_committed,
                "retain": self.retain,
                "stretch": self.stretch,
                "populate": self.populate,
                "calibrate": self.calibrate,
                "warm_rate": self.warm_rate,
                "warm_share": self.warm_share,
                # the classes under warm_share of the lends: no calibrated reserve now
                "minor_classes": [c.size for c in self._classes if c.minor],
                "spread": self._spread,
                # the classes that keep nothing warm now (keep_huge_warm, warm_rate)
                "cold_classes": [c.size for c in self._classes if c.cold],
                "idle_blocks": sum(c.idle for c in self._classes),
                "quarantined_bytes": self._quarantined_bytes,
                "quarantined_blocks": sum(c.quarantined for c in self._classes)
                + sum(1 for b in self._huge if b.state is QUARANTINED),
                "mapped_bytes": self._mapped_bytes,
                "available_bytes": max(0, self.budget - self._lent_bytes - self._quarantined_bytes),
                "high_water_lent_bytes": self._high_water,
                "waits": self._queue.waits,
                "waiting": len(self._waiters),
                "wait_timeouts": self._queue.timeouts,
                "shed": self._queue.shed,
                "returned_bytes": self._returned_bytes,
                "trims": self._trims,
                "escapes": self._escapes,
                "arenas_open": arenas_open,
                "arenas_total": arenas_total,
                "classes": classes,
                "admission": self._admission.stats(),
                "budget_auto": None if self.derivation is None else vars(self.derivation),
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
            self._queue.settle(self)  # closed: every waiter fails
            queued = list(self._admission.queue)
            for ticket in queued:  # queued admissions fail too (PoolClosedError)
                ticket.state = TicketState.CANCELLED
            self._admission.queue.clear()
            self._admission.queued = 0
            for slab in list(self._slabs):
                if slab.idle == slab.nblocks:
                    self._unmap_locked(slab)
        self._stop.set()
        self._maintenance.set()  # the maintenance, thread or ticks, sees _stop and ends
        _wake_tickets(queued)

    def __enter__(self) -> SlabPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            self._drain_pending()
        lent_blocks = sum(c.lent for c in self._classes) + self._huge_lent
        idle_blocks = sum(c.idle for c in self._classes)
        idle_bytes = self._idle_bytes_locked()
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
        closed = peek(self._closed_arenas)  # first: opened >= closed then
        opened = peek(self._opened)
        return opened - closed, opened

    # -- internals (the lock is held where a name ends in _locked or says so) -----

    def _admission_need(self, nbytes: int) -> int:
        """What admitting a body of ``nbytes`` asks of the budget: its block, and room
        for its last step while it still holds the one before (a growing block is
        copied, then the old one given back): up to half its size more, or admitted
        bodies all at their last step would wait for each other for ever."""
        size = self._check_request(nbytes)
        return min(self.budget, size + size // 2)

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

    def _fits(self, size: int, ticket: Ticket | None = None) -> bool:
        """Room for ``size`` more bytes: a lend under ``ticket`` may use the room kept
        for it; any other keeps clear of every ticket's room and of the admission
        queue head's need (lock held)."""
        used = self._lent_bytes + self._quarantined_bytes + size
        admission = self._admission
        if admission.unlent or admission.queue:
            if ticket is None:
                used += admission.unlent + admission.head_need()
            else:
                used += admission.unlent - admission.unlent_of(ticket)
        return used <= self.budget

    def _exhausted(
        self,
        nbytes: int,
        size: int,
        *,
        waited: float,
        shed: bool = False,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> BudgetExhausted:
        available = self.available
        why = (
            reason
            if reason is not None
            else f"{len(self._waiters)} requests are already waiting "
            f"(max_waiters={self.max_waiters})"
            if shed
            else f"{format_size(available)} of the {format_size(self.budget)} budget is free"
        )
        retry = self.retry_after if retry_after is None else retry_after
        waited_text = f" after waiting {waited:.3f}s" if waited else ""
        msg = (
            f"memory budget exhausted: requested {format_size(nbytes)} "
            f"(a {format_size(size)} block){waited_text}; {why}. "
            f"Retry after {retry:g}s, or raise budget="
        )
        return BudgetExhausted(
            msg,
            requested=nbytes,
            available=available,
            budget=self.budget,
            waited=waited,
            retry_after=retry,
        )

    def _take(self, nbytes: int, size: int, ticket: Ticket | None = None) -> Block:
        """Lend one block (lock held, budget already checked)."""
        if nbytes <= self.max_class:
            index = _bisect_left(self._sizes, size)
            cls = self._classes[index]
            cls.lends += 1  # the class asked for, even when a lend stretches
            if size >= STRETCH_FROM and self.stretch > 1:
                cls = self._warm_class(index, ticket)
            block = self._take_class(cls)
        else:
            slab = self._new_slab(None, size, 1)
            block = slab.blocks[0]
            slab.idle = 0
            self._huge.add(block)
            self._huge_lent += 1
            block = self._lent(block, size)
        if ticket is not None:
            self._ticket_blocks[block] = ticket
            self._admission.charge(ticket, block.size)
        return block

    def _warm_class(self, index: int, ticket: Ticket | None) -> ClassState:
        """The class a lend of class ``index`` takes its block from (lock held, budget
        checked for that class): its own, unless it has no warm idle block on top and a
        larger class within ``stretch`` has one, the larger block fits the budget (under
        ``ticket``, see :meth:`_fits`) and leaves half of it free: past half the budget a
        lend takes its own class, so a pool near its budget charges what it always did."""
        classes = self._classes
        cls = classes[index]
        free = cls.free
        if free and free[-1].committed:
            return cls
        most = cls.size * self.stretch
        half = self.budget // 2 - self._lent_bytes - self._quarantined_bytes
        for other in classes[index + 1 :]:
            size = other.size
            if size > most or size > half:
                break
            free = other.free
            if free and free[-1].committed:
                return other if self._fits(size, ticket) else cls
        return cls

    def _take_class(self, cls: ClassState) -> Block:
        """Lend one block of class ``cls`` (lock held, budget already checked)."""
        size = cls.size
        if not cls.free:
            slab = self._new_slab(cls, size, blocks_per_slab(size))
            # push in reverse so the lowest offsets come out first
            cls.free.extend(reversed(slab.blocks))
            cls.idle += slab.nblocks
        block = cls.free.pop()
        block.slab.idle -= 1
        cls.idle -= 1
        if block.committed:
            self._idle_committed -= size
        lent = cls.lent = cls.lent + 1
        if lent > cls.window_peak:  # for calibration; high_water >= window_peak
            cls.window_peak = lent
            if lent > cls.high_water:  # noqa: PLR1730 - hot path: max() is a call
                cls.high_water = lent
        return self._lent(block, size)

    def _lent(self, block: Block, size: int) -> Block:
        """IDLE -> LENT for a block taken off a free list (or mapped); arm its root view."""
        block.state = ON_LEND[block.state]
        block.fresh = not block.committed and self.populate  # Arena._adopt populates
        block.committed = True
        block.used = 0
        held = self._lent_bytes = self._lent_bytes + size
        held += self._quarantined_bytes
        if held > self._window_high:  # for calibration; _high_water >= _window_high
            self._window_high = held
            if held > self._high_water:  # noqa: PLR1730 - hot path: max() is a call
                self._high_water = held
        carrier = block.carrier
        if carrier is None:
            carrier = arm(block)
        block.view = memoryview(carrier).cast("B")
        return block

    def _new_slab(self, cls: ClassState | None, block_size: int, nblocks: int) -> Slab:
        slab = Slab(cls, block_size, nblocks, self.backing, self.huge_pages)
        if self.prefault:
            slab.prefault()
        self._slabs.add(slab)
        self._mapped_bytes += slab.size
        if self._wake_above != -1:  # started before: start again if its loop stopped
            self._start_periodic()
        return slab

    def _start_periodic(self) -> None:
        """Start the maintenance and the ``budget="auto"`` readings that are not running
        (lock held): as ticks of the loop running in this thread, or on threads of their
        own (``_ticks``). They start with the first return (``_wake_above`` is -1 until
        then), and again if the loop they ticked on stops."""
        if not serving(self._maintainer) and (self.decay is not None or self.retain is not None):
            self._maintainer = _decay.start_maintenance(
                self, self._stop, self._maintenance, _maintainer_of
            )
        if self._auto_interval > 0 and not serving(self._auto_reader):
            self._auto_reader = every(
                self,
                self._auto_interval,
                _reread_budget,
                stop=self._stop,
                current=_auto_reader_of,
                name=f"arenapool-auto-{self.name}",
                thread=lambda: _start_auto_thread(self, self._stop, self._auto_interval),
            )

    def _prealloc(self, nbytes: int, count: int) -> None:
        size = self.block_size(nbytes)
        if nbytes > self.max_class:
            msg = f"prealloc size {format_size(nbytes)} is above max_class; raise max_class="
            raise InvalidSize(msg, value=nbytes)
        cls = self._classes[_bisect_left(self._sizes, size)]
        cls.reserve = max(cls.reserve, count)
        cls.base_reserve = max(cls.base_reserve, count)
        per_slab = blocks_per_slab(size)
        with self._lock:
            while cls.idle < count:
                slab = self._new_slab(cls, size, per_slab)
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
        block.state = ON_QUARANTINE[block.state]
        size = block.size
        self._lent_bytes -= size
        self._quarantined_bytes += size
        cls = block.slab.cls
        if cls is None:
            self._huge_lent -= 1
        else:
            cls.lent -= 1
            cls.quarantined += 1
        # fires when the last stale view dies, perhaps at once (another thread)
        detach_carrier(block, _on_carrier_death, weakref.ref(self), block)
        self._escapes += 1
        log.debug(
            "%s: a view of a %s block outlived its lend; quarantined until it is gone",
            self.name,
            format_size(size),
        )

    def _make_idle(self, block: Block, now: float) -> None:
        """LENT or QUARANTINED -> IDLE, or unmapped (lock held, counters already moved)."""
        block.state = ON_RECLAIM[block.state]
        slab = block.slab
        cls = slab.cls
        if cls is None:  # a huge block's mapping goes as soon as the block comes back
            self._huge.discard(block)
            self._unmap_locked(slab)
            return
        if self.scrub or block.scrub:
            block.zero_used()
            block.scrub = False
        block.used = 0
        block.idle_since = now
        if cls.cold and block.committed:
            self._cold_idle = True
        cls.free.append(block)
        cls.idle += 1
        slab.idle += 1
        if block.committed:
            self._idle_committed += block.size
        if self._closed and slab.idle == slab.nblocks:
            self._unmap_locked(slab)
        elif self.decay == 0:
            self._returned_bytes += _decay.trim_locked(self, now, keep_reserve=True)

    def _drain_pending(self) -> None:
        """Move blocks whose escaped views died out of quarantine (lock held)."""
        pending = self._pending
        if not pending:
            return
        now = time.monotonic()
        while pending:
            block = pending.popleft()
            if block.state is not QUARANTINED:
                continue
            self._quarantined_bytes -= block.size
            cls = block.slab.cls
            if cls is not None:
                cls.quarantined -= 1
            self._make_idle(block, now)
        self._queue.settle(self)

    def _wake(self) -> None:
        """Scheduled by a carrier finalizer: drain quarantine and serve waiters."""
        with self._lock:
            self._drain_pending()

    def _unmap_locked(self, slab: Slab) -> None:
        if not slab.mapped:
            return
        cls = slab.cls
        if cls is not None:
            self._idle_committed -= sum(
                b.size for b in slab.blocks if b.committed and b.state is IDLE
            )
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


def _on_carrier_death(pool_ref: weakref.ref[SlabPool], block: Block) -> None:
    """The last view of a quarantined block died. Runs anywhere: no locks here."""
    pool = pool_ref()
    if pool is None:
        return
    pool._pending.append(block)
    for loop in pool._queue.loops():
        with contextlib.suppress(RuntimeError):  # that loop is closed
            loop.call_soon_threadsafe(pool._wake)


def _outside(pool_ref: weakref.ref[SlabPool]) -> Callable[[], int]:
    """What admission counts as taken: the pool's lent and quarantined bytes (weakly)."""

    def outside() -> int:
        pool = pool_ref()
        return 0 if pool is None else pool._lent_bytes + pool._quarantined_bytes

    return outside


def _wake_tickets(tickets: Iterable[Ticket]) -> None:
    """Wake the admit() calls of tickets admitted, refused or cancelled (lock not held)."""
    for ticket in tickets:
        waiter = ticket.waiter
        if isinstance(waiter, tuple):
            loop, fut = waiter
            ticket.waiter = None
            loop.call_soon_threadsafe(_resolve, fut)


def _state(ticket: Ticket) -> TicketState:
    return ticket.state


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _maintainer_of(pool: SlabPool) -> object:
    return pool._maintainer


def _auto_reader_of(pool: SlabPool) -> object:
    return pool._auto_reader


def _reread_budget(pool: SlabPool, now: float) -> None:
    """Re-read the container limit (``budget="auto"``), as Go's automemlimit does."""
    try:
        pool.refresh_budget()
    except Exception:  # a reading failed: keep the budget, try again later
        log.exception("budget=auto: re-reading the container limit failed")


def _start_auto_thread(pool: SlabPool, stop: threading.Event, interval: float) -> threading.Thread:
    """Re-read the container limit every ``interval`` seconds on a thread (no event loop
    runs where the pool started it); the thread holds the pool weakly and ends with it."""
    ref = weakref.ref(pool)

    def run() -> None:
        while not stop.wait(interval):
            current = ref()
            if current is None or current.closed:
                return
            _reread_budget(current, time.monotonic())
            del current

    thread = threading.Thread(target=run, name=f"arenapool-auto-{pool.name}", daemon=True)
    thread.start()
    return thread
