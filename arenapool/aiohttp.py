"""aiohttp integration: every request's body and JSON come from its own arena.

Theory of operation
-------------------
The middleware (or the :func:`with_arena` decorator, for apps without it) gives each
request an :class:`~arenapool.Arena` before the handler runs and releases it when the
handler returns or raises, on every path: normal return, exception, cancellation,
client disconnect. It refuses a declared ``Content-Length`` above the limit with 413
before a byte of the body is read.

:func:`read_body` reads the body straight into the arena: one allocation when the
length is declared; for chunked bodies a block that doubles as it fills (the old
block goes back to the pool at once), cut off with 413 at the limit. Waiting for
budget is FIFO and bounded by ``queue_timeout``, then 503 with ``Retry-After``; a
client that leaves while waiting gives its place up.

Responses never carry arena memory: aiohttp writes the response after the middleware
has returned (and the transport may keep a reference to the buffer), so
:func:`json_response` encodes to fresh ``bytes``, and a response whose body is a
``memoryview`` is copied before the arena is released (with a warning).

Errors from arenapool (:class:`~arenapool.InvalidJSON`, limits, budget ...) that
escape a handler become JSON error responses in one shape:
``{"error": code, "detail": message, ...}`` (see :mod:`arenapool._http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from aiohttp import payload, web

from . import _arena
from ._arena import Arena
from ._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    ArenaReleasedError,
    BodyTimeout,
    BodyTooLarge,
    BudgetExhausted,
    IncompleteBody,
    InvalidJSON,
    UnsupportedMediaType,
)
from ._http import ADMIN_MARK, error_response
from ._json import decode, encode
from ._slab import Block, SlabPool
from ._units import format_size, parse_size

__all__ = [
    "ARENA_KEY",
    "CONFIG_KEY",
    "POOL_KEY",
    "ROUTE_STATS_KEY",
    "ArenaConfig",
    "RouteStats",
    "arena_middleware",
    "default_pool",
    "get_arena",
    "json_response",
    "read_body",
    "read_json",
    "setup",
    "with_arena",
]

log = logging.getLogger("arenapool")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])

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


@dataclass
class ArenaConfig:
    """Per-app settings, stored under :data:`CONFIG_KEY`."""

    pool: SlabPool
    limit: int
    queue_timeout: float | None = 1.0
    decoder: str = "orjson"
    strict_content_type: bool = False
    scrub: bool | None = None
    body_timeout: float | None = 60.0
    inline_max: int = 64 * 1024
    governor: Any = None


@dataclass
class _RouteCounters:
    requests: int = 0
    in_flight: int = 0
    bytes_read: int = 0
    arena_high_water: int = 0
    waits: int = 0
    status_400: int = 0
    status_408: int = 0
    status_413: int = 0
    status_415: int = 0
    status_503: int = 0
    escapes: int = 0


_RouteEntry = tuple[str, _RouteCounters, "int | None", bool]


@dataclass
class RouteStats:
    """Per-route accounting: bytes read, arena peaks, budget waits and refusals."""

    routes: dict[str, _RouteCounters] = field(default_factory=dict)
    # route object -> (name, counters, handler limit, admin route): routes live as long
    # as their app, and naming one costs more than the rest of the middleware
    _resolved: dict[object, _RouteEntry] = field(default_factory=dict, repr=False)

    def route(self, name: str) -> _RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = _RouteCounters()
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{route: {"requests": ..., "bytes_read": ..., ...}}`` (JSON-serialisable)."""
        return {name: dict(vars(c)) for name, c in sorted(self.routes.items())}


POOL_KEY = web.AppKey("arenapool.pool", SlabPool)
CONFIG_KEY = web.AppKey("arenapool.config", ArenaConfig)
ROUTE_STATS_KEY = web.AppKey("arenapool.route_stats", RouteStats)


