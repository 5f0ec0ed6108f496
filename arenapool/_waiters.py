"""The budget queue: async lends that wait, FIFO, for the budget to make room.

Theory of operation
-------------------
A :class:`Waiter` is queued when ``lend_async`` finds no room (or others already
waiting). Every decision about queued waiters is made by one function,
:meth:`WaitQueue.settle`, always under the pool's lock (as httpcore makes every pool
decision in ``_assign_requests_to_connections``):

- *closed*: the pool was closed: every waiter fails with :class:`PoolClosedError`.
- *abandon*: the waiting task was cancelled or failed: it leaves the queue, and a block
  granted to it meanwhile is handed back to the caller to return.
- *expire*: a waiter's timeout fired (in its own loop) before a grant: it leaves the
  queue and fails with :class:`BudgetExhausted`.
- *grant*: strictly in order, the head gets a block while the budget fits it. Lends
  under an admission ticket (the next step of a body already admitted) queue ahead of
  lends without one: an admitted read must always be able to finish. The head
  blocks the ones behind it (no overtaking), so a large request cannot be starved by a
  stream of small ones. Waiters whose future is already done are dropped.

Before a lend joins, :meth:`WaitQueue.join` asks the pool's admission predictor
(``arenapool._admission``): a lend is refused at once, not after its timeout, while the
admission queue stands (CoDel) or when the bytes queued ahead of it will not come back
within its timeout at the measured rate.

A grant is decided under the lock in whatever thread returned memory and delivered on
the waiter's own loop with ``call_soon_threadsafe``. ``settle`` is called after every
change that can make room or remove a waiter: a return, a quarantine drained, an
expiry, an abandon, a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ._errors import BudgetExhausted, PoolClosedError

if TYPE_CHECKING:
    from ._admission import Admission, Ticket
    from ._slab import Block

__all__ = ["Lender", "WaitQueue", "Waiter"]


class Lender(Protocol):
    """What the queue needs from its pool (each called with the lock held)."""

    name: str
    max_waiters: int | None

    @property
    def _admission(self) -> Admission | None: ...

    @property
    def closed(self) -> bool: ...

    def _fits(self, size: int, ticket: Ticket | None = None) -> bool: ...

    def _take(self, nbytes: int, size: int, ticket: Ticket | None = None) -> Block: ...

    def _exhausted(
        self,
        nbytes: int,
        size: int,
        *,
        waited: float,
        shed: bool = False,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> BudgetExhausted: ...

    def give_back(self, blocks: list[Block]) -> int: ...


class Waiter:
    """One queued lend: what it asked for, its loop and future, and its grant."""

    __slots__ = ("block", "fut", "handle", "loop", "nbytes", "size", "started", "ticket")

    def __init__(
        self,
        nbytes: int,
        size: int,
        loop: asyncio.AbstractEventLoop,
        ticket: Ticket | None = None,
    ) -> None:
        self.nbytes = nbytes
        self.size = size
        self.ticket = ticket
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.block: Block | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.started = time.monotonic()


class WaitQueue:
    """The FIFO of :class:`Waiter` s of one pool, guarded by that pool's lock."""

    __slots__ = ("_lock", "shed", "timeouts", "waiting", "waits")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.waiting: deque[Waiter] = deque()
        self.waits = 0
        self.timeouts = 0
        self.shed = 0

    def loops(self) -> set[asyncio.AbstractEventLoop]:
        """The loops waiters wait on (safe without the lock: a copy is taken)."""
        return {w.loop for w in list(self.waiting)}

    def join(
        self,
        lender: Lender,
        nbytes: int,
        size: int,
        timeout: float | None,
        ticket: Ticket | None = None,
    ) -> Waiter:
        """Queue a lend that found no room, or raise when it must not wait (lock held).

        A lend under an admission ``ticket`` (the next step of a body already admitted)
        is never shed and goes ahead of every lend without one, behind earlier ticket
        lends: an admitted read must be able to finish, or the lends behind it, whose
        room it is holding, wait for ever.
        """
        if ticket is not None:
            waiter = Waiter(nbytes, size, asyncio.get_running_loop(), ticket)
            at = 0
            while at < len(self.waiting) and self.waiting[at].ticket is not None:
                at += 1
            self.waiting.insert(at, waiter)
            self.waits += 1
            return waiter
        if timeout is not None and timeout <= 0:
            raise lender._exhausted(nbytes, size, waited=0.0)
        most = lender.max_waiters  # read each time: adapters may set it after construction
        if most is not None and len(self.waiting) >= most:
            self.shed += 1
            raise lender._exhausted(nbytes, size, waited=0.0, shed=True)
        admission = lender._admission
        if admission is not None:  # the admission predictor judges block waits too
            self._judge(lender, admission, nbytes, size, timeout)
        waiter = Waiter(nbytes, size, asyncio.get_running_loop())
        self.waiting.append(waiter)
        self.waits += 1
        return waiter

    def _judge(
        self,
        lender: Lender,
        admission: Admission,
        nbytes: int,
        size: int,
        timeout: float | None,
    ) -> None:
        """Refuse at once a wait the admission predictor says is hopeless: its queue is
        standing (CoDel), or the bytes queued ahead plus this block will not come back
        within ``timeout`` at the measured rate (``arenapool._admission``)."""
        if not admission.accepting():
            self.shed += 1
            why = "requests have queued for memory longer than the target for a while"
            raise lender._exhausted(nbytes, size, waited=0.0, reason=why)
        if timeout is None or admission.trusted_rate() is None:
            return
        # lends without a ticket also keep clear of the admission queue's head
        ahead = sum(w.size for w in self.waiting) + admission.head_need()
        wait = admission.predict(ahead + size)
        if wait is not None and wait > timeout:
            self.shed += 1
            why = f"at the rate memory comes back it would take {wait:.1f}s, over {timeout:g}s"
            raise lender._exhausted(
                nbytes, size, waited=0.0, reason=why, retry_after=min(60.0, wait)
            )

    async def wait(self, lender: Lender, waiter: Waiter, timeout: float | None) -> Block:
        """Wait for ``waiter``'s grant (in its loop); its block, or the error."""
        if timeout is not None:
            waiter.handle = waiter.loop.call_later(timeout, self._expire, lender, waiter)
        try:
            await waiter.fut
        except BaseException:
            with self._lock:
                block = self.settle(lender, abandoned=waiter)
            if block is not None:
                lender.give_back([block])
            raise
        finally:
            if waiter.handle is not None:
                waiter.handle.cancel()
        block, waiter.block = waiter.block, None
        if block is None:  # pragma: no cover - defensive; a result always carries a block
            raise lender._exhausted(
                waiter.nbytes, waiter.size, waited=time.monotonic() - waiter.started
            )
        return block

    def _expire(self, lender: Lender, waiter: Waiter) -> None:
        with self._lock:
            self.settle(lender, expired=waiter)

    def settle(
        self,
        lender: Lender,
        *,
        expired: Waiter | None = None,
        abandoned: Waiter | None = None,
    ) -> Block | None:
        """Make every decision about queued waiters (lock held; see the module docs).

        ``expired`` is a waiter whose timeout fired (this runs in its loop then);
        ``abandoned`` one whose task gave up. Returns a block granted to the abandoned
        waiter, which the caller gives back once the lock is released.
        """
        waiting = self.waiting
        if lender.closed:
            for waiter in waiting:
                exc = PoolClosedError(f"{lender.name} was closed while waiting")
                waiter.loop.call_soon_threadsafe(_fail, waiter.fut, exc)
            waiting.clear()
            return None
        returned = None
        if abandoned is not None:
            returned, abandoned.block = abandoned.block, None
            with contextlib.suppress(ValueError):
                waiting.remove(abandoned)
        if expired is not None and expired.block is None and not expired.fut.done():
            with contextlib.suppress(ValueError):
                waiting.remove(expired)
            self.timeouts += 1
            waited = time.monotonic() - expired.started
            expired.fut.set_exception(
                lender._exhausted(expired.nbytes, expired.size, waited=waited)
            )
        while waiting:
            head = waiting[0]
            if head.fut.done():  # expired or cancelled, cleanup pending in its loop
                waiting.popleft()
                continue
            if not lender._fits(head.size, head.ticket):
                break
            waiting.popleft()
            head.block = lender._take(head.nbytes, head.size, head.ticket)
            head.loop.call_soon_threadsafe(_deliver, head.fut)
        return returned


def _deliver(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
