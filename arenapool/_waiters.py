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
- *grant*: strictly in order, the head gets a block while the budget fits it. The head
  blocks the ones behind it (no overtaking), so a large request cannot be starved by a
  stream of small ones. Waiters whose future is already done are dropped.

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
    from ._slab import Block

__all__ = ["Lender", "WaitQueue", "Waiter"]


class Lender(Protocol):
    """What the queue needs from its pool (each called with the lock held)."""

    name: str
    max_waiters: int | None

    @property
    def closed(self) -> bool: ...

    def _fits(self, size: int) -> bool: ...

    def _take(self, nbytes: int, size: int) -> Block: ...

    def _exhausted(
        self, nbytes: int, size: int, *, waited: float, shed: bool = False
    ) -> BudgetExhausted: ...

    def give_back(self, blocks: list[Block]) -> int: ...


class Waiter:
    """One queued lend: what it asked for, its loop and future, and its grant."""

    __slots__ = ("block", "fut", "handle", "loop", "nbytes", "size", "started")

    def __init__(self, nbytes: int, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.nbytes = nbytes
        self.size = size
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

    def join(self, lender: Lender, nbytes: int, size: int, timeout: float | None) -> Waiter:
        """Queue a lend that found no room, or raise when it must not wait (lock held)."""
        if timeout is not None and timeout <= 0:
            raise lender._exhausted(nbytes, size, waited=0.0)
        most = lender.max_waiters  # read each time: adapters may set it after construction
        if most is not None and len(self.waiting) >= most:
            self.shed += 1
            raise lender._exhausted(nbytes, size, waited=0.0, shed=True)
        waiter = Waiter(nbytes, size, asyncio.get_running_loop())
        self.waiting.append(waiter)
        self.waits += 1
        return waiter

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
            if not lender._fits(head.size):
                break
            waiting.popleft()
            head.block = lender._take(head.nbytes, head.size)
            head.loop.call_soon_threadsafe(_deliver, head.fut)
        return returned


def _deliver(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
