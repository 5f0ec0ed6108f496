"""Arena: request-scoped bump allocation over blocks borrowed from a SlabPool.

Theory of operation
-------------------
An arena is OPEN until :meth:`Arena.release`, then RELEASED for good. While OPEN it
holds a list of blocks lent by its pool and a list of every view it handed out.
``alloc`` bumps an offset inside the *current chunk* (8-byte aligned). When the chunk
is full the arena borrows a new one of the *next chunk size*, or of the allocation's
size if that is larger, never reaching past what ``limit`` still allows. The next
chunk size starts at ``FIRST_CHUNK`` and becomes twice each block borrowed for an
allocation below ``LARGE`` (bumpalo's doubling), capped at the pool's largest class.
Two kinds of allocation get a block of their own (of their size class) and leave the
current chunk current: a *large* one (at least ``LARGE`` bytes, or above the pool's
largest class), and one whose new chunk would have less room left than the current
chunk still has. So a body read of declared size is one block (a chunk sized to it
when it comes first, whose tail then serves small allocations); 64 allocations of
4 KiB share 7 chunks instead of borrowing 64 blocks; and the waste is bounded: a
retired chunk's unused tail is smaller than the allocation that retired it, and a
chunk is at most twice the largest block borrowed before it, or the allocation that
needed it.

``used`` counts the bytes handed out and is what ``limit`` caps; ``reserved`` counts
the block bytes held. The fast path of ``alloc`` checks one bound: ``_cur_end`` is the
chunk's end, lowered to where the limit would be reached (``cur_off + limit - used``,
recomputed whenever ``used`` changes outside the fast path). Alignment only makes the
offset run ahead of ``used``, so passing that check implies the limit holds; a near
miss falls to the slow path, which checks exactly. A released arena has
``_cur_end == 0``, so the fast path also stands for the state check: every call that
misses it goes through :meth:`Arena._check` like every other method.

Release walks the view list and releases every view (a view with an export of its own
cannot be released: that is an escape), then gives every block back in one call. The
pool decides per block whether a view escaped (see the theory in ``_slab.py``) and
quarantines it; the arena reports escapes with a :class:`ViewEscapedWarning` naming the
arena.

The legal operations per state live in one table, ``_ALLOWED``, and every method
consults it through :meth:`Arena._check` (the arena keeps its state's row in
``_allowed``, so the check is one set lookup); anything else raises
:class:`ArenaReleasedError` naming the state. The only change of state,
OPEN -> RELEASED, goes through :meth:`Arena._enter`. ``release`` is allowed in both
states: on a released arena it does nothing.
"""

from __future__ import annotations

import contextvars
import enum
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

from ._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    ArenaReleasedError,
    BudgetExhausted,
    InvalidSize,
    NotBytesLike,
)
from ._slab import POPULATE_MIN
from ._units import format_size, parse_size

if TYPE_CHECKING:
    from ._objectpool import ObjectPool
    from ._slab import Block
    from ._slabpool import SlabPool

__all__ = ["Arena", "ArenaState", "ViewEscapedWarning", "current_arena"]

T = TypeVar("T")

#: The smallest chunk an arena borrows for small allocations.
FIRST_CHUNK = 4096
#: Allocations of at least this many bytes always get a block of their own.
LARGE = 64 * 1024
_EMPTY = memoryview(b"")
# deque(maxlen=0).extend runs an iterator to its end in C, keeping nothing (and with
# maxlen=0 it touches no deque state, so sharing one is safe across threads)
_sink: deque[object] = deque(maxlen=0)
_consume: Callable[[Iterable[object]], None] = _sink.extend
_release_view = memoryview.release

# Holds an Arena, or a zero-argument callable that makes one on first use: adapters set
# a provider per request so a request that never touches its arena never builds one.
_current: contextvars.ContextVar[Arena | Callable[[], Arena] | None] = contextvars.ContextVar(
    "arenapool_current_arena", default=None
)


def current_arena() -> Arena | None:
    """The arena of the innermost ``with``/``async with`` block in this context, or None.

    Inside a request served by an adapter (the aiohttp middleware), this is the
    request's arena; it is created on this first use.
    """
    value = _current.get()
    if value is None or type(value) is Arena:
        return value
    return value()  # type: ignore[operator]


class ArenaState(enum.Enum):
    """Lifecycle of an :class:`Arena`."""

    OPEN = "OPEN"
    RELEASED = "RELEASED"

    # Members are singletons compared by identity: hash them by identity too, in C
    # (Enum's own __hash__ is a Python call, and the state table is keyed by state).
    __hash__ = object.__hash__


