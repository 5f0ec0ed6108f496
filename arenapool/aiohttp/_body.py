"""Reading request bodies into the request's arena, and decoding JSON from them.

Theory of operation
-------------------
A declared ``Content-Length`` above the room left in the arena is refused (413) before a
byte is read. A declared body up to :data:`EAGER_RESERVE` is reserved in one allocation
and filled in place; larger declared bodies and chunked ones go into a block that grows
as bytes arrive (by :data:`GROWTH` for declared bodies, doubling for chunked ones; the
old block goes back to the pool at once), so a slow sender never holds budget for bytes
it has not sent. Every wait for budget is FIFO, bounded by ``queue_timeout`` and given
up when the client leaves; every read is bounded by ``body_timeout`` (408).

:func:`read_json` decodes small declared bodies from the ``bytes`` aiohttp already holds
(up to ``inline_max``) and everything else from the arena.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from .._arena import Arena
from .._errors import (
    ArenaPoolError,
    BodyTimeout,
    BodyTooLarge,
    BudgetExhausted,
    IncompleteBody,
    UnsupportedMediaType,
)
from .._json import decode
from .._slab import Block
from .._units import format_size
from ._request import RequestState, require_state

#: the first block a chunked body is read into
CHUNKED_FIRST = 64 * 1024
#: declared bodies up to this size are reserved in one allocation; larger ones are
#: reserved as they arrive (256 KiB, then 1 MiB, then the whole declared size), so a
#: slow sender cannot hold budget for bytes it has not sent (cf. fasthttp PR #2408)
EAGER_RESERVE = 256 * 1024
#: growth factor of the incremental reservation
GROWTH = 4
#: how often a budget wait checks whether its client is still there (seconds)
DISCONNECT_POLL = 0.05

_JSON_TYPES = ("application/json",)


async def read_body(request: web.Request) -> memoryview:
    """Read the request body into the request's arena; returns a view of it.

    One allocation when ``Content-Length`` is declared; a doubling block for chunked
    bodies. Raises :class:`BodyTooLarge` (413) past the limit,
    :class:`BudgetExhausted` (503) when budget does not free up within
    ``queue_timeout``, :class:`IncompleteBody` (400) if the body ends early. The view
    dies when the request ends: copy what you keep (``bytes(view)``).
    Calling it again returns the same view.
    """
    state = require_state(request)
    if state.body is not None:
        return state.body
    if state.inline is not None:  # read_json decoded it where aiohttp had it: copy it in
        state.body = state.arena.copy(state.inline)
        return state.body
    arena = state.arena
    room = arena.limit - arena.used
    declared = request.content_length
    if not request.body_exists or declared == 0:
        state.body = memoryview(b"")
        return state.body
    if declared is not None and declared > room:
        raise too_large(declared, arena, declared=True)
    async with _body_errors(request, state.config.body_timeout, declared):
        if declared is not None and declared <= EAGER_RESERVE:
            body = await _wait_for_budget(request, state, arena.alloc_async, declared)
            await _fill(request, body, declared)
        else:
            body = await _read_growing(request, state, room, declared)
    state.body = body
    state.counters.bytes_read += body.nbytes
    return body


async def read_json(request: web.Request, *, decoder: str | None = None, type: Any = None) -> Any:
    """Read the body and decode JSON from it, without a copy.

    ``decoder`` overrides the app's (``"orjson"`` or ``"msgspec"``); ``type`` decodes
    into a ``msgspec.Struct`` (or any type msgspec validates). Malformed JSON raises
    :class:`InvalidJSON`, answered with 400 and the byte position.

    Bodies with a declared length up to ``inline_max`` (64 KiB by default) are decoded
    from the ``bytes`` aiohttp received them in: that buffer exists anyway, and copying
    it into the arena would only cost time. Larger and chunked bodies, and every body
    while the pool's budget has no room for it, are read into the arena
    (:func:`read_body`, which waits for budget or answers 503) and decoded from there.
    """
    state = require_state(request)
    config = state.config
    if config.strict_content_type and not _is_json(request.content_type):
        msg = (
            f"expected a JSON body (Content-Type: application/json), got "
            f"{request.content_type!r}; send JSON with that content type"
        )
        raise UnsupportedMediaType(msg, content_type=request.content_type)
    decoder = decoder or config.decoder
    if state.body is None:
        data = state.inline
        if data is None:
            declared = state.declared
            if (
                declared is not None
                and 0 < declared <= config.inline_max
                and declared <= config.pool.available  # under pressure: queue like the rest
            ):
                data = await _read_inline(request, state, declared)
        if data is not None:
            return decode(data, decoder=decoder, type=type)
    return decode(await read_body(request), decoder=decoder, type=type)


async def _read_inline(request: web.Request, state: RequestState, declared: int) -> bytes:
    """A small declared body as the ``bytes`` aiohttp holds (no copy when it is whole)."""
    content = request.content
    if content.is_eof():  # all of it is buffered: one chunk comes back as it is
        data = content.read_nowait(-1)
    else:
        data = await _read_small(request, declared, state.config.body_timeout)
    if len(data) != declared:
        msg = (
            f"request body ended after {len(data)} of its declared {declared} bytes; "
            "send the whole body or a correct Content-Length"
        )
        raise IncompleteBody(msg, received=len(data), expected=declared)
    state.inline = data
    state.counters.bytes_read += declared
    return data


async def _read_small(request: web.Request, declared: int, timeout: float | None) -> bytes:
    """The rest of a small body, bounded by ``timeout``.

    The deadline is a timer that fails the body stream (the read then raises
    :class:`BodyTimeout`), not a task-cancelling timeout context: this runs for every
    small body that arrives in more than one segment, where a timeout context costs
    more than the rest of the read.
    """
    content = request.content
    handle = None
    if timeout is not None:
        handle = asyncio.get_running_loop().call_later(timeout, _expire_body, content, timeout)
    chunks: list[bytes] = []
    received = 0
    try:
        while received < declared:
            chunk = await content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    except ConnectionError as exc:
        raise _disconnected(request, declared) from exc
    finally:
        if handle is not None:
            handle.cancel()
    return b"".join(chunks)  # one chunk: that same object


def _expire_body(content: Any, timeout: float) -> None:
    content.set_exception(_body_timeout(timeout))


def _body_timeout(timeout: float | None) -> BodyTimeout:
    msg = (
        f"request body took longer than {timeout:g}s to arrive; "
        "send it faster or raise body_timeout="
    )
    return BodyTimeout(msg, timeout=timeout)


def _disconnected(request: web.Request, declared: int | None) -> IncompleteBody:
    # aiohttp fails the body stream with ConnectionResetError when the client leaves
    # mid-body; that is an incomplete body (400), not a server error (500)
    received = getattr(request.content, "total_bytes", 0)
    msg = f"client disconnected after {received} bytes of the request body; send the whole body"
    return IncompleteBody(msg, received=received, expected=declared)


def too_large(
    size: int, arena: Arena | None, *, declared: bool, limit: int | None = None
) -> BodyTooLarge:
    limit = limit if limit is not None else (arena.limit if arena is not None else 0)
    used = arena.used if arena is not None else 0
    what = "declares" if declared else "has passed"
    msg = (
        f"request body {what} {format_size(size)} ({size} bytes), over the "
        f"{format_size(limit)} limit for this route; send a smaller body or raise limit="
    )
    return BodyTooLarge(msg, requested=size, used=used, limit=limit)


async def _fill(request: web.Request, view: memoryview, declared: int) -> None:
    content = request.content
    filled = 0
    while filled < declared:
        chunk = await content.readany()
        if not chunk:
            msg = (
                f"request body ended after {filled} of its declared {declared} bytes; "
                "send the whole body or a correct Content-Length"
            )
            raise IncompleteBody(msg, received=filled, expected=declared)
        end = filled + len(chunk)
        if end > declared:  # the parser enforces Content-Length; never trust it blindly
            raise too_large(end, None, declared=False, limit=declared)
        view[filled:end] = chunk
        filled = end


async def _read_growing(
    request: web.Request, state: RequestState, room: int, declared: int | None
) -> memoryview:
    """Read a chunked or large body into a block that grows as bytes arrive."""
    arena = state.arena
    pool = arena.pool
    content = request.content
    block: Block | None = None
    filled = 0
    cap = room if declared is None else declared
    first = CHUNKED_FIRST if declared is None else EAGER_RESERVE
    try:
        block = await _wait_for_budget(request, state, pool.lend_async, min(first, cap))
        # blocks that go back before the body is adopted hold body bytes: mark them so
        # a scrubbing arena (or pool) zeroes them like the arena's own blocks
        block.scrub = arena._scrub
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            end = filled + len(chunk)
            if end > cap:
                if declared is not None:  # the parser enforces Content-Length; be sure
                    raise too_large(end, None, declared=False, limit=declared)
                raise too_large(end, arena, declared=False)
            if end > block.size:
                grow = GROWTH if declared is not None else 2
                bigger = await _wait_for_budget(
                    request, state, pool.lend_async, min(max(block.size * grow, end), cap)
                )
                assert bigger.view is not None
                assert block.view is not None
                bigger.scrub = arena._scrub
                bigger.view[:filled] = block.view[:filled]
                old, block = block, bigger
                pool.give_back([old])
            assert block.view is not None
            block.view[filled:end] = chunk
            filled = block.used = end
    except BaseException:
        if block is not None:
            pool.give_back([block])
        raise
    if declared is not None and filled < declared:
        pool.give_back([block])
        msg = (
            f"request body ended after {filled} of its declared {declared} bytes; "
            "send the whole body or a correct Content-Length"
        )
        raise IncompleteBody(msg, received=filled, expected=declared)
    if filled == 0:
        pool.give_back([block])
        return memoryview(b"")
    return arena._adopt(block, filled, True)


T = TypeVar("T")


async def _wait_for_budget(
    request: web.Request,
    state: RequestState,
    alloc: Callable[..., Coroutine[Any, Any, T]],
    nbytes: int,
) -> T:
    """Borrow with FIFO waiting, giving up the place if the client disconnects."""
    timeout = state.config.queue_timeout
    try:
        return await alloc(nbytes, timeout=0)
    except BudgetExhausted:
        if timeout is not None and timeout <= 0:
            raise
    state.counters.waits += 1
    task = asyncio.ensure_future(alloc(nbytes, timeout=timeout))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if _client_gone(request):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ArenaPoolError):
                    await task
                msg = "client disconnected while waiting for memory budget"
                raise ConnectionResetError(msg)
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ArenaPoolError):
                await task
        raise


@contextlib.asynccontextmanager
async def _body_errors(
    request: web.Request, timeout: float | None, declared: int | None
) -> AsyncIterator[None]:
    """Bound a body read by ``timeout`` (408) and turn a client that left into 400."""
    try:
        async with _deadline(timeout):
            yield
    except TimeoutError:
        raise _body_timeout(timeout) from None
    except ConnectionError as exc:
        raise _disconnected(request, declared) from exc


@contextlib.asynccontextmanager
async def _deadline(timeout: float | None) -> AsyncIterator[None]:
    """``asyncio.timeout`` where it exists (3.11+), ``None`` meaning no deadline."""
    if timeout is None:
        yield
        return
    timeout_cm = getattr(asyncio, "timeout", None)
    if timeout_cm is not None:
        async with timeout_cm(timeout):
            yield
        return
    # Python 3.10: cancel the task at the deadline and turn that into TimeoutError
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing() or request.content.exception() is not None


def _is_json(content_type: str) -> bool:
    return content_type in _JSON_TYPES or content_type.endswith("+json")