class _RequestState:
    """What the middleware keeps per request. The arena is made on first use."""

    __slots__ = (
        "_arena",
        "body",
        "config",
        "counters",
        "declared",
        "inline",
        "limit",
        "request",
        "route",
    )

    def __init__(
        self,
        request: web.Request,
        config: ArenaConfig,
        *,
        counters: _RouteCounters,
        route: str,
        limit: int,
        declared: int | None,
    ) -> None:
        self.request: web.Request | None = request  # None once served: no cycle
        self.declared = declared
        self.config = config
        self.counters = counters
        self.route = route
        self.limit = limit
        self._arena: Arena | None = None
        self.body: memoryview | None = None
        self.inline: bytes | None = None

    @property
    def arena(self) -> Arena:
        arena = self._arena
        if arena is None:
            if self.request is None:  # served: an arena made now would never be released
                msg = (
                    f"the request to {self.route} has finished; its arena is gone. Use "
                    "arenas inside the handler (or a middleware that runs before ours)"
                )
                raise ArenaReleasedError(msg, state="RELEASED", operation="get_arena")
            config = self.config
            arena = self._arena = config.pool.arena(
                limit=self.limit, scrub=config.scrub, name=self.route
            )
        return arena

    def __call__(self) -> Arena:  # the provider current_arena() calls
        return self.arena


_RequestKey = getattr(web, "RequestKey", None)
ARENA_KEY: Any = (
    _RequestKey("arenapool.request", _RequestState) if _RequestKey else "arenapool.request"
)

_DEFAULT_POOL: SlabPool | None = None
_ResourceRoute = web.ResourceRoute


def default_pool() -> SlabPool:
    """The process-wide pool used when neither ``setup`` nor a decorator names one."""
    global _DEFAULT_POOL
    if _DEFAULT_POOL is None or _DEFAULT_POOL.closed:
        _DEFAULT_POOL = SlabPool(name="default")
    return _DEFAULT_POOL


# -- setup and middleware ---------------------------------------------------------------


def setup(
    app: web.Application,
    pool: SlabPool | None = None,
    *,
    limit: int | str = "8MiB",
    budget: int | str = "256MiB",
    queue_timeout: float | None = 1.0,
    max_waiters: int | None = None,
    decoder: str = "orjson",
    strict_content_type: bool = False,
    scrub: bool | None = None,
    body_timeout: float | None = 60.0,
    inline_max: int | str = "64KiB",
    close_pool: bool | None = None,
    admin: Any = False,
    governor: Any = None,
) -> SlabPool:
    """Install arenapool in ``app`` and return its pool.

    Args:
        pool: the pool to draw from; by default a new ``SlabPool(budget)``.
        limit: the most body (and arena) bytes per request; declared bodies above it
            get 413 before they are read. A handler can override it with
            ``@with_arena(limit=...)``.
        queue_timeout: seconds a request may wait for budget before 503.
        max_waiters: most requests waiting for budget; beyond it they get 503 at once.
        decoder: ``"orjson"`` or ``"msgspec"`` for :func:`read_json`.
        strict_content_type: :func:`read_json` answers 415 unless the body is JSON.
        scrub: zero arena memory on release (default: the pool's setting).
        body_timeout: seconds a request may take to deliver its body (408 after);
            with incremental reservation it bounds how long a slow sender holds budget.
        inline_max: :func:`read_json` decodes declared bodies up to this size from the
            ``bytes`` aiohttp received them in, without copying them into the arena
            (``0``: always use the arena). Those bytes are aiohttp's, not the budget's.
        close_pool: close the pool on app cleanup (default: only a pool made here).
        admin: ``False``, or an ``AdminConfig`` to serve ``/_arenapool/`` routes.
        governor: ``None``, or a ``GovernorConfig``/``Governor`` to run with the app.
    """
    owned = pool is None
    if pool is None:
        pool = SlabPool(budget, name=f"app-{id(app):x}")
    if max_waiters is not None:
        pool.max_waiters = max_waiters
    config = ArenaConfig(
        pool=pool,
        limit=parse_size(limit, name="limit"),
        queue_timeout=queue_timeout,
        decoder=decoder,
        strict_content_type=strict_content_type,
        scrub=scrub,
        body_timeout=body_timeout,
        inline_max=parse_size(inline_max, name="inline_max", allow_zero=True),
    )
    if config.limit > pool.budget:
        log.warning(
            "arenapool: limit %s is above the pool budget %s; bodies between the two "
            "will get 503 instead of 413",
            format_size(config.limit),
            format_size(pool.budget),
        )
    app[POOL_KEY] = pool
    app[CONFIG_KEY] = config
    app[ROUTE_STATS_KEY] = RouteStats()
    gov = config.governor = _make_governor(pool, governor)
    app.middlewares.append(arena_middleware(config, app[ROUTE_STATS_KEY]))
    if admin:
        _setup_admin(app, pool, admin, gov)
    should_close = owned if close_pool is None else close_pool

    async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
        if gov is not None:
            gov.start()
        yield
        if gov is not None:
            await gov.stop()
        if should_close:
            pool.close()

    app.cleanup_ctx.append(_lifecycle)
    return pool


