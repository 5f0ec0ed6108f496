"""The aiohttp face of the memory layer: admin routes, the dashboard, load shedding.

Theory of operation
-------------------
``add_admin_routes`` mounts seven routes under ``prefix`` (default ``/_arenapool``)::

    GET  {prefix}/         the dashboard (static HTML that polls /stats and /history)
    GET  {prefix}/stats    JSON: a snapshot with its breakdown, the governor's stats,
                           the verdict, the last census and the last trace window
    GET  {prefix}/history  JSON: the breakdown history (?since=<unix time>) and the
                           verdict (?window=<seconds>)
    GET  {prefix}/metrics  Prometheus text from a private CollectorRegistry
    POST {prefix}/census   run a heap census (rate limited, never stalls the loop)
    POST {prefix}/trace    tracemalloc for ?seconds=N with ?frames=K, then off again
                           (rate limited); answers the top growth sites
    POST {prefix}/trim     give free memory back to the OS now

A :class:`~arenapool._monitor.MemoryMonitor` samples the breakdown every
``history_interval`` seconds in its own thread while the app runs (started and
stopped through ``app.cleanup_ctx``), so the history is there when the dashboard
opens. ``/stats`` takes its snapshot in a worker thread: the breakdown's ``smaps``
walk never runs on the loop.

:func:`shed_response` logs one WARNING per shedding episode (the first request shed
in it) with the breakdown and the routes with the most arena memory, so the log says
what the memory was made of when the server started turning work away.

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

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from .._adminconfig import LOOPBACK, AdminConfig, AdminConfigError
from .._breakdown import read_breakdown
from .._errors import CensusFailed, CensusRateLimited
from .._governor import Governor, trim_now
from .._memory import RoutesSource, snapshot
from .._registry import slab_pools as all_slab_pools
from .._units import format_size
from ._config import ROUTE_STATS_KEY
from ._hotpath import refused
from ._responses import ADMIN_MARK, close_unread, error_response

if TYPE_CHECKING:
    from .._slabpool import SlabPool
    from .._trace import TraceRateLimited, TraceUnavailable

__all__ = [
    "AdminConfig",
    "AdminConfigError",
    "add_admin_routes",
    "governor_middleware",
    "is_admin_request",
    "peer_allowed",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("arenapool")


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


async def _json_of_limited_run(
    run: Awaitable[Any],
    limited: type[TraceRateLimited | CensusRateLimited],
    failed: type[TraceUnavailable | CensusFailed],
    failed_code: str,
    failed_status: int,
) -> web.Response:
    """``run``'s result as JSON; 429 ``rate_limited`` (with Retry-After) when it raises
    ``limited``, ``failed_status`` ``failed_code`` when it raises ``failed``."""
    try:
        result = await run
    except limited as exc:
        return error_response("rate_limited", exc.message, status=429, retry_after=exc.retry_after)
    except failed as exc:
        return error_response(failed_code, exc.message, status=failed_status)
    return _json(result)


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
        # imported here: a server without admin routes does not load the census, the
        # monitor and tracemalloc (their code is resident memory too)
        from .._census import Census  # noqa: PLC0415
        from .._monitor import MemoryMonitor  # noqa: PLC0415
        from .._trace import Tracer  # noqa: PLC0415

        self.census = Census(
            min_interval=config.census_min_interval,
            top=config.census_top,
            timeout=config.census_timeout,
        )
        self.monitor = MemoryMonitor(
            interval=config.history_interval,
            pools=self._monitor_pools,
            window=config.verdict_window,
            fine_points=config.history_points,
        )
        self.tracer = Tracer(
            min_interval=config.trace_min_interval,
            max_seconds=config.trace_max_seconds,
            max_frames=config.trace_max_frames,
        )
        self._registry: Any = None

    def _monitor_pools(self) -> list[SlabPool]:
        pools = self._slab_pools()
        return all_slab_pools() if pools is None else pools

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """Sample memory while the app runs (``app.cleanup_ctx``); one reading at once,
        off the loop, so the history is never empty once the server is up."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.monitor.sample)
        self.monitor.start()
        try:
            yield
        finally:
            await loop.run_in_executor(None, self.monitor.stop)

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
        """The /stats document; takes a snapshot with its breakdown (call off the loop)."""
        reading = snapshot(slab_pools=self._slab_pools(), routes=self.routes)
        body = reading.as_dict()
        body["governor"] = None if self.governor is None else self.governor.stats()
        body["census"] = {
            "running": self.census.running,
            "min_interval": self.census.min_interval,
            "last": self.census.last,
        }
        monitor = self.monitor.stats()
        monitor.pop("breakdown", None)  # the snapshot's own is fresher
        body["monitor"] = monitor
        body["trace"] = {
            "running": self.tracer.running,
            "min_interval": self.tracer.min_interval,
            "last": self.tracer.last,
        }
        return body

    async def stats(self, request: web.Request) -> web.StreamResponse:
        # the breakdown walks /proc/self/smaps (milliseconds): not on the loop
        body = await asyncio.get_running_loop().run_in_executor(None, self.stats_body)
        return _json(body)

    async def history(self, request: web.Request) -> web.StreamResponse:
        try:
            since = float(request.query["since"]) if "since" in request.query else None
            window = float(request.query.get("window", self.monitor.window))
        except ValueError:
            return error_response(
                "invalid_parameter",
                "since= is a Unix time and window= seconds, both numbers; got "
                f"since={request.query.get('since')!r} window={request.query.get('window')!r}",
                status=400,
            )
        body = self.monitor.history.query(since=since)
        body["interval"] = self.monitor.interval
        body["verdict"] = self.monitor.verdict(window).as_dict()
        return _json(body)

    async def trace(self, request: web.Request) -> web.StreamResponse:
        try:
            seconds = float(request.query.get("seconds", "10"))
            frames = int(request.query.get("frames", "1"))
        except ValueError:
            return error_response(
                "invalid_parameter",
                "seconds= and frames= are numbers (a trace window of ?seconds=10&frames=5); "
                f"got seconds={request.query.get('seconds')!r} "
                f"frames={request.query.get('frames')!r}",
                status=400,
            )
        from .._trace import TraceRateLimited, TraceUnavailable  # noqa: PLC0415

        return await _json_of_limited_run(
            self.tracer.run(seconds, frames),
            TraceRateLimited,
            TraceUnavailable,
            "trace_unavailable",
            409,
        )

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
                monitor=self.monitor,
                census=self.census,
            )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # a scrape takes a snapshot with its breakdown (milliseconds): not on the loop
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, self._registry)
        return web.Response(
            body=body,
            headers={"Content-Type": content_type, "Cache-Control": "no-store"},
        )

    async def run_census(self, request: web.Request) -> web.StreamResponse:
        return await _json_of_limited_run(
            self.census.run(), CensusRateLimited, CensusFailed, "census_failed", 500
        )

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
    app.router.add_get(prefix + "/history", admin.guard(admin.history))
    app.router.add_get(prefix + "/metrics", admin.guard(admin.metrics))
    app.router.add_post(prefix + "/census", admin.guard(admin.run_census))
    app.router.add_post(prefix + "/trace", admin.guard(admin.trace))
    app.router.add_post(prefix + "/trim", admin.guard(admin.trim))
    app.cleanup_ctx.append(admin.lifecycle)


