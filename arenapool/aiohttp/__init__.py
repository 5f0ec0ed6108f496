"""aiohttp integration: every request's body and JSON come from its own arena.

Theory of operation
-------------------
The middleware (or the :func:`with_arena` decorator, for apps without it) gives each
request an :class:`~arenapool.Arena` before the handler runs and releases it when the
handler returns or raises, on every path: normal return, exception, cancellation,
client disconnect. It refuses a declared ``Content-Length`` above the limit with 413
before a byte of the body is read.

:func:`read_body` reads the body straight into the arena: one allocation when the whole
body has arrived by the time it is read (the usual case for a declared body up to what
aiohttp buffers ahead), else an allocation sized to what has arrived that grows as
bytes arrive (``Arena.realloc``; the old block goes back to the pool at once), so a
connection holds budget only for what it has sent. Every way a handler reads a body
is cut off with 413 at the limit (inflated bytes, for a content-coded body), and
``Expect: 100-continue`` over the limit gets 413 instead of 100. Waiting for budget is
FIFO and bounded by ``queue_timeout``, then 503 with ``Retry-After``; a client that
leaves while waiting gives its place up.

Responses never carry arena memory: aiohttp writes the response after the middleware
has returned (and the transport may keep a reference to the buffer), so
:func:`json_response` encodes to fresh ``bytes``, and a response whose body is a
``memoryview`` is copied before the arena is released (with a warning).

Errors from arenapool (:class:`~arenapool.InvalidJSON`, limits, budget ...) that
escape a handler become JSON error responses in one shape:
``{"error": code, "detail": message, ...}``, with the code and the HTTP status each
error class carries (``code``, ``status_hint``; see :mod:`arenapool.aiohttp._responses`).

:func:`add_admin_routes` (or ``setup(admin=AdminConfig(...))``) serves the admin routes
and the dashboard; :func:`governor_middleware` feeds a governor in apps that do not use
``setup``.

Where each part lives: ``_config`` (settings, route stats, app keys), ``_request`` (the
per-request state), ``_middleware`` (setup, middleware, decorator), ``_hotpath`` (the
per-request work, admission under the governor, the body dispatcher and
``json_response``, compiled when built), ``_body`` (the body API), ``_expect`` (the
``Expect`` guard), ``_responses`` (error responses), ``_admin`` (admin routes,
dashboard, load shedding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._adminconfig import AdminConfig
from ._body import DISCONNECT_POLL as DISCONNECT_POLL  # the body path's tunables: importable
from ._body import FIRST_STEP as FIRST_STEP  # here, not in __all__
from ._body import read_body, read_json
from ._config import (
    CONFIG_KEY,
    POOL_KEY,
    ROUTE_STATS_KEY,
    ArenaConfig,
    RouteStats,
    default_pool,
)
from ._hotpath import json_response
from ._middleware import arena_middleware, setup, with_arena
from ._request import ARENA_KEY, get_arena

if TYPE_CHECKING:
    from ._admin import add_admin_routes, governor_middleware

#: Names imported from ``_admin`` on first use: a server that mounts no admin routes
#: never loads them (``benchmarks/startup_rss.py`` measures what a server holds at rest).
_ADMIN_NAMES = ("add_admin_routes", "governor_middleware")

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


def __getattr__(name: str) -> Any:
    if name in _ADMIN_NAMES:
        from . import _admin  # noqa: PLC0415 - on first use

        value = getattr(_admin, name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
