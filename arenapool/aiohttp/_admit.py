"""Admission under the governor, written once: the middleware and
``governor_middleware`` both ask :func:`admit`.

While the governor sheds (memory above its hard watermark), requests that carry a body
are refused with 503 ``overloaded`` (``_admin.shed_response``); bodiless requests still
pass (they cost little and let health checks through). A request admitted is counted in
flight, for the governor's idle detection, until ``governor.note_request_end()``.
"""

from __future__ import annotations

from aiohttp import web

from .._governor import Governor

__all__ = ["admit", "has_body"]


def has_body(request: web.Request) -> bool:
    """True if ``request`` carries a body (``Content-Length > 0`` or chunked)."""
    length = request.content_length
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def admit(governor: Governor, request: web.Request) -> bool:
    """Serve ``request``? ``False`` while the governor sheds and it carries a body;
    ``True`` counts it in flight (the caller then calls ``note_request_end()``)."""
    if governor.shedding and has_body(request):
        return False
    governor.note_request_start()
    return True
