"""Per-app settings and per-route accounting, and the keys they live under in an app.

:class:`ArenaConfig` is what ``setup`` (or a decorator without it) decided for an app;
:class:`RouteStats` counts per route what the middleware saw. Both are stored in the
``web.Application`` under the typed keys below, so handlers and the admin routes find
them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from .._governor import Governor
from .._slabpool import SlabPool
from .._units import parse_size
from ._responses import ADMIN_MARK

if TYPE_CHECKING:
    from ._request import RequestState  # (it imports this module)

_ResourceRoute = web.ResourceRoute


@dataclass
class ArenaConfig:
    """Per-app settings, stored under :data:`CONFIG_KEY`."""

    pool: SlabPool
    limit: int
    queue_timeout: float | None = 30.0  # a deadline admission plans against (_admission)
    decoder: str = "orjson"
    strict_content_type: bool = False
    scrub: bool | None = None
    body_timeout: float | None = 60.0
    inline_max: int = 64 * 1024
    governor: Governor | None = None
    #: a body read slower than this on average (bytes/s) after ``body_grace`` seconds
    #: is cut off with 408 (0: no minimum rate)
    body_min_rate: int = 1024
    body_grace: float = 10.0
    #: (method, raw path) -> its route, for each route whose handler was seen reading
    #: a large declared body through arenapool: those heads are judged on arrival by
    #: their connection (``_heads``)
    heads: dict[tuple[str, str], HeadRoute] = field(default_factory=dict, repr=False)
    #: called once, when ``heads`` gets its first route (``_heads``: the server's idle
    #: connections start judging)
    first_head: list[Callable[[], None]] = field(default_factory=list, repr=False)
    #: setup() set aiohttp's read-ahead (``read_bufsize``) to ``_ready.READ_AHEAD``; the
    #: app did not choose one (``_heads`` then gives each body its own, on its head)
    read_ahead_capped: bool = False


#: the most (method, path) pairs an app remembers as read through arenapool; paths
#: past it (an API of unbounded dynamic paths) are judged by the body read, as before
KNOWN_PATHS = 1024


class HeadRoute(NamedTuple):
    """What a connection needs to judge a head for a route read through arenapool."""

    limit: int
    counters: RouteCounters


def learn(config: ArenaConfig, request: web.Request, limit: int, counters: RouteCounters) -> None:
    """Note that the handler of ``request``'s method and path reads its body through
    arenapool, with ``limit`` (``_heads`` judges those heads on arrival)."""
    heads = config.heads
    key = (request.method, request.rel_url.raw_path)
    if key not in heads and len(heads) < KNOWN_PATHS:
        first = not heads
        heads[key] = HeadRoute(limit, counters)
        if first:
            for hook in config.first_head:
                hook()


#: Upper bounds (bytes) of the per-route arena-bytes histogram: 4 KiB to 64 MiB by
#: fours, then everything above.
ARENA_BUCKETS: tuple[int, ...] = tuple(4096 * 4**i for i in range(8))


@dataclass
class RouteCounters:
    """One route's counts; :meth:`RouteStats.snapshot` reports them as they are named.

    ``arena_buckets`` counts requests by arena high water (:data:`ARENA_BUCKETS`, the
    last slot above them all); the snapshot reports it cumulatively as
    ``arena_bytes_le_<bound>`` and ``arena_bytes_le_inf``.
    """

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
    arena_bytes_sum: int = 0
    arena_bytes_count: int = 0
    arena_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(ARENA_BUCKETS) + 1), repr=False
    )
    #: what a served request of this route holds under ``ARENA_KEY`` (made by the
    #: first: ``_hotpath.served_state``); not a count
    served: RequestState | None = field(default=None, repr=False, compare=False)

    def observe_arena(self, nbytes: int) -> None:
        """One request's arena high water: the route's peak and its histogram."""
        self.arena_high_water = max(self.arena_high_water, nbytes)
        self.arena_bytes_sum += nbytes
        self.arena_bytes_count += 1
        self.arena_buckets[bisect.bisect_left(ARENA_BUCKETS, nbytes)] += 1


RouteEntry = tuple[str, RouteCounters, "int | None", bool]
#: the attributes of RouteCounters that the snapshot does not report as they are
_NOT_COUNTS = frozenset(("arena_buckets", "served"))


@dataclass
class RouteStats:
    """Per-route accounting: bytes read, arena peaks, budget waits and refusals."""

    routes: dict[str, RouteCounters] = field(default_factory=dict)
    # route object -> (name, counters, handler limit, admin route): routes live as long
    # as their app, and naming one costs more than the rest of the middleware
    _resolved: dict[object, RouteEntry] = field(default_factory=dict, repr=False)

    def resolve(self, request: web.Request) -> RouteEntry:
        """(route name, its counters, a handler's own limit, whether it is an admin
        route) for ``request``, cached per route object."""
        route = request.match_info.route
        if type(route) is _ResourceRoute:  # SystemRoutes (404, 405) are per request
            entry = self._resolved.get(route)
            if entry is None:
                entry = self._resolved[route] = self.entry(route, request.method)
            return entry
        return self.entry(route, request.method)

    def entry(self, route: web.AbstractRoute, method: str) -> RouteEntry:
        """:meth:`resolve`'s answer for ``route`` (``method``: the request's, named when
        the route has no name and no resource)."""
        handler = getattr(route, "handler", None)
        limit = getattr(handler, "__arenapool_limit__", None)
        admin = bool(getattr(handler, ADMIN_MARK, False))
        name = name_of(route, method)
        return (name, self.route(name), limit if isinstance(limit, int) else None, admin)

    def activity(self) -> tuple[int, int]:
        """(requests in flight, requests ended ever) over every route but the admin
        routes: what a :class:`~arenapool.Governor` counts (``Governor.count_requests``),
        read at its checks instead of two calls on every request. Admin routes are named
        by their cached entries (an admin route is always a resource route, so cached)."""
        in_flight = ended = 0
        admin = {entry[0] for entry in list(self._resolved.values()) if entry[3]}
        for name, counters in list(self.routes.items()):
            if name not in admin:
                in_flight += counters.in_flight
                ended += counters.requests - counters.in_flight
        return in_flight, ended

    def route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{route: {"requests": ..., "bytes_read": ..., ...}}`` (JSON-serialisable), for
        the routes that have seen a request (the counters of every route are made when
        the app starts: ``_middleware.serve_in_routes``)."""
        out: dict[str, dict[str, int]] = {}
        for name, c in sorted(self.routes.items()):
            row = {k: v for k, v in vars(c).items() if k not in _NOT_COUNTS}
            if not any(row.values()):
                continue
            total = 0
            for bound, n in zip((*ARENA_BUCKETS, "inf"), c.arena_buckets, strict=True):
                total += n
                row[f"arena_bytes_le_{bound}"] = total
            out[name] = row
        return out


def route_name(request: web.Request) -> str:
    """The route's name, else ``METHOD canonical-path``, else ``METHOD <unmatched>``."""
    return name_of(getattr(request.match_info, "route", None), request.method)


def name_of(route: web.AbstractRoute | None, method: str) -> str:
    """:func:`route_name` of a request to ``route`` with ``method``."""
    if route is not None:
        if route.name:
            return str(route.name)
        resource = route.resource
        if resource is not None:
            return f"{route.method} {resource.canonical}"
    return f"{method} <unmatched>"


POOL_KEY = web.AppKey("arenapool.pool", SlabPool)
CONFIG_KEY = web.AppKey("arenapool.config", ArenaConfig)
ROUTE_STATS_KEY = web.AppKey("arenapool.route_stats", RouteStats)


_DEFAULT_POOL: SlabPool | None = None


def default_pool() -> SlabPool:
    """The process-wide pool used when neither ``setup`` nor a decorator names one."""
    global _DEFAULT_POOL
    if _DEFAULT_POOL is None or _DEFAULT_POOL.closed:
        _DEFAULT_POOL = SlabPool(name="default")
    return _DEFAULT_POOL


def config_for(
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
