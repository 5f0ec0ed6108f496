"""ObjectPool: reusable objects that are costly to build.

Theory of operation
-------------------
Objects are *idle* (in ``_idle``, a LIFO stack) or *out* (keyed by ``id`` in ``_out``).
``maxsize`` bounds idle + out. ``acquire`` pops an idle object or builds one with the
factory while under the bound; past it, the sync ``acquire`` raises
:class:`PoolTimeout` at once and ``acquire_async`` queues FIFO. ``release`` runs the
``reset`` hook (an object whose reset raises is dropped, not returned) and hands the
object to the first waiter or back to the stack. Releasing something that is not out
raises :class:`DoubleRelease`.

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
from typing import Any, Generic, Literal, TypeVar

from ._errors import DoubleRelease, InvalidSize, PoolClosedError, PoolTimeout
from ._registry import register_object_pool

__all__ = ["ObjectLeakWarning", "ObjectPool"]

T = TypeVar("T")
LeakLevel = Literal["off", "sample", "full"]
log = logging.getLogger("arenapool")


class ObjectLeakWarning(RuntimeWarning):
    """An object acquired from an ObjectPool was garbage-collected without release."""


class _Loan:
    __slots__ = ("ref", "stack", "strong")

    def __init__(self, strong: object, ref: weakref.ref[Any] | None, stack: str | None) -> None:
        self.strong = strong
        self.ref = ref
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
        self._out: dict[int, _Loan] = {}
        self._waiters: deque[asyncio.Future[T]] = deque()
        self._closed = False
        self._created = prealloc
        self._acquired = 0
        self._high_water = 0
        self._waits = 0
        self._timeouts = 0
        self._leaks = 0
        self._reset_errors = 0
        self._returning = 0  # released, not yet idle (reset runs outside the lock)
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
        with self._lock:
            if self._closed:
                self._check_open()
            if self._idle and not self._waiters:
                obj = self._idle.pop()
            elif self._count() < self.maxsize and not self._waiters:
                obj = self._build()
            else:
                self._timeouts += 1
                raise self._timeout_error(0.0)
            self._lend(obj)
        return obj

    async def acquire_async(self, *, timeout: float | None = None) -> T:
        """An object, waiting FIFO up to ``timeout`` seconds when ``maxsize`` are out."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            if not self._waiters:
                if self._idle:
                    obj = self._idle.pop()
                    self._lend(obj)
                    return obj
                if self._count() < self.maxsize:
                    obj = self._build()
                    self._lend(obj)
                    return obj
            fut: asyncio.Future[T] = loop.create_future()
            self._waiters.append(fut)
            self._waits += 1
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
        with self._lock:
            loan = self._out.pop(id(obj), None)
            if loan is None or (loan.ref is not None and loan.ref() is not obj):
                if loan is not None:
                    self._out[id(obj)] = loan
                msg = (
                    f"{type(obj).__name__} object {obj!r:.60} is not out of pool {self.name!r} "
                    "(released twice, or never acquired here)"
                )
                raise DoubleRelease(msg, pool=self.name)
            reset = self.reset
            if reset is None:  # nothing to run outside the lock: one round trip
                self._put_back(obj)
                return
            self._returning += 1
        try:
            reset(obj)
        except Exception:
            log.exception("%s: reset hook failed; dropping the object", self.name)
            with self._lock:
                self._returning -= 1
                self._reset_errors += 1
                self._created -= 1
                self._serve_waiter_with_new()
            return
        with self._lock:
            self._returning -= 1
            self._put_back(obj)

    def borrow(self) -> contextlib.AbstractContextManager[T]:
        """``with pool.borrow() as obj:`` acquires now and always gives it back."""
        return _Borrow(self)

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
            return [loan.stack or "(stack not recorded)" for loan in self._out.values()]

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
                "acquired": self._acquired,
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

    def _put_back(self, obj: T) -> None:
        """A returned object goes to the first live waiter, else to the idle stack."""
        if self._closed:
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._lend(obj)
                fut.get_loop().call_soon_threadsafe(_deliver, fut, obj, self)
                return
        self._idle.append(obj)

    def _count(self) -> int:
        """Objects that exist: out, idle, or on their way back through ``reset``."""
        return len(self._out) + len(self._idle) + self._returning

    def _build(self) -> T:
        obj = self.factory()
        self._created += 1
        return obj

    def _lend(self, obj: T) -> None:
        self._acquired += 1
        level = self.leak_detection
        stack = None
        ref: weakref.ref[Any] | None = None
        strong: object = obj
        if level != "off":
            if level == "full" or self._acquired % self.sample_every == 1:
                stack = "".join(traceback.format_stack(limit=12)[:-2])  # drop _lend, acquire
            try:
                ref = weakref.ref(obj, self._make_leak_callback(id(obj)))
                strong = None
            except TypeError:
                ref = None
        self._out[id(obj)] = _Loan(strong, ref, stack)
        self._high_water = max(self._high_water, len(self._out))

    def _make_leak_callback(self, key: int) -> Callable[[weakref.ref[Any]], None]:
        pool_ref = weakref.ref(self)

        def on_collect(ref: weakref.ref[Any]) -> None:
            pool = pool_ref()
            if pool is not None:
                pool._on_leak(key, ref)

        return on_collect

    def _on_leak(self, key: int, ref: weakref.ref[Any]) -> None:
        # may run inside any locked section of any thread (GC): do not take the lock
        loan = self._out.get(key)
        if loan is None or loan.ref is not ref:
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

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool

    def __enter__(self) -> T:
        self._obj = obj = self._pool.acquire()
        return obj

    def __exit__(self, *exc_info: object) -> None:
        self._pool.release(self._obj)


def _deliver(fut: asyncio.Future[T], obj: T, pool: ObjectPool[T]) -> None:
    if fut.done():  # the waiter gave up in between: the object goes back
        pool.release(obj)
    else:
        fut.set_result(obj)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
