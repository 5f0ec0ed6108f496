"""What arenapool answers with: JSON responses in fresh bytes, and one error shape.

:func:`json_response` encodes with orjson into fresh ``bytes``: a response never carries
arena memory, because aiohttp writes it after the middleware has released the arena.

Every error answer has the shape
``{"error": "<code>", "detail": "<what happened and what to do>", ...}``, with extra
fields per code (``position`` for ``invalid_json``, ``limit`` for ``body_too_large``,
``retry_after`` for ``budget_exhausted`` and ``overloaded``). Codes are stable strings
clients may switch on; ``detail`` is for humans. :data:`ERROR_CODES` maps each code to
its HTTP status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .._json import encode

__all__ = ["ADMIN_MARK", "ERROR_CODES", "error_response", "json_response"]

#: The attribute that marks a handler as one of the admin routes (set by ``_admin``,
#: read by the admin guard and by the arena middleware, which neither sheds nor
#: counts admin requests for the governor).
ADMIN_MARK = "_arenapool_admin"

#: code -> HTTP status
ERROR_CODES: dict[str, int] = {
    "invalid_json": 400,
    "incomplete_body": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "body_timeout": 408,
    "body_too_large": 413,
    "rate_limited": 429,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "census_failed": 500,
    "metrics_unavailable": 501,
    "budget_exhausted": 503,
    "overloaded": 503,
}


def error_response(
    code: str,
    detail: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    **extra: Any,
) -> web.Response:
    """Build an error response in the documented shape.

    ``retry_after`` (seconds) sets both the ``Retry-After`` header (whole seconds,
    at least 1) and a ``retry_after`` field in the body.
    """
    body: dict[str, Any] = {"error": code, "detail": detail}
    headers: dict[str, str] = {}
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        headers["Retry-After"] = str(seconds)
        body["retry_after"] = seconds
    body.update(extra)
    return web.Response(
        body=orjson.dumps(body),
        status=status if status is not None else ERROR_CODES.get(code, 500),
        content_type="application/json",
        headers=headers,
    )


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
