"""Arena: request-scoped bump allocation over blocks borrowed from a SlabPool.

Theory of operation
-------------------
An arena is OPEN until :meth:`Arena.release`, then RELEASED for good. While OPEN it
holds a list of blocks lent by its pool and a list of every view it handed out.
``alloc`` bumps an offset inside the *current chunk*; when the chunk is full the arena
borrows the next one, doubling the chunk size each time (bumpalo's growth) up to the
pool's largest class. A request at least half the next chunk size gets a block of its
own, so a body read is exactly one block and never wastes a half-used chunk.

``used`` counts the bytes handed out and is what ``limit`` caps; ``reserved`` counts
the block bytes held. Release walks the view list and releases every view (a view
with an export of its own cannot be released: that is an escape), then gives every
block back in one call. The pool decides per block whether a view escaped (see the
theory in ``_slab.py``) and quarantines it; the arena reports escapes with a
:class:`ViewEscapedWarning` naming the arena.

The legal operations per state live in ``_ALLOWED``; everything else raises
:class:`ArenaReleasedError` naming the state.
"""

from __future__ import annotations

import contextvars
import enum
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    ArenaReleasedError,
    InvalidSize,
    NotBytesLike,
)
from ._units import format_size, parse_size

if TYPE_CHECKING:
    from ._pool import ObjectPool
    from ._slab import Block, SlabPool

__all__ = ["Arena", "ArenaState", "ViewEscapedWarning", "current_arena"]

T = TypeVar("T")

#: The smallest chunk an arena borrows for small allocations.
FIRST_CHUNK = 4096
_EMPTY = memoryview(b"")

_current: contextvars.ContextVar[Arena | None] = contextvars.ContextVar(
    "arenapool_current_arena", default=None
)


def current_arena() -> Arena | None:
    """The arena of the innermost ``with``/``async with`` block in this context, or None."""
    return _current.get()


class ArenaState(enum.Enum):
    """Lifecycle of an :class:`Arena`."""

    OPEN = "OPEN"
    RELEASED = "RELEASED"


# Module constants: an enum member lookup (ArenaState.OPEN) costs ~70 ns on the hot path.
_OPEN: Final = ArenaState.OPEN
_RELEASED: Final = ArenaState.RELEASED

_ALLOWED: dict[ArenaState, frozenset[str]] = {
    ArenaState.OPEN: frozenset(
        {"alloc", "alloc_async", "copy", "copy_async", "json", "borrow", "reset", "release"}
    ),
    ArenaState.RELEASED: frozenset({"release"}),
}


class ViewEscapedWarning(RuntimeWarning):
    """A view handed out by an arena was still alive when the arena was released.

    The block under it is quarantined (never lent again while the view lives), so no
    other request can see or change those bytes; but the memory stays in use. Copy
    what you need to keep (``bytes(view)``) instead.
    """


