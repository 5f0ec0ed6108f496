"""The middleware and the decorator: each request gets an arena and gives it back.

Theory of operation
-------------------
:func:`_serve` is the one path every served request takes, whether it came through the
middleware (:func:`arena_middleware`, installed by :func:`setup`) or through
:func:`with_arena`. It names the route (cached per route object), refuses a declared
body above the limit with 413 before reading it, sheds bodies while the governor says
so, makes the request's state, runs the handler, turns arenapool errors into JSON error
responses, copies a ``memoryview`` response body out of the arena, and in ``finally``
releases the arena and resets the context, on every path.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from aiohttp import payload, web
from aiohttp.typedefs import Middleware

from .. import _arena
from .._arena import Arena
from .._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    BodyTimeout,
    BudgetExhausted,
    IncompleteBody,
    InvalidJSON,
    UnsupportedMediaType,
)
from .._governor import Governor, GovernorConfig
from .._slabpool import SlabPool
from .._units import format_size, parse_size
from ._admin import AdminConfig, add_admin_routes, has_body, shed_response
from ._body import too_large
from ._config import (
    CONFIG_KEY,
    POOL_KEY,
    ROUTE_STATS_KEY,
    ArenaConfig,
    RouteCounters,
    RouteEntry,
    RouteStats,
    config_for,
    default_pool,
)
from ._request import ARENA_KEY, RequestState, find_state, get_arena
from ._responses import ADMIN_MARK, error_response

log = logging.getLogger("arenapool")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])

_ResourceRoute = web.ResourceRoute


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
    admin: AdminConfig | bool = False,
    governor: Governor | GovernorConfig | bool | None = None,
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
) -> Middleware:
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

            if find_state(request) is not None:
                return await call(request)
            config = config_for(request, pool, parsed_limit, options)
            stats = request.app.get(ROUTE_STATS_KEY) or RouteStats()
            return await _serve(config, stats, parsed_limit, request, call)

        wrapper.__arenapool_limit__ = parsed_limit  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


async def _serve(
    config: ArenaConfig,
    stats: RouteStats,
    limit_override: int | None,
    request: web.Request,
    handler: Handler,
) -> web.StreamResponse:
    """The middleware: give the request an arena, run the handler, release the arena."""
    outer = _arena._current.get()  # an outer app's middleware runs in this same task
    if type(outer) is RequestState and outer.request is request:
        return await handler(request)
    route, counters, handler_limit, admin = _resolve_route(request, stats)
    counters.requests += 1
    if limit_override is None:
        limit_override = handler_limit
    limit = config.limit if limit_override is None else limit_override
    declared = request.content_length
    if declared is not None and declared > limit:
        counters.status_413 += 1
        return _refuse(request, too_large(declared, None, declared=True, limit=limit))
    governor = None if admin else config.governor
    if governor is not None:
        if governor.shedding and has_body(request):
            return shed_response(governor)
        governor.note_request_start()
    state = RequestState(
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


def _release(arena: Arena, counters: RouteCounters) -> None:
    counters.arena_high_water = max(counters.arena_high_water, arena.high_water)
    escapes_before = arena.escapes
    try:
        arena.release()
    finally:
        counters.escapes += arena.escapes - escapes_before


def _resolve_route(request: web.Request, stats: RouteStats) -> RouteEntry:
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
    request: web.Request, exc: ArenaPoolError, counters: RouteCounters
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


def _make_governor(
    pool: SlabPool, governor: Governor | GovernorConfig | bool | None
) -> Governor | None:
    """The Governor ``setup(governor=...)`` asks for; the middleware feeds it."""
    if governor is None or governor is False:
        return None
    if isinstance(governor, GovernorConfig):
        gov = Governor(governor, pools=[pool])
    elif governor is True:
        gov = Governor(GovernorConfig(), pools=[pool])
    else:
        gov = governor
    return gov


def _setup_admin(
    app: web.Application, pool: SlabPool, admin: AdminConfig | bool, governor: Governor | None
) -> None:
    config = admin if isinstance(admin, AdminConfig) else AdminConfig(token=None)
    stats = app[ROUTE_STATS_KEY]
    add_admin_routes(app, config, pools=[pool], governor=governor, routes=stats.snapshot)
