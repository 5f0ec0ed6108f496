"""ObjectPool: reusable objects that are costly to build.

Theory of operation
-------------------
Objects are *idle* (in ``_idle``, a LIFO stack) or *out* (keyed by ``id`` in ``_out``),
or in between for a moment while they move. ``_created`` counts the objects that exist
(built, not yet dropped) and is what ``maxsize`` bounds. ``acquire`` pops an idle
object or builds one with the factory while under the bound; past it, the sync
``acquire`` raises :class:`PoolTimeout` at once and ``acquire_async`` queues FIFO.
``release`` runs the ``reset`` hook (an object whose reset raises is dropped, not
returned) and hands the object to the first waiter or back to the stack. Releasing
something that is not out raises :class:`DoubleRelease`.

Concurrency: moving an object between idle and out takes no lock. ``list.pop`` and
``list.append`` on the stack and ``dict.pop`` on ``_out`` are each atomic, so two
threads never get the same idle object and only one of two releases of the same object
finds its loan (the other raises). Building (the bound), waiters, close and the stats
take ``_lock``. A release appends to the stack, *then* looks for waiters (and takes the
lock to hand over if it finds one); a waiter queues under the lock, *then* looks at the
stack again: so an object and a waiter never miss each other. Counters moved on the
lock-free paths are ``_counter`` counters (``next()`` is atomic); the high-water
mark is raised under a lock of its own, which happens at most ``maxsize`` times.

Leak detection follows Netty's ResourceLeakDetector levels:

- ``off``: the pool keeps a strong reference to each object out; a lost object keeps
  its slot until :meth:`ObjectPool.close` reports it.
- ``sample`` (default): objects that support weak references are held weakly, so one
  that is garbage-collected while out is a *leak*: counted, warned about with a
  :class:`ObjectLeakWarning`, and its slot freed. One acquisition in
  ``sample_every`` records where it happened, and that stack goes in the warning.
- ``full``: like ``sample`` but every acquisition records its stack.

Objects that do not support weak references (``dict``, ``list``...) are always held
strongly; wrap them in a small class if you want GC-based leak detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from ._counter import counter, peek
from ._errors import DoubleRelease, InvalidSize, PoolClosedError, PoolTimeout
from ._registry import register_object_pool

__all__ = ["ObjectLeakWarning", "ObjectPool"]

T = TypeVar("T")
LeakLevel = Literal["off", "sample", "full"]
log = logging.getLogger("arenapool")


class ObjectLeakWarning(RuntimeWarning):
    """An object acquired from an ObjectPool was garbage-collected without release."""


class _WeakLoan(weakref.ref):  # type: ignore[type-arg]  # refers to any object
    """An object under leak detection: a weak reference that is its own record, made
    once per object and in ``_out`` while the object is out (``stack``: where).

    Its callback (:func:`_loan_collected`) finds the pool through ``pool``, a weak
    reference, so loans never keep a pool alive.
    """

    __slots__ = ("key", "pool", "stack")
    key: int
    pool: weakref.ref[ObjectPool[Any]]
    stack: str | None


class _Held:
    """An object out under leak detection that takes no weak references: held strongly."""

    __slots__ = ("obj", "stack")

    def __init__(self, obj: object, stack: str | None) -> None:
        self.obj = obj
        self.stack = stack


class ObjectPool(Generic[T]):
    """A bounded pool of reusable objects.

    Args:
        factory: builds a new object (no arguments).
        reset: called with an object when it comes back; if it raises, the object is
            dropped (and a new one built on demand).
        maxsize: most objects idle + out at once.
        prealloc: objects to build up front.
        leak_detection: ``"off"``, ``"sample"`` or ``"full"`` (see the module docs).
        sample_every: with ``"sample"``, record the acquiring stack once per this many
            acquisitions.
        name: shown in stats, metrics and warnings.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        reset: Callable[[T], object] | None = None,
        maxsize: int = 64,
        prealloc: int = 0,
        *,
        leak_detection: LeakLevel = "sample",
        sample_every: int = 128,
        name: str | None = None,
    ) -> None:
        if maxsize < 1:
            msg = f"maxsize must be at least 1, got {maxsize!r}"
            raise InvalidSize(msg, value=maxsize)
        if not 0 <= prealloc <= maxsize:
            msg = f"prealloc must be between 0 and maxsize={maxsize}, got {prealloc!r}"
            raise InvalidSize(msg, value=prealloc)
        if leak_detection not in ("off", "sample", "full"):
            msg = f"leak_detection must be 'off', 'sample' or 'full', got {leak_detection!r}"
            raise InvalidSize(msg, value=leak_detection)
        self.factory = factory
        self.reset = reset
        self.maxsize = maxsize
        self.leak_detection: LeakLevel = leak_detection
        self.sample_every = max(1, sample_every)
        self.name = name or getattr(factory, "__name__", "objects")
        self._lock = threading.Lock()
        self._idle: list[T] = [factory() for _ in range(prealloc)]
        # id -> the object itself (leak detection off), its _WeakLoan, or its _Held
        self._out: dict[int, object] = {}
        # id -> the weak reference kept for each object under leak detection, made on
        # its first lend and reused while the object lives (one lender at a time)
        self._loans: dict[int, _WeakLoan] = {}
        self._ref = weakref.ref(self)
        self._waiters: deque[asyncio.Future[T]] = deque()
        self._closed = False
        self._created = prealloc
        self._acquired = counter(1)  # next() is the number of this acquisition
        self._high_water = 0
        self._high_water_lock = threading.Lock()  # _lend may run under _lock
        self._waits = 0
        self._timeouts = 0
        self._leaks = 0
        self._reset_errors = 0
        self._off = leak_detection == "off"  # objects out are held as themselves
        self._full = leak_detection == "full"
        register_object_pool(self)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def in_use(self) -> int:
        """Objects out right now."""
        return len(self._out)

    @property
    def idle(self) -> int:
        """Objects waiting in the pool."""
        return len(self._idle)

    def acquire(self) -> T:
        """An object now; raises :class:`PoolTimeout` at once if ``maxsize`` are out."""
        if not (self._waiters or self._closed):
            try:
                obj = self._idle.pop()  # atomic: no other thread gets this one
            except IndexError:
                pass
            else:
                if not self._off:
                    self._lend(obj)
                    return obj
                next(self._acquired)  # _lend, inline for the leanest case
                out = self._out
                out[id(obj)] = obj
                if len(out) > self._high_water:
                    self._raise_high_water(len(out))
                return obj
        with self._lock:
            if self._closed:
                self._check_open()
            got = [] if self._waiters else self._take_locked()
            if not got:
                self._timeouts += 1
                raise self._timeout_error(0.0)
        obj = got[0]
        self._lend(obj)
        return obj

    async def acquire_async(self, *, timeout: float | None = None) -> T:
        """An object, waiting FIFO up to ``timeout`` seconds when ``maxsize`` are out."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            got = [] if self._waiters else self._take_locked()
            if not got:
                fut: asyncio.Future[T] = loop.create_future()
                self._waiters.append(fut)
                self._waits += 1
                # a release may have put an object back since we looked (lock-free)
                self._serve_waiters()
        if got:
            obj = got[0]
            self._lend(obj)
            return obj
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except BaseException as exc:
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
                granted = fut.done() and not fut.cancelled() and fut.exception() is None
                if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                    self._timeouts += 1
            if granted:  # handed to us just as we gave up: pass it on
                self.release(fut.result())
            else:
                fut.cancel()
            if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                raise self._timeout_error(timeout or 0.0) from None
            raise

    def release(self, obj: T) -> None:
        """Give an object back; :class:`DoubleRelease` if it is not out."""
        loan = self._out.pop(id(obj), None)  # atomic: one of two releases finds it
        if loan is not obj and not (
            loan() is obj if type(loan) is _WeakLoan else self._is_held(loan, obj)
        ):
            self._not_out(obj, loan)
        reset = self.reset
        if reset is not None:
            try:
                reset(obj)
            except Exception:
                log.exception("%s: reset hook failed; dropping the object", self.name)
                with self._lock:
                    self._reset_errors += 1
                    self._created -= 1
                    self._serve_waiter_with_new()
                return
        self._idle.append(obj)
        if self._waiters or self._closed:  # see the module docs: look after putting back
            with self._lock:
                if self._closed:
                    self._idle.clear()
                else:
                    self._serve_waiters()

    def borrow(self) -> contextlib.AbstractContextManager[T]:
        """``with pool.borrow() as obj:`` acquires now and always gives it back."""
        borrow: _Borrow[T] = _new(_Borrow)  # no __init__ frame: it is a third of the cost
        borrow._pool = self
        return borrow

    @contextlib.asynccontextmanager
    async def borrow_async(self, *, timeout: float | None = None) -> AsyncIterator[T]:
        """``async with pool.borrow_async() as obj:`` waits for an object if need be."""
        obj = await self.acquire_async(timeout=timeout)
        try:
            yield obj
        finally:
            self.release(obj)

    def outstanding(self) -> list[str]:
        """Where each object out was acquired (stacks recorded by leak detection)."""
        with self._lock:
            return [
                (loan.stack if isinstance(loan, _WeakLoan | _Held) else None)
                or "(stack not recorded)"
                for loan in self._out.values()
            ]

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot."""
        with self._lock:
            return {
                "name": self.name,
                "maxsize": self.maxsize,
                "created": self._created,
                "idle": len(self._idle),
                "in_use": len(self._out),
                "high_water": self._high_water,
                "acquired": peek(self._acquired) - 1,
                "waits": self._waits,
                "waiting": len(self._waiters),
                "timeouts": self._timeouts,
                "leaks": self._leaks,
                "reset_errors": self._reset_errors,
                "leak_detection": self.leak_detection,
                "closed": self._closed,
            }

    def close(self) -> None:
        """Drop idle objects, fail waiters, and warn about objects still out."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._idle.clear()
            waiters, self._waiters = self._waiters, deque()
            out = len(self._out)
        for fut in waiters:
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(
                    _fail, fut, PoolClosedError(f"object pool {self.name!r} was closed")
                )
        if out:
            log.warning("%s: closed with %d object(s) still out", self.name, out)

    def __repr__(self) -> str:
        return (
            f"<ObjectPool {self.name!r} [out {len(self._out)} | idle {len(self._idle)} | "
            f"max {self.maxsize}]>"
        )

    # -- internals (lock held) ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = f"object pool {self.name!r} is closed; create a new ObjectPool"
            raise PoolClosedError(msg)

    def _serve_waiters(self) -> None:
        """Hand idle objects to waiters, first come first served (lock held)."""
        waiters = self._waiters
        idle = self._idle
        while waiters and idle:
            fut = waiters.popleft()
            if fut.done():  # gave up; its cleanup runs in its own loop
                continue
            try:
                obj = idle.pop()
            except IndexError:  # a lock-free acquire took it meanwhile
                waiters.appendleft(fut)
                return
            self._lend(obj)
            fut.get_loop().call_soon_threadsafe(_deliver, fut, obj, self)

    def _take_locked(self) -> list[T]:
        """``[obj]``, idle or newly built, or ``[]`` when ``maxsize`` exist (lock held)."""
        try:
            return [self._idle.pop()]  # a lock-free acquire may empty it any time
        except IndexError:
            if self._created < self.maxsize:
                return [self._build()]
            return []

    def _build(self) -> T:
        """A new object, counted against ``maxsize`` (lock held)."""
        obj = self.factory()
        self._created += 1
        return obj

    def _lend(self, obj: T) -> None:
        """Record ``obj`` as out (no lock needed: see the module docs)."""
        out = self._out
        key = id(obj)
        number = next(self._acquired)
        if self._off:
            out[key] = obj
        else:
            stack = None
            if self._full or (number - 1) % self.sample_every == 0:
                stack = "".join(traceback.format_stack(limit=12)[:-2])  # drop _lend, acquire
            loan = self._loans.get(key)
            if loan is None or loan() is not obj:  # first lend (an id may be reused)
                loan = self._new_loan(obj)
            if loan is None:  # no weak references: held strongly, never reported
                out[key] = _Held(obj, stack)
            else:
                loan.stack = stack
                out[key] = loan
        if len(out) > self._high_water:
            self._raise_high_water(len(out))

    def _new_loan(self, obj: T) -> _WeakLoan | None:
        """The object's weak reference for leak detection, or None if it takes none."""
        try:
            loan = _WeakLoan(obj, _loan_collected)
        except TypeError:
            return None
        loan.key = id(obj)
        loan.pool = self._ref
        self._loans[loan.key] = loan
        return loan

    def _raise_high_water(self, seen: int) -> None:
        with self._high_water_lock:
            self._high_water = max(self._high_water, seen)

    @staticmethod
    def _is_held(loan: object, obj: object) -> bool:
        """Whether an entry of ``_out`` is the ``_Held`` record of ``obj``."""
        return type(loan) is _Held and loan.obj is obj

    def _not_out(self, obj: T, loan: object) -> None:
        if loan is not None:  # another object's loan under a reused id: put it back
            self._out.setdefault(id(obj), loan)
        msg = (
            f"{type(obj).__name__} object {obj!r:.60} is not out of pool {self.name!r} "
            "(released twice, or never acquired here)"
        )
        raise DoubleRelease(msg, pool=self.name)

    def _on_leak(self, loan: _WeakLoan) -> None:
        """An object with a loan died: a leak if it was out (runs during its dealloc,
        so no other object has its id yet)."""
        # may run inside any locked section of any thread (GC): do not take the lock
        key = loan.key
        if self._loans.get(key) is loan:
            self._loans.pop(key, None)
        if self._out.get(key) is not loan:
            return
        self._out.pop(key, None)
        self._leaks += 1
        self._created -= 1
        where = f"; acquired at:\n{loan.stack}" if loan.stack else ""
        warnings.warn(
            ObjectLeakWarning(
                f"an object from pool {self.name!r} was garbage-collected without being "
                f"released{where}"
            ),
            stacklevel=2,
        )

    def _serve_waiter_with_new(self) -> None:
        """An object was dropped: build a new one for the first live waiter (lock held)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                obj = self._build()
                self._lend(obj)
                fut.get_loop().call_soon_threadsafe(_deliver, fut, obj, self)
                return

    def _timeout_error(self, timeout: float) -> PoolTimeout:
        waited = f"after {timeout:g}s" if timeout else "at once"
        msg = (
            f"object pool {self.name!r} has all {self.maxsize} objects out; gave up {waited}. "
            "Raise maxsize=, return objects sooner, or use acquire_async(timeout=...)"
        )
        return PoolTimeout(msg, timeout=timeout, maxsize=self.maxsize)


class _Borrow(Generic[T]):
    """What :meth:`ObjectPool.borrow` returns (a class: cheaper than a generator)."""

    __slots__ = ("_obj", "_pool")
    _pool: ObjectPool[T]
    _obj: T

    def __enter__(self) -> T:
        self._obj = obj = self._pool.acquire()
        return obj

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.release(self._obj)


_new = object.__new__


def _deliver(fut: asyncio.Future[T], obj: T, pool: ObjectPool[T]) -> None:
    if fut.done():  # the waiter gave up in between: the object goes back
        pool.release(obj)
    else:
        fut.set_result(obj)


def _loan_collected(loan: _WeakLoan) -> None:
    """An object out under leak detection was garbage-collected."""
    pool = loan.pool()
    if pool is not None:
        pool._on_leak(loan)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