class Arena:
    """Bump-allocates ``memoryview`` slices out of blocks borrowed from a pool.

    Create one with :meth:`SlabPool.arena`. ``limit`` caps the bytes it hands out
    (default: the pool's budget); ``scrub`` zeroes its blocks on release (default: the
    pool's setting); ``name`` (a route, a task) appears in warnings and the repr.
    """

    __slots__ = (
        "__weakref__",
        "_blocks",
        "_cur",
        "_cur_block",
        "_cur_end",
        "_cur_off",
        "_escapes",
        "_high_water",
        "_limit",
        "_next_chunk",
        "_on_release",
        "_pool",
        "_reserved",
        "_scrub",
        "_state",
        "_tokens",
        "_used",
        "_views",
        "name",
    )

    def __init__(
        self,
        pool: SlabPool,
        *,
        limit: int | str | None = None,
        scrub: bool | None = None,
        name: str | None = None,
    ) -> None:
        self._pool = pool
        self._limit = pool.budget if limit is None else parse_size(limit, name="limit")
        self._scrub = pool.scrub if scrub is None else scrub
        self.name = name
        pool._arena_opened()  # may raise PoolClosedError: before _state, so __del__ is quiet
        self._state = _OPEN
        self._blocks: list[Block] = []
        self._views: list[memoryview] = []
        self._cur = _EMPTY
        self._cur_block: Block | None = None
        self._cur_off = 0
        self._cur_end = 0
        self._used = 0
        self._reserved = 0
        self._high_water = 0
        self._escapes = 0
        self._next_chunk = FIRST_CHUNK
        self._on_release: list[Callable[[], object]] = []
        self._tokens: list[contextvars.Token[Arena | None]] = []

    # -- properties ---------------------------------------------------------------

    @property
    def pool(self) -> SlabPool:
        """The pool this arena borrows from."""
        return self._pool

    @property
    def state(self) -> ArenaState:
        """``ArenaState.OPEN`` or ``ArenaState.RELEASED``."""
        return self._state

    @property
    def limit(self) -> int:
        """Most bytes this arena may hand out."""
        return self._limit

    @property
    def used(self) -> int:
        """Bytes handed out so far (since creation or the last :meth:`reset`)."""
        return self._used

    @property
    def reserved(self) -> int:
        """Bytes of blocks this arena holds from the pool."""
        return self._reserved

    @property
    def high_water(self) -> int:
        """The most bytes this arena ever had handed out at once."""
        return max(self._high_water, self._used)

    @property
    def escapes(self) -> int:
        """Blocks quarantined because a view outlived a release or reset."""
        return self._escapes

    # -- allocation -----------------------------------------------------------------

    def alloc(self, nbytes: int) -> memoryview:
        """A writable ``memoryview`` of exactly ``nbytes`` bytes (contents undefined).

        Raises :class:`ArenaLimitExceeded` past ``limit``, :class:`BudgetExhausted`
        when the pool's budget has no room (at once: use :meth:`alloc_async` to wait),
        :class:`InvalidSize` for sizes that are not positive ints.
        """
        if self._state is not _OPEN:
            self._refuse("alloc")
        if type(nbytes) is not int or nbytes <= 0:
            self._bad_size(nbytes)
        used = self._used + nbytes
        if used > self._limit:
            raise self._over_limit(nbytes)
        off = self._cur_off
        end = off + nbytes
        if end <= self._cur_end:
            view = self._cur[off:end]
            self._cur_off = (end + 7) & ~7
            self._used = used
            self._views.append(view)
            return view
        return self._alloc_slow(nbytes)

    async def alloc_async(self, nbytes: int, *, timeout: float | None = None) -> memoryview:
        """Like :meth:`alloc`, but waits (FIFO, up to ``timeout`` s) for budget."""
        if self._state is not _OPEN:
            self._refuse("alloc_async")
        if type(nbytes) is not int or nbytes <= 0:
            self._bad_size(nbytes)
        if self._used + nbytes > self._limit:
            raise self._over_limit(nbytes)
        size, own = self._plan(nbytes)
        if not own and self._cur_off + nbytes <= self._cur_end:
            return self.alloc(nbytes)
        block = await self._pool.lend_async(size, timeout=timeout)
        if self._state is not _OPEN:  # released while we waited
            self._pool.give_back([block])
            self._refuse("alloc_async")
        return self._adopt(block, nbytes, own)

    def copy(self, data: Any) -> memoryview:
        """Copy a bytes-like object into the arena; returns the arena's view of it."""
        if self._state is not _OPEN:
            self._refuse("copy")
        src = _as_bytes_view(data)
        if not src.nbytes:  # memoryview(b"") is read-only: assigning to it would raise
            return memoryview(b"")
        view = self.alloc(src.nbytes)
        view[:] = src
        return view

    async def copy_async(self, data: Any, *, timeout: float | None = None) -> memoryview:
        """Like :meth:`copy`, but waits for budget like :meth:`alloc_async`."""
        if self._state is not _OPEN:
            self._refuse("copy_async")
        src = _as_bytes_view(data)
        if not src.nbytes:
            return memoryview(b"")
        view = await self.alloc_async(src.nbytes, timeout=timeout)
        view[:] = src
        return view

    def json(self, data: Any, *, decoder: str | None = None, type: Any = None) -> Any:
        """Decode JSON from arena memory (or any bytes-like) without copying it first.

        Malformed input raises :class:`InvalidJSON` with the byte position.
        """
        if self._state is not _OPEN:
            self._refuse("json")
        from ._json import decode  # noqa: PLC0415 - keeps JSON backends out of import time

        return decode(data, decoder=decoder, type=type)

    def borrow(self, pool: ObjectPool[T]) -> T:
        """Acquire an object from ``pool``; it goes back when this arena is released."""
        if self._state is not _OPEN:
            self._refuse("borrow")
        obj = pool.acquire()
        self._on_release.append(lambda: pool.release(obj))
        return obj

    # -- lifecycle ------------------------------------------------------------------

    def reset(self) -> None:
        """Release every view and block but stay OPEN (for arenas reused per batch)."""
        if self._state is not _OPEN:
            self._refuse("reset")
        self._high_water = max(self._high_water, self._used)
        self._return_all(stacklevel=3)

    def release(self) -> None:
        """Release every view and give every block back (idempotent).

        Objects borrowed with :meth:`borrow` go back to their pools. A view that
        outlived this call (a slice or an export) is reported with
        :class:`ViewEscapedWarning`, and its block stays quarantined while it lives.
        """
        self._release(stacklevel=4)

    def _release(self, stacklevel: int) -> None:
        if self._state is _RELEASED:
            return
        self._high_water = max(self._high_water, self._used)
        self._state = _RELEASED
        try:
            self._return_all(stacklevel + 1)
        finally:
            callbacks, self._on_release = self._on_release, []
            errors: list[BaseException] = []
            for callback in callbacks:
                try:
                    callback()
                except Exception as exc:  # every callback must run
                    errors.append(exc)
            self._pool._arena_closed()
            if errors:
                msg = f"{len(errors)} object(s) could not be returned to their pools"
                raise ArenaPoolError(msg, errors=errors) from errors[0]

    def __enter__(self) -> Arena:
        if self._state is not _OPEN:
            self._refuse("__enter__")
        self._tokens.append(_current.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            token = self._tokens.pop()
            try:
                _current.reset(token)
            except ValueError:  # exited in another context (a callback); set it back
                _current.set(None)
        self._release(stacklevel=4)

    async def __aenter__(self) -> Arena:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)  # warnings then point into asyncio; acceptable

    def __del__(self) -> None:
        if getattr(self, "_state", ArenaState.RELEASED) is not ArenaState.OPEN:
            return
        text = f"{self!r} was never released; use it as a context manager or call release()"
        try:
            warnings.warn(text, ResourceWarning, stacklevel=1, source=self)
        finally:
            self._release(stacklevel=2)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<Arena{name} {self._state.value} used {format_size(self._used)} of "
            f"{format_size(self._limit)} limit | {len(self._blocks)} blocks / "
            f"{format_size(self._reserved)}>"
        )

    # -- internals ------------------------------------------------------------------

    def _refuse(self, op: str) -> None:
        allowed = ", ".join(sorted(_ALLOWED[self._state]))
        msg = (
            f"cannot {op}() on an arena that is {self._state.value} (allowed: {allowed}); "
            "create a new arena with pool.arena()"
        )
        raise ArenaReleasedError(msg, state=self._state.value, operation=op)

    def _bad_size(self, nbytes: object) -> None:
        kind = "a positive int" if isinstance(nbytes, int) else "an int"
        msg = f"alloc size must be {kind} number of bytes, got {nbytes!r}"
        raise InvalidSize(msg, value=nbytes)

    def _over_limit(self, nbytes: int) -> ArenaLimitExceeded:
        msg = (
            f"arena limit exceeded: requested {format_size(nbytes)} with "
            f"{format_size(self._used)} used of a {format_size(self._limit)} limit; "
            "raise limit= or stream the data"
        )
        return ArenaLimitExceeded(msg, requested=nbytes, used=self._used, limit=self._limit)

    def _plan(self, nbytes: int) -> tuple[int, bool]:
        """(bytes to borrow, whether the block is the allocation's own)."""
        pool = self._pool
        if nbytes * 2 >= self._next_chunk or nbytes > pool.max_class:
            return nbytes, True
        room = max(nbytes, self._limit - self._used)
        return min(self._next_chunk, room), False

    def _alloc_slow(self, nbytes: int) -> memoryview:
        size, own = self._plan(nbytes)
        block = self._pool.lend(size)
        return self._adopt(block, nbytes, own)

    def _adopt(self, block: Block, nbytes: int, own: bool) -> memoryview:
        root = block.view
        assert root is not None
        block.scrub = self._scrub
        self._blocks.append(block)
        self._reserved += block.size
        view = root[:nbytes]
        self._views.append(view)
        self._used += nbytes
        if own:
            block.used = nbytes
        else:
            self._retire_current()
            self._cur_block = block
            self._cur = root
            self._cur_off = (nbytes + 7) & ~7
            self._cur_end = block.size
            self._next_chunk = min(self._next_chunk * 2, self._pool.max_class)
        return view

    def _retire_current(self) -> None:
        block = self._cur_block
        if block is not None:
            block.used = min(self._cur_off, block.size)

    def _return_all(self, stacklevel: int) -> None:
        self._retire_current()
        self._cur = _EMPTY
        self._cur_block = None
        self._cur_off = self._cur_end = 0
        views, self._views = self._views, []
        for view in views:
            try:  # noqa: SIM105 - hot loop; contextlib.suppress costs a frame per view
                view.release()
            except BufferError:  # an export of this view is alive: the pool will see it
                pass
        views.clear()
        del views
        blocks, self._blocks = self._blocks, []
        self._reserved = 0
        self._used = 0
        self._next_chunk = FIRST_CHUNK
        if not blocks:
            return
        escaped = self._pool.give_back(blocks)
        if escaped:
            self._escapes += escaped
            where = f" {self.name!r}" if self.name else ""
            warnings.warn(
                ViewEscapedWarning(
                    f"arena{where}: {escaped} block(s) still had live views after release; "
                    "they are quarantined until those views are gone. Copy data you keep "
                    "past the request with bytes(view)."
                ),
                stacklevel=stacklevel,
            )


def _as_bytes_view(data: Any) -> memoryview:
    try:
        src = memoryview(data)
    except TypeError:
        msg = (
            f"copy() takes a bytes-like object (bytes, bytearray, memoryview), "
            f"got {type(data).__name__}: {data!r:.60}; encode text first"
        )
        raise NotBytesLike(msg, value=data) from None
    if src.format != "B" or src.ndim != 1:
        src = src.cast("B") if src.c_contiguous else memoryview(src.tobytes())
    return src
