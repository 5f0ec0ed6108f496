"""The aiohttp face of the memory layer: admin routes, the dashboard, load shedding.

Theory of operation
-------------------
``add_admin_routes`` mounts five routes under ``prefix`` (default ``/_arenapool``)::

    GET  {prefix}/         the dashboard (static HTML that polls /stats)
    GET  {prefix}/stats    JSON: a snapshot, the governor's stats, the last census
    GET  {prefix}/metrics  Prometheus text from a private CollectorRegistry
    POST {prefix}/census   run a heap census (rate limited, never stalls the loop)
    POST {prefix}/trim     give free memory back to the OS now

Every admin handler passes the same gate, in this order: the socket peer must be in
``allowed_networks`` (loopback by default; ``allow_remote=True`` lifts it) or the
answer is 403 ``forbidden``; then, when a token is configured, the request must carry
it as ``Authorization: Bearer <token>`` or ``?token=<token>`` or the answer is 401
``unauthorized``. The peer is the transport's, never a forwarded header: behind a
reverse proxy on the same host every client looks local, so set a token there.

Admin handlers carry a marker attribute; :func:`governor_middleware` reads it from the
matched route so admin traffic is neither shed nor counted as load (a dashboard
polling every second must not keep the server from ever looking idle).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from .._census import Census
from .._errors import ArenaPoolError, CensusFailed, CensusRateLimited
from .._governor import Governor, trim_now
from .._memory import RoutesSource, snapshot
from .._units import format_size
from ._responses import ADMIN_MARK, error_response

if TYPE_CHECKING:
    from .._slabpool import SlabPool

__all__ = [
    "AdminConfig",
    "AdminConfigError",
    "add_admin_routes",
    "governor_middleware",
    "is_admin_request",
    "peer_allowed",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


class AdminConfigError(ArenaPoolError, ValueError):
    """The admin configuration is unsafe or malformed."""


@dataclass(frozen=True)
class AdminConfig:
    """How the admin routes are exposed.

    ``token=None`` serves without a token, which is allowed only for loopback peers
    (``allow_remote=True`` then raises). ``allowed_networks`` lists the peers served
    while ``allow_remote`` is off (loopback by default).
    """

    token: str | None
    allow_remote: bool = False
    prefix: str = "/_arenapool"
    census_min_interval: float = 30.0
    census_top: int = 25
    census_timeout: float = 120.0
    allowed_networks: Sequence[str] = LOOPBACK

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix == "/":
            msg = f"prefix must be a path like '/_arenapool', got {self.prefix!r}"
            raise AdminConfigError(msg)
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))
        if self.token is not None and not self.token:
            msg = "token must be a non-empty string, or None for no token (loopback only)"
            raise AdminConfigError(msg)
        if self.allow_remote and self.token is None:
            msg = "allow_remote=True needs a token: remote admin access without one is refused"
            raise AdminConfigError(msg)
        try:
            nets = tuple(ipaddress.ip_network(n) for n in self.allowed_networks)
        except ValueError as exc:
            msg = f"allowed_networks has a bad network: {exc}"
            raise AdminConfigError(msg) from None
        object.__setattr__(self, "allowed_networks", tuple(str(n) for n in nets))


def peer_allowed(peer: str | None, networks: Iterable[str] = LOOPBACK) -> bool:
    """True if the socket peer address ``peer`` lies in one of ``networks``.

    An IPv4-mapped IPv6 peer (``::ffff:127.0.0.1``) is judged as its IPv4 address. A
    peer that is not an IP address (a Unix socket: ``None`` or ``""``) is local and
    allowed; the socket file's permissions guard it.
    """
    if not peer:
        return True
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(net) for net in networks)


def _peer_of(request: web.Request) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    peername = transport.get_extra_info("peername")
    if isinstance(peername, (tuple, list)) and peername:
        return str(peername[0])
    return None


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def _gate(request: web.Request, config: AdminConfig) -> web.Response | None:
    """The 403/401 answer for a request the admin routes must refuse, else None."""
    if not config.allow_remote:
        peer = _peer_of(request)
        if not peer_allowed(peer, config.allowed_networks):
            return error_response(
                "forbidden",
                f"admin routes serve only {', '.join(config.allowed_networks)}; peer {peer!r} "
                "is outside them (set allow_remote=True with a token to widen access)",
            )
    if config.token is not None:
        given = _token_of(request)
        if given is None or not hmac.compare_digest(given.encode(), config.token.encode()):
            what = "a wrong token" if given is not None else "no token"
            response = error_response(
                "unauthorized",
                f"admin routes need the configured token; the request carried {what}: send "
                "'Authorization: Bearer <token>' or '?token=<token>'",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="arenapool"'
            return response
    return None


def is_admin_request(request: web.Request) -> bool:
    """True if ``request`` matched one of the admin routes."""
    handler = getattr(request.match_info.route, "handler", None)
    return bool(getattr(handler, ADMIN_MARK, False))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@lru_cache(maxsize=1)
def _dashboard() -> tuple[bytes, str]:
    """The dashboard page and a Content-Security-Policy allowing only its own code."""
    html = (resources.files("arenapool.aiohttp") / "static" / "dashboard.html").read_bytes()
    hashes = {
        kind: " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
            for body in re.findall(
                rb"<" + kind.encode() + rb">(.*?)</" + kind.encode() + rb">", html, re.S
            )
        )
        for kind in ("script", "style")
    }
    csp = (
        "default-src 'none'; "
        f"script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp


class _Admin:
    """The admin routes' shared state; one per ``add_admin_routes`` call."""

    def __init__(
        self,
        config: AdminConfig,
        pools: Iterable[SlabPool] | Callable[[], Iterable[SlabPool]] | None,
        governor: Governor | None,
        routes: RoutesSource | None,
    ) -> None:
        self.config = config
        self.pools = pools
        self.governor = governor
        self.routes = routes
        self.census = Census(
            min_interval=config.census_min_interval,
            top=config.census_top,
            timeout=config.census_timeout,
        )
        self._registry: Any = None

    def _slab_pools(self) -> list[SlabPool] | None:
        if self.pools is None:
            return None
        return list(self.pools() if callable(self.pools) else self.pools)

    def guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = _gate(request, self.config)
            if refusal is not None:
                return refusal
            return await handler(request)

        setattr(guarded, ADMIN_MARK, True)
        guarded.__name__ = handler.__name__
        return guarded

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        html, csp = _dashboard()
        return web.Response(
            body=html,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": csp,
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def to_dashboard(self, request: web.Request) -> web.StreamResponse:
        location = self.config.prefix + "/"
        if request.query_string:
            location += "?" + request.query_string
        raise web.HTTPPermanentRedirect(location)

    def stats_body(self) -> dict[str, Any]:
        reading = snapshot(slab_pools=self._slab_pools(), routes=self.routes)
        body = reading.as_dict()
        body["governor"] = None if self.governor is None else self.governor.stats()
        body["census"] = {
            "running": self.census.running,
            "min_interval": self.census.min_interval,
            "last": self.census.last,
        }
        return body

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return _json(self.stats_body())

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            from prometheus_client.exposition import choose_encoder  # noqa: PLC0415 - optional

            from ..metrics import register  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            return error_response("metrics_unavailable", str(exc), status=501)
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415 - optional

            self._registry = CollectorRegistry(auto_describe=False)
            register(
                self._registry,
                slab_pools=self.pools,
                governor=self.governor,
                routes=self.routes,
            )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encoder(self._registry),
            headers={"Content-Type": content_type, "Cache-Control": "no-store"},
        )

    async def run_census(self, request: web.Request) -> web.StreamResponse:
        try:
            result = await self.census.run()
        except CensusRateLimited as exc:
            return error_response(
                "rate_limited", exc.message, status=429, retry_after=exc.retry_after
            )
        except CensusFailed as exc:
            return error_response("census_failed", exc.message, status=500)
        return _json(result)

    async def trim(self, request: web.Request) -> web.StreamResponse:
        if self.governor is not None:
            result = await self.governor.trim(reason="admin")
        else:
            result = await trim_now(self.pools)
        return _json(result)