# Module constants: an enum member lookup (ArenaState.OPEN) costs ~70 ns on the hot path.
_OPEN: Final = ArenaState.OPEN
_RELEASED: Final = ArenaState.RELEASED

#: The state table: what each state allows (``__enter__`` too: entering a released
#: arena is refused like any other use).
_ALLOWED: Final[dict[ArenaState, frozenset[str]]] = {
    ArenaState.OPEN: frozenset(
        {
            "__enter__",
            "alloc",
            "alloc_async",
            "borrow",
            "copy",
            "copy_async",
            "free",
            "json",
            "realloc",
            "realloc_async",
            "release",
            "reset",
        }
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
        "_allowed",
        "_blocks",
        "_cur",
        "_cur_block",
        "_cur_end",
        "_cur_off",
        "_escapes",
        "_high_water",
        "_last_own",
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
        if limit is None:
            limit = pool.budget
        elif type(limit) is not int or limit <= 0:  # an int is the adapters' case: as is
            limit = parse_size(limit, name="limit")
        self._limit = limit
        self._scrub = pool.scrub if scrub is None else scrub
        self.name = name
        pool._arena_opened()  # may raise PoolClosedError: before _state, so __del__ is quiet
        self._enter(_OPEN)
        self._blocks: list[Block] = []
        self._views: list[memoryview] = []
        self._cur = _EMPTY
        self._cur_block: Block | None = None
        self._cur_off = self._cur_end = self._used = self._reserved = 0
        self._high_water = self._escapes = 0
        self._last_own: tuple[Block, memoryview] | None = None  # see realloc()
        self._next_chunk = FIRST_CHUNK
        self._on_release: list[Callable[[], object]] | None = None
        self._tokens: list[contextvars.Token[Arena | Callable[[], Arena] | None]] = []

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
        off = self._cur_off
        # one bound covers room, limit and state (see the module docs)
        if type(nbytes) is int and off < (end := off + nbytes) <= self._cur_end:
            view = self._cur[off:end]
            self._cur_off = (end + 7) & -8
            self._used += nbytes
            self._views.append(view)
            return view
        return self._alloc_slow(nbytes)

    async def alloc_async(self, nbytes: int, *, timeout: float | None = None) -> memoryview:
        """Like :meth:`alloc`, but waits (FIFO, up to ``timeout`` s) for budget."""
        self._check_alloc("alloc_async", nbytes)
        room = self._room()
        if nbytes <= room:
            return self._bump(nbytes)
        size = self._chunk_size(nbytes, room)
        pool = self._pool
        if size != nbytes and pool.block_size(size) > pool.available >= pool.block_size(nbytes):
            size = nbytes  # a smaller block now beats waiting for a whole chunk
        block = await pool.lend_async(size, timeout=timeout)
        try:
            self._check("alloc_async")  # released while we waited?
        except ArenaReleasedError:
            pool.give_back([block])
            raise
        if self._used + nbytes > self._limit:  # another task used this arena meanwhile
            pool.give_back([block])
            raise self._over_limit(nbytes)
        return self._adopt(block, nbytes, nbytes >= LARGE or block.size - nbytes < self._room())

    def realloc(self, view: memoryview, nbytes: int) -> memoryview:
        """Resize the arena's most recent allocation ``view`` to ``nbytes`` bytes.

        Returns a view whose first ``min(len(view), nbytes)`` bytes are ``view``'s;
        ``view`` itself is released (do not use it again). It grows in place when its
        block has room and shrinks in place always; otherwise the bytes move to a new
        allocation and, when ``view`` had a block of its own, that block goes back to
        the pool at once. So a buffer that grows as data arrives holds at most its
        current size, plus the new one while the bytes move. ``limit`` applies to
        the new size (the old one is not counted twice). Raises like :meth:`alloc`,
        and :class:`ArenaPoolError` when ``view`` is not the most recent allocation.
        """
        block, start = self._last_alloc("realloc", view, nbytes)
        if start + nbytes <= block.size:
            return self._resize_in_place(block, start, view, nbytes)
        old = view.nbytes
        own = self._alone_in(block, start, old)
        self._used -= old  # the limit counts the new size, not both
        try:
            new = self.alloc(nbytes)
        finally:
            self._used += old
        return self._moved(block, start, view, new, own)

    def free(self, view: memoryview) -> bool:
        """Give the arena's most recent allocation ``view`` back before the arena ends.

        ``view`` is released at once (using it again raises ``ValueError``) and ``used``
        drops by its size. When it had a block of its own, that block goes back to the
        pool now, for another request to take; when it was the current chunk's last
        allocation, its room comes back to the arena. So a large buffer that is done
        with stops holding memory while the rest of the task runs. Returns ``True``
        when freed, ``False`` when something still holds it: a buffer export of
        ``view`` (a decoder's zero-copy value such as msgspec's ``Raw``, a
        ``pickle.PickleBuffer``) keeps it the arena's until :meth:`release`, which
        reports the escape; a live slice of a block of its own gets the block
        quarantined at once, with a :class:`ViewEscapedWarning`, as a release would.
        Raises :class:`ArenaPoolError` when ``view`` is not the most recent allocation.
        """
        # realloc's checks (state, most recent allocation); a new size of 1 byte leaves
        # its size and limit checks nothing to refuse
        block, start = self._last_alloc("free", view, 1)
        nbytes = view.nbytes
        own = self._last_own is not None and self._last_own[1] is view
        try:
            view.release()
        except BufferError:  # an export of it is alive: release() will report it
            return False
        del self._views[-1]
        self._high_water = max(self._high_water, self._used)
        self._used -= nbytes
        freed = True
        if own:
            self._last_own = None
            self._forget(block)
            escaped = self._pool.give_back([block])
            if escaped:  # a slice of it lives: the pool quarantines the block
                freed = False
                self._escapes += escaped
                self._warn_escaped(escaped, "free()", 3)
        else:
            self._cur_off = start  # the current chunk's last bump: its room comes back
        self._limit_changed()
        return freed

    def _alone_in(self, block: Block, start: int, nbytes: int) -> bool:
        """Whether the allocation of ``nbytes`` at ``start`` is all ``block`` holds (its
        own block, or a chunk it is alone in): the block goes back once the bytes move."""
        return block is not self._cur_block or (start == 0 and self._cur_off == (nbytes + 7) & -8)

    async def realloc_async(
        self, view: memoryview, nbytes: int, *, timeout: float | None = None
    ) -> memoryview:
        """Like :meth:`realloc`, but waits (FIFO, up to ``timeout`` s) for budget."""
        block, start = self._last_alloc("realloc_async", view, nbytes)
        if start + nbytes <= block.size:
            return self._resize_in_place(block, start, view, nbytes)
        old = view.nbytes
        own = self._alone_in(block, start, old)
        self._used -= old  # the limit counts the new size, not both
        try:
            new = await self.alloc_async(nbytes, timeout=timeout)
        finally:
            self._used += old
        return self._moved(block, start, view, new, own)

    def copy(self, data: Any) -> memoryview:
        """Copy a bytes-like object into the arena; returns the arena's view of it."""
        self._check("copy")
        src = _as_bytes_view(data)
        if not src.nbytes:  # memoryview(b"") is read-only: assigning to it would raise
            return memoryview(b"")
        view = self.alloc(src.nbytes)
        view[:] = src
        return view

    async def copy_async(self, data: Any, *, timeout: float | None = None) -> memoryview:
        """Like :meth:`copy`, but waits for budget like :meth:`alloc_async`."""
        self._check("copy_async")
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
        self._check("json")
        from ._json import decode  # noqa: PLC0415 - keeps JSON backends out of import time

        return decode(data, decoder=decoder, type=type)

    def borrow(self, pool: ObjectPool[T]) -> T:
        """Acquire an object from ``pool``; it goes back when this arena is released."""
        self._check("borrow")
        obj = pool.acquire()
        if self._on_release is None:
            self._on_release = []
        self._on_release.append(lambda: pool.release(obj))
        return obj

    # -- lifecycle ------------------------------------------------------------------

    def reset(self) -> None:
        """Release every view and block but stay OPEN (for arenas reused per batch)."""
        self._check("reset")
        self._return_all(stacklevel=3)

    def release(self) -> None:
        """Release every view and give every block back (idempotent).

        Objects borrowed with :meth:`borrow` go back to their pools. A view that
        outlived this call (a slice or an export) is reported with
        :class:`ViewEscapedWarning`, and its block stays quarantined while it lives.
        """
        self._release(stacklevel=4)

    def _release(self, stacklevel: int) -> None:
        if self._state is _RELEASED:  # allowed, and nothing to do
            return
        self._enter(_RELEASED)
        try:
            self._return_all(stacklevel + 1)
        finally:
            callbacks = self._on_release
            if callbacks is None:
                self._pool._arena_closed()
            else:
                self._on_release = None
                self._run_callbacks(callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[], object]]) -> None:
        """Run every on-release callback, close the arena, then report failures."""
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
        self._check("__enter__")
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
        if getattr(self, "_state", None) is not _OPEN:  # runs for every arena: keep it cheap
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

    def _enter(self, state: ArenaState) -> None:
        """The one place the state changes; ``_allowed`` follows it."""
        self._state = state
        self._allowed = _ALLOWED[state]

    def _check(self, op: str) -> None:
        """Raise :class:`ArenaReleasedError` unless the state table allows ``op``."""
        if op not in self._allowed:
            self._refuse(op)

    def _refuse(self, op: str) -> NoReturn:
        allowed = ", ".join(sorted(self._allowed))
        msg = (
            f"cannot {op}() on an arena that is {self._state.value} (allowed: {allowed}); "
            "create a new arena with pool.arena()"
        )
        raise ArenaReleasedError(msg, state=self._state.value, operation=op)

    def _bad_size(self, nbytes: object) -> NoReturn:
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

    def _check_alloc(self, op: str, nbytes: object) -> None:
        self._check(op)
        if type(nbytes) is not int or nbytes <= 0:
            self._bad_size(nbytes)
        if self._used + nbytes > self._limit:
            raise self._over_limit(nbytes)

    def _room(self) -> int:
        """Bytes left in the current chunk (the limit aside)."""
        block = self._cur_block
        return 0 if block is None else block.size - self._cur_off

    def _bump(self, nbytes: int) -> memoryview:
        """Hand out ``nbytes`` from the current chunk (room and limit already checked)."""
        block = self._cur_block
        assert block is not None
        off = self._cur_off
        view = self._cur[off : off + nbytes]
        self._cur_off = off = (off + nbytes + 7) & -8
        used = self._used = self._used + nbytes
        self._cur_end = min(block.size, off + self._limit - used)
        self._views.append(view)
        return view

    def _chunk_size(self, nbytes: int, room: int) -> int:
        """What to borrow for an allocation the current chunk (``room`` bytes left)
        cannot hold: ``nbytes`` for a block of its own, or more for a new chunk."""
        pool = self._pool
        if nbytes >= LARGE or nbytes > pool.max_class:
            return nbytes
        size = max(self._next_chunk, nbytes)
        left = self._limit - self._used
        if size > left:  # never reserve past the limit
            size = max(nbytes, left)
        if size - nbytes < room:  # the current chunk has more room left: keep it
            return nbytes
        return size

    def _alloc_slow(self, nbytes: int) -> memoryview:
        if "alloc" not in self._allowed or type(nbytes) is not int or nbytes <= 0:
            self._check_alloc("alloc", nbytes)  # raises the right error
        if self._used + nbytes > self._limit:
            raise self._over_limit(nbytes)
        room = self._room()
        if nbytes <= room:  # the fast path's bound was tight (alignment near the limit)
            return self._bump(nbytes)
        size = self._chunk_size(nbytes, room)
        pool = self._pool
        try:
            block = pool.lend(size)
        except BudgetExhausted:
            if size == nbytes or pool.block_size(nbytes) == pool.block_size(size):
                raise
            block = pool.lend(nbytes)  # a smaller block may still fit the budget
        return self._adopt(block, nbytes, nbytes >= LARGE or block.size - nbytes < room)

    def _adopt(self, block: Block, nbytes: int, own: bool) -> memoryview:
        """Take a lent block whose first ``nbytes`` are this allocation. ``own``: the
        block is the allocation's alone; otherwise it becomes the current chunk."""
        root = block.view
        assert root is not None
        block.scrub = self._scrub
        self._blocks.append(block)  # the arena's now: its release gives it back
        if nbytes >= POPULATE_MIN and block.fresh:  # its pages were given back
            block.populate(nbytes)  # one call, not a fault per page as it is filled
        size = block.size
        self._reserved += size
        view = root[:nbytes]
        self._views.append(view)
        used = self._used = self._used + nbytes
        if nbytes < LARGE and size * 2 > self._next_chunk:  # chunks grow past this one
            cap = self._pool.max_class
            self._next_chunk = size * 2 if size * 2 < cap else cap
        if own:
            block.used = nbytes
            self._last_own = (block, view)  # what realloc() may resize in place
            cur = self._cur_block
            if cur is None:
                return view
            off = self._cur_off
            size = cur.size
        else:
            cur = self._cur_block
            if cur is not None:  # retire it: its used bytes are what a scrub zeroes
                cur.used = self._cur_off
            self._cur_block = block
            self._cur = root
            off = self._cur_off = (nbytes + 7) & -8
        end = off + self._limit - used
        self._cur_end = end if end < size else size
        return view

    def _last_alloc(self, op: str, view: memoryview, nbytes: int) -> tuple[Block, int]:
        """(block, offset) of ``view``, which must be the most recent allocation."""
        self._check(op)
        if type(nbytes) is not int or nbytes <= 0:
            self._bad_size(nbytes)
        views = self._views
        if not views or views[-1] is not view:
            msg = f"{op}() takes only the arena's most recent allocation (a view it returned)"
            raise ArenaPoolError(msg)
        if self._used - view.nbytes + nbytes > self._limit:
            raise self._over_limit(nbytes - view.nbytes)
        own = self._last_own
        if own is not None and own[1] is view:  # a block of its own, from offset 0
            return own[0], 0
        block = self._cur_block  # else it was the last bump of the current chunk
        assert block is not None
        return block, self._cur_off - ((view.nbytes + 7) & -8)

    def _resize_in_place(
        self, block: Block, start: int, view: memoryview, nbytes: int
    ) -> memoryview:
        root = block.view
        assert root is not None
        new = root[start : start + nbytes]
        old = view.nbytes
        self._swap_last(view, new)
        used = self._used = self._used - old + nbytes
        if block is self._cur_block:
            self._cur_off = off = (start + nbytes + 7) & -8
            end = off + self._limit - used
            self._cur_end = end if end < block.size else block.size
        else:
            block.used = nbytes
            self._last_own = (block, new)
            self._limit_changed()
        return new

    def _moved(
        self, block: Block, start: int, view: memoryview, new: memoryview, own: bool
    ) -> memoryview:
        """``new`` was allocated for ``view``'s bytes: move them, then free ``view``."""
        old = view.nbytes
        new[:old] = view  # callers grow; a move never shrinks
        self._used -= old
        views = self._views
        for i in range(len(views) - 1, -1, -1):  # identity, not ==: views compare bytes
            if views[i] is view:
                del views[i]
                break
        try:
            view.release()
        except BufferError:  # an export of it is alive: release() will report it
            views.append(view)
            own = False  # its block must stay with the arena until then
        if own:
            self._forget(block)
            if block is self._cur_block:  # the current chunk goes: the next one is new
                block.used = self._cur_off  # what a scrub zeroes
                self._cur_block = None
                self._cur = _EMPTY
                self._cur_off = self._cur_end = 0
            elif self._last_own is not None and self._last_own[0] is block:
                self._last_own = None
            self._pool.give_back([block])
        elif block is self._cur_block and self._cur_off == start + ((old + 7) & -8):
            self._cur_off = start  # it was the chunk's last bump: its room comes back
        self._limit_changed()
        return new

    def _forget(self, block: Block) -> None:
        """Take ``block`` off the arena's list (it is about to go back to the pool)."""
        blocks = self._blocks
        for i in range(len(blocks) - 1, -1, -1):  # identity: the latest is likeliest
            if blocks[i] is block:
                del blocks[i]
                break
        self._reserved -= block.size

    def _swap_last(self, view: memoryview, new: memoryview) -> None:
        views = self._views
        try:
            view.release()
        except BufferError:  # keep it listed: release() reports the escape
            views.append(new)
            return
        views[-1] = new

    def _limit_changed(self) -> None:
        """``used`` changed outside the fast path: lower the chunk's bound to match."""
        block = self._cur_block
        if block is not None:
            end = self._cur_off + self._limit - self._used
            self._cur_end = end if end < block.size else block.size

    def _return_all(self, stacklevel: int) -> None:
        self._high_water = max(self._high_water, self._used)
        self._last_own = None
        cur = self._cur_block
        if cur is not None:
            cur.used = self._cur_off  # what a scrub zeroes
            self._cur = _EMPTY
            self._cur_block = None
        self._cur_off = self._cur_end = self._used = 0
        self._next_chunk = FIRST_CHUNK
        views = self._views
        if views:
            self._views = []
            it = iter(views)
            while True:
                try:
                    _consume(map(_release_view, it))
                    break
                except BufferError:  # an export of that view is alive: the pool sees it
                    continue
            del views, it
        blocks = self._blocks
        if not blocks:
            return
        self._blocks = []
        self._reserved = 0
        escaped = self._pool.give_back(blocks)
        if escaped:
            self._escapes += escaped
            self._warn_escaped(escaped, "release", stacklevel + 1)

    def _warn_escaped(self, escaped: int, after: str, stacklevel: int) -> None:
        where = f" {self.name!r}" if self.name else ""
        warnings.warn(
            ViewEscapedWarning(
                f"arena{where}: {escaped} block(s) still had live views after {after}; "
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
