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
``{"error": code, "detail": message, ...}`` (see :mod:`arenapool.aiohttp._responses`).

:func:`add_admin_routes` (or ``setup(admin=AdminConfig(...))``) serves the admin routes
and the dashboard; :func:`governor_middleware` feeds a governor in apps that do not use
``setup``.

Where each part lives: ``_config`` (settings, route stats, app keys), ``_request`` (the
per-request state), ``_middleware`` (setup, middleware, decorator), ``_body`` (reading
bodies and JSON), ``_responses`` (JSON and error responses), ``_admin`` (admin routes,
dashboard, load shedding).
"""

from __future__ import annotations

from ._admin import AdminConfig, add_admin_routes, governor_middleware
from ._body import CHUNKED_FIRST as CHUNKED_FIRST  # the body path's tunables: importable
from ._body import DISCONNECT_POLL as DISCONNECT_POLL  # here as before, not in __all__
from ._body import EAGER_RESERVE as EAGER_RESERVE
from ._body import GROWTH as GROWTH
from ._body import read_body, read_json
from ._config import (
    CONFIG_KEY,
    POOL_KEY,
    ROUTE_STATS_KEY,
    ArenaConfig,
    RouteStats,
    default_pool,
)
from ._middleware import arena_middleware, setup, with_arena
from ._request import ARENA_KEY, get_arena
from ._responses import json_response

__all__ = [
    "ARENA_KEY",
    "CONFIG_KEY",
    "POOL_KEY",
    "ROUTE_STATS_KEY",
    "AdminConfig",
    "ArenaConfig",
    "RouteStats",
    "add_admin_routes",
    "arena_middleware",
    "default_pool",
    "get_arena",
    "governor_middleware",
    "json_response",
    "read_body",
    "read_json",
    "setup",
    "with_arena",
]