def add_admin_routes(
    app: web.Application,
    config: AdminConfig,
    *,
    pools: Iterable[SlabPool] | Callable[[], Iterable[SlabPool]] | None = None,
    governor: Governor | None = None,
    routes: RoutesSource | None = None,
) -> None:
    """Mount the admin routes and the dashboard on ``app`` under ``config.prefix``.

    ``pools`` are the slab pools to show and trim (default: every live pool),
    ``governor`` adds its stats and makes ``/trim`` go through it, ``routes`` is the
    aiohttp adapter's per-route counters callable.
    """
    admin = _Admin(config, pools, governor, routes)
    prefix = config.prefix
    app.router.add_get(prefix, admin.guard(admin.to_dashboard), allow_head=False)
    app.router.add_get(prefix + "/", admin.guard(admin.dashboard))
    app.router.add_get(prefix + "/stats", admin.guard(admin.stats))
    app.router.add_get(prefix + "/metrics", admin.guard(admin.metrics))
    app.router.add_post(prefix + "/census", admin.guard(admin.run_census))
    app.router.add_post(prefix + "/trim", admin.guard(admin.trim))


def has_body(request: web.Request) -> bool:
    """True if ``request`` carries a body (``Content-Length > 0`` or chunked)."""
    length = request.content_length
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def shed_response(governor: Governor) -> web.Response:
    """The 503 ``overloaded`` answer while ``governor.shedding`` (counts the shed)."""
    governor.note_shed()
    rss = governor.last_rss
    hard = governor.hard_limit
    where = (
        f" (RSS {format_size(rss)}, hard watermark {format_size(hard)})"
        if rss is not None and hard is not None
        else ""
    )
    return error_response(
        "overloaded",
        f"the server is shedding load while its memory is high{where}; "
        f"retry after {governor.retry_after:g} s",
        retry_after=governor.retry_after,
    )


def governor_middleware(governor: Governor) -> Middleware:
    """An aiohttp middleware that feeds ``governor`` and sheds while it says so.

    Counts requests in flight (for the governor's idle detection) and, while
    ``governor.shedding``, answers requests that carry a body (``Content-Length > 0``
    or chunked) with 503 ``overloaded`` and ``Retry-After``. Bodiless requests still
    pass (they cost little and let health checks through); admin routes are never
    shed nor counted.
    """

    @web.middleware
    async def arenapool_governor(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_admin_request(request):
            return await handler(request)
        if governor.shedding and has_body(request):
            return shed_response(governor)
        governor.note_request_start()
        try:
            return await handler(request)
        finally:
            governor.note_request_end()

    return arenapool_governor