def arena_middleware(
    config: ArenaConfig | None = None,
    route_stats: RouteStats | None = None,
    *,
    pool: SlabPool | None = None,
    limit: int | str = "8MiB",
    **options: Any,
) -> Any:
    """The middleware alone, for apps that assemble their middlewares themselves.

    Give it an :class:`ArenaConfig`, or ``pool=``/``limit=`` and the options of
    :func:`setup`.
    """
    if config is None:
        config = ArenaConfig(
            pool=pool or default_pool(), limit=parse_size(limit, name="limit"), **options
        )
    stats = route_stats if route_stats is not None else RouteStats()

    # A partial of _serve, not a closure around it: one coroutine frame per request
    # instead of two (aiohttp adds its own layer once an app has any middleware).
    middleware = functools.partial(_serve, config, stats, None)
    middleware.__middleware_version__ = 1  # type: ignore[attr-defined] # what @web.middleware sets
    return middleware


def with_arena(
    limit: int | str | None = None, *, pool: SlabPool | None = None, **options: Any
) -> Callable[[F], F]:
    """Give a handler its own arena, with or without the middleware.

    Works on plain handlers and on class-based view methods. If the handler has a
    parameter named ``arena`` it is passed the arena. Under the middleware, ``limit``
    overrides the app's limit for this handler (and 413 still comes before reading).
    """
    parsed_limit = None if limit is None else parse_size(limit, name="limit")

    def decorate(func: F) -> F:
        wants_arena = "arena" in inspect.signature(func).parameters

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> web.StreamResponse:
            request = _find_request(args)

            async def call(request: web.Request) -> web.StreamResponse:
                if wants_arena:
                    kwargs["arena"] = get_arena(request)
                return await func(*args, **kwargs)

            if _served(request) is not None:
                return await call(request)
            config = _config_for(request, pool, parsed_limit, options)
            stats = request.app.get(ROUTE_STATS_KEY) or RouteStats()
            return await _serve(config, stats, parsed_limit, request, call)

        wrapper.__arenapool_limit__ = parsed_limit  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def get_arena(request: web.Request) -> Arena:
    """The arena of this request (from the middleware or :func:`with_arena`)."""
    state = _served(request)
    if state is None:
        msg = (
            "this request has no arena: call arenapool.aiohttp.setup(app) or decorate the "
            "handler with @with_arena()"
        )
        raise ArenaPoolError(msg)
    return state.arena


# -- reading bodies -----------------------------------------------------------------


async def read_body(request: web.Request) -> memoryview:
    """Read the request body into the request's arena; returns a view of it.

    One allocation when ``Content-Length`` is declared; a doubling block for chunked
    bodies. Raises :class:`BodyTooLarge` (413) past the limit,
    :class:`BudgetExhausted` (503) when budget does not free up within
    ``queue_timeout``, :class:`IncompleteBody` (400) if the body ends early. The view
    dies when the request ends: copy what you keep (``bytes(view)``).
    Calling it again returns the same view.
    """
    state = _state(request)
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
        raise _too_large(declared, arena, declared=True)
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
    state = _state(request)
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


async def _read_inline(request: web.Request, state: _RequestState, declared: int) -> bytes:
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


def json_response(
    data: Any,
    *,
    status: int = 200,
    reason: str | None = None,
    headers: Mapping[str, str] | None = None,
    option: int = 0,
) -> web.Response:
    """A JSON response encoded by orjson into fresh ``bytes`` (never arena memory)."""
    return web.Response(
        body=encode(data, option=option),
        status=status,
        reason=reason,
        headers=headers,
        content_type="application/json",
    )


