"""What arenapool answers with: JSON responses in fresh bytes, and one error shape.

:func:`~arenapool.aiohttp.json_response` (``_hotpath``, compiled when built) encodes with
orjson into fresh ``bytes``: a response never carries arena memory, because aiohttp
writes it after the middleware has released the arena; :func:`detach_body` copies what
would.

Every error answer has the shape
``{"error": "<code>", "detail": "<what happened and what to do>", ...}``, with extra
fields per code (``position`` for ``invalid_json``, ``limit`` for ``body_too_large``,
``retry_after`` for ``budget_exhausted`` and ``overloaded``). Codes are stable strings
clients may switch on; ``detail`` is for humans. Each error class carries its ``code``
and its HTTP ``status_hint`` (``arenapool._errors``): :func:`answer_error` answers from
those two, and :data:`ERROR_CODES` is derived from them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import payload, web

from .._errors import (
    ArenaLimitExceeded,
    ArenaPoolError,
    BodyTimeout,
    BudgetExhausted,
    CensusFailed,
    CensusRateLimited,
    IncompleteBody,
    InvalidContentEncoding,
    InvalidJSON,
    JSONTooDeep,
    PoolClosedError,
    PoolTimeout,
    UnsupportedMediaType,
)

__all__ = [
    "ADMIN_MARK",
    "ERROR_CODES",
    "answer_error",
    "close_unread",
    "count_status",
    "detach_body",
    "drop_unread",
    "error_answer",
    "error_parts",
    "error_response",
]

log = logging.getLogger("arenapool")

#: The attribute that marks a handler as one of the admin routes (set by ``_admin``,
#: read by the admin guard and by the arena middleware, which neither sheds nor
#: counts admin requests for the governor).
ADMIN_MARK = "_arenapool_admin"

#: Errors whose answer the adapter gives (their ``code`` and ``status_hint``; see
#: ``arenapool._errors``): every one that is not a bug (a 500 is).
ANSWERED: tuple[type[ArenaPoolError], ...] = (
    InvalidJSON,
    IncompleteBody,
    InvalidContentEncoding,
    BodyTimeout,
    ArenaLimitExceeded,
    UnsupportedMediaType,
    CensusRateLimited,
    BudgetExhausted,
    PoolClosedError,
    PoolTimeout,
    CensusFailed,
)

#: code -> HTTP status: the errors' own ``status_hint`` by their ``code``, and the
#: answers that are not errors of the library (admin access, shedding, metrics).
ERROR_CODES: dict[str, int] = {
    **{cls.code: cls.status_hint for cls in ANSWERED},
    "unauthorized": 401,
    "forbidden": 403,
    "internal_error": 500,
    "metrics_unavailable": 501,
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
    headers, body = _error_body(code, detail, retry_after, extra)
    return web.Response(
        body=body,
        status=status if status is not None else ERROR_CODES.get(code, 500),
        content_type="application/json",
        headers=headers,
    )


def _error_body(
    code: str, detail: str, retry_after: float | None, extra: dict[str, Any]
) -> tuple[dict[str, str], bytes]:
    """The headers beside the JSON content type (``Retry-After``) and the JSON body of
    an error answer (:func:`error_response`)."""
    body: dict[str, Any] = {"error": code, "detail": detail}
    headers: dict[str, str] = {}
    if retry_after is not None:
        seconds = max(1, math.ceil(retry_after))
        headers["Retry-After"] = str(seconds)
        body["retry_after"] = seconds
    body.update(extra)
    return headers, orjson.dumps(body)


def answer_error(request: web.Request, exc: ArenaPoolError, counters: Any) -> web.StreamResponse:
    """The JSON answer to an arenapool error that escaped a handler (``exc.code`` and
    ``exc.status_hint``); a 500 (a bug, not the client's doing) is raised again, for
    aiohttp to log and answer."""
    status = exc.status_hint
    if status == 500:
        raise exc
    count_status(counters, status)
    response = error_answer(exc)
    unread = status == 408 or isinstance(exc, InvalidContentEncoding)
    if status == 503 and request.body_exists and not request.content.at_eof():
        unread = True  # a refused burst: reading the rest would cost the served ones CPU
    if unread or (status == 413 and request.body_exists):
        close_unread(request, response)
    return response


def count_status(counters: Any, status: int) -> None:
    """Count an answer of ``status`` in a route's counters (``status_<code>``)."""
    field = f"status_{status}"
    if hasattr(counters, field):
        setattr(counters, field, getattr(counters, field) + 1)


def error_answer(exc: ArenaPoolError) -> web.Response:
    """The documented error shape for ``exc``: its code and status, and the fields of
    its kind (``position`` ..., ``limit``, ``received``/``expected``, ``retry_after``)."""
    status, headers, body = error_parts(exc)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def error_parts(exc: ArenaPoolError) -> tuple[int, dict[str, str], bytes]:
    """:func:`error_answer`'s answer to ``exc`` in parts: its status, the headers beside
    the JSON content type, and the JSON body; for a connection that writes its answer
    itself, without a response object (a refusal on the head, ``_heads``)."""
    extra: dict[str, Any] = {}
    retry_after = None
    if isinstance(exc, InvalidJSON):
        extra = {
            "position": exc.position,
            "line": exc.line,
            "column": exc.column,
            "reason": exc.reason,
        }
        if isinstance(exc, JSONTooDeep):
            extra["limit"] = exc.limit
    elif isinstance(exc, IncompleteBody):
        extra = {"received": exc.received, "expected": exc.expected}
    elif isinstance(exc, ArenaLimitExceeded):
        extra = {"limit": exc.limit}
    elif exc.status_hint in (429, 503):
        retry_after = getattr(exc, "retry_after", None) or 1.0
    headers, body = _error_body(exc.code, exc.message, retry_after, extra)
    return exc.status_hint, headers, body


def close_unread(request: web.Request, response: web.StreamResponse) -> None:
    """The answer was given without reading the body to its end: close the connection
    after it, discarding the rest of the body as it comes, unparsed.

    aiohttp's lingering close would read the rest through its HTTP parser and body
    stream for up to ``lingering_time`` (10 s): 4 MiB per refused body, parsed and
    copied, the CPU a burst's served bodies need (issue 13). Instead the protocol is
    told to close (its ``data_received`` then drops what arrives, one ``recv`` and no
    parsing), the answer goes out with ``Connection: close``, and the connection ends
    when the client closes it, or after ``lingering_time`` at the latest. A client that
    sends its whole body before reading the answer (``requests`` does) still gets the
    answer: the socket is read, so the send finishes, and nothing resets it first.
    """
    response.force_close()
    protocol = request.protocol
    if protocol is None or not hasattr(protocol, "_force_close"):
        return
    drop_unread(protocol, request.transport)


def drop_unread(protocol: Any, transport: asyncio.BaseTransport | None) -> None:
    """Have aiohttp's ``protocol`` drop what arrives, unparsed, and close ``transport``
    when the client does or after ``lingering_time`` at the latest (:func:`close_unread`;
    also the end of a connection refused on its head, ``arenapool.aiohttp._heads``)."""
    protocol._force_close = True  # no lingering read; arriving bytes are dropped
    if transport is None or transport.is_closing():
        return
    # the body stream may have paused the socket (its buffer at the high-water mark);
    # nobody reads that stream now, so nothing else would resume it
    resume = getattr(protocol, "resume_reading", None)
    if resume is not None:
        resume()
    linger = getattr(protocol, "_lingering_time", 10.0) or 10.0
    try:  # the timer must not keep a closed connection alive for `linger` seconds
        ref: Callable[[], asyncio.BaseTransport | None] = weakref.ref(transport)
    except TypeError:  # a transport without weak references (uvloop's)
        ref = functools.partial(_same, transport)
    asyncio.get_running_loop().call_later(linger, _close_if_open, ref)


def _same(transport: asyncio.BaseTransport) -> asyncio.BaseTransport:
    return transport


def _close_if_open(ref: Callable[[], asyncio.BaseTransport | None]) -> None:
    transport = ref()
    if transport is not None and not transport.is_closing():
        transport.close()


def detach_body(response: web.StreamResponse, route: str) -> None:
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