#: governor -> the shedding episode already dumped to the log
_dumped: weakref.WeakKeyDictionary[Governor, int] = weakref.WeakKeyDictionary()


def _episode(governor: Governor) -> int:
    episodes = getattr(governor, "shed_episodes", None)
    if episodes is None:
        episodes = governor.stats().get("shed_episodes", 0)
    return int(episodes)


def top_routes(routes: Any, *, top: int = 5) -> list[tuple[str, int, int]]:
    """``[(route, arena high water, requests)]``: the routes with the most arena memory."""
    if routes is None:
        return []
    table = routes() if callable(routes) else routes
    ranked = sorted(table.items(), key=lambda kv: (-int(kv[1].get("arena_high_water", 0)), kv[0]))
    return [
        (name, int(row.get("arena_high_water", 0)), int(row.get("requests", 0)))
        for name, row in ranked[:top]
    ]


def dump_shedding(governor: Governor, routes: Any) -> None:
    """One WARNING: RSS, the breakdown, and the routes with the most arena memory."""
    reading = read_breakdown(all_slab_pools())
    parts = ", ".join(f"{k} {format_size(v)}" for k, v in reading.parts.items() if v)
    busiest = "; ".join(
        f"{name} high water {format_size(high)} over {n} requests"
        for name, high, n in top_routes(routes)
    )
    log.warning(
        "arenapool: shedding (episode %d): RSS %s = %s; top routes by arena memory: %s",
        _episode(governor),
        format_size(reading.rss),
        parts,
        busiest or "none recorded",
    )


def shed_response(governor: Governor, request: web.Request | None = None) -> web.Response:
    """The 503 ``overloaded`` answer while ``governor.shedding`` (counts the shed).

    A request whose body is not read yet is answered without reading it
    (:func:`~arenapool.aiohttp._responses.close_unread`).

    The first shed of each episode also logs :func:`dump_shedding`'s line (the
    breakdown costs a few milliseconds, once per episode).
    """
    governor.note_shed()
    episode = _episode(governor)
    if _dumped.get(governor) != episode:
        _dumped[governor] = episode
        stats = request.app.get(ROUTE_STATS_KEY) if request is not None else None
        dump_shedding(governor, None if stats is None else stats.snapshot)
    rss = governor.last_rss
    hard = governor.hard_limit
    where = (
        f" (RSS {format_size(rss)}, hard watermark {format_size(hard)})"
        if rss is not None and hard is not None
        else ""
    )
    response = error_response(
        "overloaded",
        f"the server is shedding load while its memory is high{where}; "
        f"retry after {governor.retry_after:g} s",
        retry_after=governor.retry_after,
    )
    if request is not None and request.body_exists and not request.content.at_eof():
        close_unread(request, response)  # refused unread: do not read the rest
    return response


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
        if refused(governor, request):  # the one admission policy (_hotpath.refused)
            return shed_response(governor, request)
        governor.note_request_start()
        try:
            return await handler(request)
        finally:
            governor.note_request_end()

    return arenapool_governor
