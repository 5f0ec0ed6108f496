"""The middleware and the decorator: each request gets an arena and gives it back.

Theory of operation
-------------------
:func:`setup` installs the middleware (:func:`arena_middleware`), the readiness route,
the admin routes and the governor when asked, and, when the app starts, the
``Expect: 100-continue`` guard on every route (``_expect``). The middleware and
:func:`with_arena` are both ``_hotpath.serve``: the one path every served request
takes (see that module for what it does per request).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from .._adminconfig import AdminConfig
from .._governor import Governor, GovernorConfig
from .._slabpool import SlabPool
from .._units import format_size, parse_size
from ._config import (
    CONFIG_KEY,
    POOL_KEY,
    ROUTE_STATS_KEY,
    ArenaConfig,
    RouteStats,
    config_for,
    default_pool,
)
from ._expect import guard_expect, install_expect_guards
from ._heads import install as install_heads
from ._hotpath import serve, serve_route
from ._ready import install as install_ready
from ._request import find_state, get_arena
from ._responses import ADMIN_MARK

log = logging.getLogger("arenapool")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])


def setup(
    app: web.Application,
    pool: SlabPool | None = None,
    *,
    limit: int | str = "8MiB",
    budget: int | str = "256MiB",
    queue_timeout: float | None = 30.0,
    max_waiters: int | None = None,
    decoder: str = "orjson",
    strict_content_type: bool = False,
    scrub: bool | None = None,
    body_timeout: float | None = 60.0,
    body_min_rate: int = 1024,
    body_grace: float = 10.0,
    inline_max: int | str = "64KiB",
    close_pool: bool | None = None,
    admin: AdminConfig | bool = False,
    governor: Governor | GovernorConfig | bool | None = None,
    refuse_on_head: bool = True,
) -> SlabPool:
    """Install arenapool in ``app`` and return its pool.

    Args:
        pool: the pool to draw from; by default a new ``SlabPool(budget)``.
        limit: the most body (and arena) bytes per request; declared bodies above it
            get 413 before they are read. A handler can override it with
            ``@with_arena(limit=...)``.
        queue_timeout: seconds a request may wait for budget before 503 (30). A request
            predicted not to get it in time is refused at once instead, so a long
            deadline costs the refused nothing (see docs/scaling.md); a proxy's
            ``x-envoy-expected-rq-timeout-ms`` lowers it per request.
        max_waiters: most requests waiting for budget; beyond it they get 503 at once.
        decoder: ``"orjson"`` or ``"msgspec"`` for :func:`read_json`.
        strict_content_type: :func:`read_json` answers 415 unless the body is JSON.
        scrub: zero arena memory on release (default: the pool's setting).
        body_timeout: seconds a request may take to deliver its body (408 after);
            a body read holds budget only for what has arrived (see ``read_body``).
        body_min_rate, body_grace: a body arriving slower than ``body_min_rate``
            bytes/s on average, once ``body_grace`` seconds have passed, is cut off with
            408 (``0``: no minimum rate), as nginx and Envoy bound a stalled sender.
        inline_max: :func:`read_json` decodes declared bodies up to this size from the
            ``bytes`` aiohttp received them in, without copying them into the arena
            (``0``: always use the arena). Those bytes are aiohttp's, not the budget's.
        close_pool: close the pool on app cleanup (default: only a pool made here).
        admin: ``False``, or an ``AdminConfig`` to serve ``/_arenapool/`` routes.
        governor: ``None``, or a ``GovernorConfig``/``Governor`` to run with the app.
        refuse_on_head: let the connection answer 413/503 for a large declared body on
            a route known to read its body through arenapool as soon as its head
            arrives, before aiohttp makes a request of it (``_heads``; a burst's
            refusals then wait for no round of reading). Only for the app that is run,
            not for a sub-app.
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
        body_min_rate=body_min_rate,
        body_grace=body_grace,
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
    middleware = arena_middleware(config, app[ROUTE_STATS_KEY])
    app.middlewares.append(middleware)
    install_ready(app, config)  # GET /_arenapool/ready, admin routes or not (issue 13)
    if refuse_on_head:
        install_heads(app, config)
    if admin:
        _setup_admin(app, pool, admin, gov)
    should_close = owned if close_pool is None else close_pool

    async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
        install_expect_guards(app, config.limit)  # routes are fixed once the app runs
        serve_in_routes(app, middleware, config, app[ROUTE_STATS_KEY])
        if gov is not None:
            gov.start()
        yield
        if gov is not None:
            await gov.stop()
        if should_close:
            pool.close()

    app.cleanup_ctx.append(_lifecycle)
    return pool


def serve_in_routes(
    app: web.Application, middleware: Middleware, config: ArenaConfig, stats: RouteStats
) -> bool:
    """Serve each of ``app``'s routes through its own handler instead of ``middleware``,
    when that changes nothing but the cost; True if it did.

    The arena middleware is the innermost one when nothing was appended after it, so
    it is equivalent to wrapping each route's handler (``serve_route`` with the handler
    and the route bound), and then aiohttp skips its middleware machinery when the app
    has no other middleware (a frame and a cache lookup per request, about 4% of a 1 KiB
    request's instructions: ``benchmarks/callgrind_request.py``), or runs one layer
    fewer. Not done when a middleware follows ours, when the app has sub-apps (their
    requests pass through our middleware too), or when the app's middlewares are
    already frozen.
    Requests that match no route (404, 405) then do not pass through ``serve``: they
    read no body.
    """
    middlewares = app.middlewares
    if (
        getattr(middlewares, "frozen", True)
        or not middlewares
        or middlewares[-1] is not middleware
        or getattr(app, "_subapps", True)
    ):
        return False
    for route in app.router.routes():
        handler = getattr(route, "_handler", None)
        if handler is None:
            continue
        entry = stats._resolved[route] = stats.entry(route, route.method)
        served = functools.partial(serve_route, config, stats, handler, entry)
        for attr in ("__arenapool_limit__", ADMIN_MARK):  # what the route's handler says
            value = getattr(handler, attr, None)
            if value is not None:
                setattr(served, attr, value)
        route._handler = served
    del middlewares[-1]
    return True


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
    if config.governor is not None:  # it counts the requests from the route counters
        config.governor.count_requests(stats.activity)

    # A partial of serve, not a closure around it: one coroutine frame per request
    # instead of two (aiohttp adds its own layer once an app has any middleware).
    middleware = functools.partial(serve, config, stats, None)
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
            guard_expect(request.match_info.route, config.limit)  # from the next request
            stats = request.app.get(ROUTE_STATS_KEY) or RouteStats()
            return await serve(config, stats, parsed_limit, request, call)

        wrapper.__arenapool_limit__ = parsed_limit  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def _find_request(args: tuple[Any, ...]) -> web.Request:
    for arg in args:
        if isinstance(arg, web.BaseRequest):
            return cast(web.Request, arg)
        if isinstance(arg, web.View):
            return arg.request
    msg = "@with_arena needs a handler that takes the request (or a web.View method)"
    raise TypeError(msg)


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
    from ._admin import add_admin_routes  # noqa: PLC0415 - only when admin routes are on

    config = admin if isinstance(admin, AdminConfig) else AdminConfig(token=None)
    stats = app[ROUTE_STATS_KEY]
    add_admin_routes(app, config, pools=[pool], governor=governor, routes=stats.snapshot)