# -- internals ------------------------------------------------------------------------


async def _serve(
    config: ArenaConfig,
    stats: RouteStats,
    limit_override: int | None,
    request: web.Request,
    handler: Handler,
) -> web.StreamResponse:
    """The middleware: give the request an arena, run the handler, release the arena."""
    outer = _arena._current.get()  # an outer app's middleware runs in this same task
    if type(outer) is _RequestState and outer.request is request:
        return await handler(request)
    route, counters, handler_limit, admin = _resolve_route(request, stats)
    counters.requests += 1
    if limit_override is None:
        limit_override = handler_limit
    limit = config.limit if limit_override is None else limit_override
    declared = request.content_length
    if declared is not None and declared > limit:
        counters.status_413 += 1
        return _refuse(request, _too_large(declared, None, declared=True, limit=limit))
    governor = None if admin else config.governor
    if governor is not None:
        if governor.shedding:
            from ._admin import has_body, shed_response  # noqa: PLC0415 - rare path

            if has_body(request):
                return shed_response(governor)
        governor.note_request_start()
    state = _RequestState(
        request, config, counters=counters, route=route, limit=limit, declared=declared
    )
    request[ARENA_KEY] = state
    token = _arena._current.set(state)
    counters.in_flight += 1
    try:
        try:
            response = await handler(request)
        except ArenaPoolError as exc:
            response = _error_for(request, exc, counters)
        _detach_body(response, route)
        return response
    finally:
        state.request = None  # the request holds the state: break the cycle (and: served)
        counters.in_flight -= 1
        if governor is not None:
            governor.note_request_end()
        try:
            arena = state._arena
            if arena is not None:
                _release(arena, counters)
        finally:
            try:  # noqa: SIM105 - per request; contextlib.suppress costs an object
                _arena._current.reset(token)
            except ValueError:  # finished in another context than it started in
                pass


def _release(arena: Arena, counters: _RouteCounters) -> None:
    counters.arena_high_water = max(counters.arena_high_water, arena.high_water)
    escapes_before = arena.escapes
    try:
        arena.release()
    finally:
        counters.escapes += arena.escapes - escapes_before


def _resolve_route(request: web.Request, stats: RouteStats) -> _RouteEntry:
    """(route name, its counters, a handler's own limit, whether it is an admin route)."""
    route = request.match_info.route
    cacheable = type(route) is _ResourceRoute  # SystemRoutes (404, 405) are per request
    if cacheable:
        entry = stats._resolved.get(route)
        if entry is not None:
            return entry
    name = _route_name(request)
    handler = getattr(route, "handler", None)
    limit = getattr(handler, "__arenapool_limit__", None)
    admin = bool(getattr(handler, ADMIN_MARK, False))
    entry = (name, stats.route(name), limit if isinstance(limit, int) else None, admin)
    if cacheable:
        stats._resolved[route] = entry
    return entry


def _error_for(
    request: web.Request, exc: ArenaPoolError, counters: _RouteCounters
) -> web.StreamResponse:
    if isinstance(exc, InvalidJSON):
        counters.status_400 += 1
        return error_response(
            "invalid_json",
            exc.message,
            position=exc.position,
            line=exc.line,
            column=exc.column,
        )
    if isinstance(exc, IncompleteBody):
        counters.status_400 += 1
        return error_response(
            "incomplete_body", exc.message, received=exc.received, expected=exc.expected
        )
    if isinstance(exc, BodyTimeout):
        counters.status_408 += 1
        response = error_response("body_timeout", exc.message)
        response.force_close()
        return response
    if isinstance(exc, ArenaLimitExceeded):
        counters.status_413 += 1
        return _refuse(request, exc)
    if isinstance(exc, BudgetExhausted):
        counters.status_503 += 1
        return error_response("budget_exhausted", exc.message, retry_after=exc.retry_after)
    if isinstance(exc, UnsupportedMediaType):
        counters.status_415 += 1
        return error_response("unsupported_media_type", exc.message)
    raise exc


