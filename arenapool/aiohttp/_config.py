"""Per-app settings and per-route accounting, and the keys they live under in an app.

:class:`ArenaConfig` is what ``setup`` (or a decorator without it) decided for an app;
:class:`RouteStats` counts per route what the middleware saw. Both are stored in the
``web.Application`` under the typed keys below, so handlers and the admin routes find
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .._governor import Governor
from .._slabpool import SlabPool
from .._units import parse_size


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
    governor: Governor | None = None


@dataclass
class RouteCounters:
    """One route's counts; :meth:`RouteStats.snapshot` reports them as they are named."""

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


RouteEntry = tuple[str, RouteCounters, "int | None", bool]


@dataclass
class RouteStats:
    """Per-route accounting: bytes read, arena peaks, budget waits and refusals."""

    routes: dict[str, RouteCounters] = field(default_factory=dict)
    # route object -> (name, counters, handler limit, admin route): routes live as long
    # as their app, and naming one costs more than the rest of the middleware
    _resolved: dict[object, RouteEntry] = field(default_factory=dict, repr=False)

    def route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{route: {"requests": ..., "bytes_read": ..., ...}}`` (JSON-serialisable)."""
        return {name: dict(vars(c)) for name, c in sorted(self.routes.items())}


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
