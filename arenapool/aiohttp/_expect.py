"""``Expect: 100-continue`` answered with 413 when the declared body is over the limit.

aiohttp answers ``Expect`` with the route's *expect handler* before any middleware
runs (``web.Application._handle``), so a check in the middleware comes after the
``100 Continue`` and after the client has started to send. The check is therefore put
where aiohttp consults it: each route's expect handler is wrapped so that a declared
``Content-Length`` above the route's limit (and no content coding: a coded body's
length is its compressed size) is answered at once with 413 ``body_too_large`` and the
connection closed; anything else goes to the route's own expect handler (by default
aiohttp's, which sends ``100 Continue``).

``setup()`` wraps every route of the app when it starts (routes are fixed by then);
``with_arena`` without ``setup`` wraps its own route on its first request (so from the
second request on), since a decorator cannot reach the app before that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._responses import error_response

__all__ = ["guard_expect", "install_expect_guards"]

_MARK = "_arenapool_expect_limit"


def install_expect_guards(app: web.Application, limit: int) -> None:
    """Wrap the expect handler of every route of ``app`` (the app's ``limit``, or the
    handler's own ``@with_arena(limit=...)``)."""
    for route in app.router.routes():
        guard_expect(route, limit)


def guard_expect(route: Any, limit: int) -> None:
    """Wrap ``route``'s expect handler once (a handler's own limit wins over ``limit``)."""
    original = getattr(route, "_expect_handler", None)
    if original is None or getattr(original, _MARK, None) is not None:
        return
    own = getattr(getattr(route, "handler", None), "__arenapool_limit__", None)
    route_limit = own if isinstance(own, int) else limit
    route._expect_handler = _guard(original, route_limit)


def _guard(
    original: Callable[[web.Request], Awaitable[web.StreamResponse | None]], limit: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
        declared = request.content_length
        if declared is not None and declared > limit and "Content-Encoding" not in request.headers:
            from ._hotpath import too_large  # noqa: PLC0415 - a cycle at import time

            exc = too_large(declared, limit, declared=True)
            response = error_response(exc.code, exc.message, limit=limit)
            response.force_close()  # the body is never read: the connection cannot go on
            return response
        return await original(request)

    setattr(expect_within_limit, _MARK, limit)
    return expect_within_limit