def _refuse(request: web.Request, exc: ArenaLimitExceeded) -> web.StreamResponse:
    response = error_response("body_too_large", exc.message, limit=exc.limit)
    if request.body_exists:
        # The body is not read; do not keep the connection for another request.
        response.force_close()
    return response


def _too_large(
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
            raise _too_large(end, None, declared=False, limit=declared)
        view[filled:end] = chunk
        filled = end


async def _read_growing(
    request: web.Request, state: _RequestState, room: int, declared: int | None
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
                    raise _too_large(end, None, declared=False, limit=declared)
                raise _too_large(end, arena, declared=False)
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
    state: _RequestState,
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


def _detach_body(response: web.StreamResponse, route: str) -> None:
    """Copy a memoryview response body out of the arena before it is released."""
    if not isinstance(response, web.Response):
        return
    body = response.body
    if type(body) is bytes or body is None:  # the common cases, before any ABC check
        return
    value = getattr(body, "_value", None) if isinstance(body, payload.Payload) else None
    if isinstance(value, memoryview):
        log.warning(
            "arenapool: route %s returned a memoryview body; copied it out of the arena. "
            "Return bytes (json_response does) to avoid the copy.",
            route,
        )
        response.body = value.tobytes()


def _served(request: web.Request) -> _RequestState | None:
    """This request's state if the middleware or a decorator is serving it.

    The context variable answers for the request being handled in this task (one
    lookup, where ``request.get`` goes through ``Mapping.get`` in Python); the request's
    own slot answers for a request handled elsewhere.
    """
    state = _arena._current.get()
    if type(state) is _RequestState and state.request is request:
        return state
    return cast("_RequestState | None", request.get(ARENA_KEY))


def _state(request: web.Request) -> _RequestState:
    state = _served(request)
    if state is None:
        get_arena(request)  # raises with the explanation
    return state  # type: ignore[return-value]  # get_arena raised


def _config_for(
    request: web.Request, pool: SlabPool | None, limit: int | None, options: Mapping[str, Any]
) -> ArenaConfig:
    app_config = request.app.get(CONFIG_KEY)
    if app_config is not None and pool is None and not options:
        return app_config
    base_pool = pool or (app_config.pool if app_config else default_pool())
    base_limit = app_config.limit if app_config else parse_size("8MiB")
    return ArenaConfig(
        pool=base_pool, limit=limit if limit is not None else base_limit, **dict(options)
    )


def _find_request(args: tuple[Any, ...]) -> web.Request:
    for arg in args:
        if isinstance(arg, web.BaseRequest):
            return cast(web.Request, arg)
        if isinstance(arg, web.View):
            return arg.request
    msg = "@with_arena needs a handler that takes the request (or a web.View method)"
    raise TypeError(msg)


def _route_name(request: web.Request) -> str:
    match_info = request.match_info
    route = getattr(match_info, "route", None)
    if route is not None:
        if route.name:
            return str(route.name)
        resource = route.resource
        if resource is not None:
            return f"{route.method} {resource.canonical}"
    return f"{request.method} <unmatched>"


def _is_json(content_type: str) -> bool:
    return content_type in _JSON_TYPES or content_type.endswith("+json")


def _make_governor(pool: SlabPool, governor: Any) -> Any:
    """The Governor ``setup(governor=...)`` asks for; the middleware feeds it."""
    if governor is None or governor is False:
        return None
    from ._governor import Governor, GovernorConfig  # noqa: PLC0415 - optional part

    if isinstance(governor, GovernorConfig):
        gov = Governor(governor, pools=[pool])
    elif governor is True:
        gov = Governor(GovernorConfig(), pools=[pool])
    else:
        gov = governor
    return gov


def _setup_admin(app: web.Application, pool: SlabPool, admin: Any, governor: Any) -> None:
    from ._admin import AdminConfig, add_admin_routes  # noqa: PLC0415 - optional part

    config = admin if isinstance(admin, AdminConfig) else AdminConfig(token=None)
    stats = app[ROUTE_STATS_KEY]
    add_admin_routes(app, config, pools=[pool], governor=governor, routes=stats.snapshot)
