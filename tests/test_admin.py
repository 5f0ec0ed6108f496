"""Admin routes: who may call them, and what /stats, /metrics, /census and /trim answer."""

from __future__ import annotations

import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from arenapool import SlabPool, _ext
from arenapool._governor import Governor, GovernorConfig
from arenapool.aiohttp import AdminConfig, add_admin_routes
from arenapool.aiohttp._admin import AdminConfigError, peer_allowed

ServerFactory = Callable[..., Awaitable[TestServer]]
TOKEN = "s3cret-token"


def admin_app(config: AdminConfig, **kwargs: Any) -> web.Application:
    app = web.Application()
    add_admin_routes(app, config, **kwargs)
    return app


async def request(
    server: TestServer,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    local_addr: tuple[str, int] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request from a fresh client (optionally bound to ``local_addr``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=local_addr)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, f"http://127.0.0.1:{server.port}{path}", headers=headers, allow_redirects=False
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_missing_or_wrong_token_is_401(aiohttp_server: ServerFactory) -> None:
    """Without the token, or with a wrong one, every admin route answers 401 unauthorized."""
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN)))
    for method, path in [("GET", "/_arenapool/stats"), ("POST", "/_arenapool/trim")]:
        for token in (None, "wrong"):
            status, headers, body = await request(server, method, path, token=token)
            assert 401 == status
            assert b'"error":"unauthorized"' in body
            assert 'Bearer realm="arenapool"' == headers["WWW-Authenticate"]


async def test_token_as_header_or_query(aiohttp_server: ServerFactory) -> None:
    """The token is accepted as a Bearer header or as ?token= (for the dashboard page)."""
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN)))
    assert 200 == (await request(server, "GET", "/_arenapool/stats"))[0]
    status, _, _ = await request(server, "GET", f"/_arenapool/stats?token={TOKEN}", token=None)
    assert 200 == status


async def test_peer_outside_allowed_networks_is_403(aiohttp_server: ServerFactory) -> None:
    """A peer outside the allowed networks is refused with 403, even with the token.

    This machine has no second interface we may use, so the server allows only
    127.0.0.1/32 and the client connects from another loopback address, 127.0.0.2:
    a real socket peer outside the allowed set, checked through the real path.
    """
    config = AdminConfig(token=TOKEN, allowed_networks=("127.0.0.1/32",))
    server = await aiohttp_server(admin_app(config))
    status, _, body = await request(server, "GET", "/_arenapool/stats", local_addr=("127.0.0.2", 0))
    assert 403 == status
    assert b'"error":"forbidden"' in body
    assert b"127.0.0.2" in body
    assert 200 == (await request(server, "GET", "/_arenapool/stats"))[0]


async def test_allow_remote_lifts_the_peer_check(aiohttp_server: ServerFactory) -> None:
    """allow_remote=True serves any peer that carries the token."""
    config = AdminConfig(token=TOKEN, allow_remote=True, allowed_networks=("127.0.0.1/32",))
    server = await aiohttp_server(admin_app(config))
    status, _, _ = await request(server, "GET", "/_arenapool/stats", local_addr=("127.0.0.2", 0))
    assert 200 == status


def test_peer_check_defaults_to_loopback() -> None:
    """Loopback (v4, v6, v4-mapped) and Unix sockets pass by default; anything else fails."""
    assert peer_allowed("127.0.0.1")
    assert peer_allowed("127.3.2.1")
    assert peer_allowed("::1")
    assert peer_allowed("::ffff:127.0.0.1")
    assert peer_allowed(None)
    assert not peer_allowed("192.0.2.7")
    assert not peer_allowed("::ffff:192.0.2.7")
    assert not peer_allowed("fd00::2")
    assert not peer_allowed("not-an-address")


def test_remote_without_token_is_refused() -> None:
    """Exposing the admin routes remotely without a token is a configuration error."""
    with pytest.raises(AdminConfigError, match="allow_remote=True needs a token"):
        AdminConfig(token=None, allow_remote=True)
    with pytest.raises(AdminConfigError, match="prefix must be a path"):
        AdminConfig(token=TOKEN, prefix="admin")


async def test_stats_includes_pools_governor_and_routes(aiohttp_server: ServerFactory) -> None:
    """/stats is the snapshot plus the governor's stats, the per-route table and census state."""
    pool = SlabPool(budget="8MiB", name="admin-test", decay=None)
    try:
        with pool.arena() as arena:
            arena.alloc(10_000)
            governor = Governor(GovernorConfig(use_cgroup=False))
            routes = {"/upload": {"requests": 7, "status_413": 2}}
            app = admin_app(
                AdminConfig(token=TOKEN), pools=[pool], governor=governor, routes=lambda: routes
            )
            server = await aiohttp_server(app)
            status, headers, body = await request(server, "GET", "/_arenapool/stats")
    finally:
        pool.close()
    assert 200 == status
    assert "no-store" == headers["Cache-Control"]
    stats = json.loads(body)
    assert ["admin-test"] == [p["name"] for p in stats["slab_pools"]]
    assert stats["slab_lent_bytes"] >= 10_000
    assert routes == stats["routes"]
    assert stats["governor"]["running"] is False
    assert {"running": False, "min_interval": 30.0, "last": None} == stats["census"]


async def test_metrics_parse_as_prometheus_text(aiohttp_server: ServerFactory) -> None:
    """/metrics is Prometheus text that prometheus_client's parser reads back."""
    governor = Governor(GovernorConfig(use_cgroup=False))
    routes = {"/upload": {"requests": 7, "status_413": 2, "arena_high_water": 4096}}
    app = admin_app(AdminConfig(token=TOKEN), governor=governor, routes=lambda: routes)
    server = await aiohttp_server(app)
    status, headers, body = await request(server, "GET", "/_arenapool/metrics")
    assert 200 == status
    assert headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["arenapool_rss_bytes"].samples[0].value > 0
    assert "arenapool_governor_trims" in families
    errors = families["arenapool_route_errors"].samples
    assert 2 == next(s.value for s in errors if s.labels == {"route": "/upload", "status": "413"})
    # a second scrape reuses the app's private registry
    assert 200 == (await request(server, "GET", "/_arenapool/metrics"))[0]


async def test_census_route_runs_then_rate_limits(aiohttp_server: ServerFactory) -> None:
    """POST /census answers a census; a second one inside the interval gets 429 + Retry-After."""
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN, census_min_interval=60)))
    status, _, body = await request(server, "POST", "/_arenapool/census")
    assert 200 == status
    result = json.loads(body)
    assert "fork" == result["mode"]
    assert result["top_by_size"]
    status, headers, body = await request(server, "POST", "/_arenapool/census")
    assert 429 == status
    # the interval runs from the census's start: what is left of it after the census
    # (seconds on a loaded machine) and the second request, rounded up
    assert 60 - result["seconds"] - 2 <= int(headers["Retry-After"]) <= 60
    assert b'"error":"rate_limited"' in body
    stats = json.loads((await request(server, "GET", "/_arenapool/stats"))[2])
    assert result == stats["census"]["last"]


async def test_trim_route_goes_through_the_governor(aiohttp_server: ServerFactory) -> None:
    """POST /trim trims now, answers the RSS before/after, and the governor records it."""
    governor = Governor(GovernorConfig(use_cgroup=False))
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN), governor=governor))
    status, _, body = await request(server, "POST", "/_arenapool/trim")
    assert 200 == status
    result = json.loads(body)
    assert {
        "rss_before",
        "rss_after",
        "freed",
        "seconds",
        "malloc_trim",
        "pools",
        "pymalloc",
        "arenas",
        "blocks",
        "heap_before",
        "heap_after",
    } == set(result)
    assert 1 == governor.stats()["trims"]
    assert "admin" == governor.stats()["actions"][-1]["reason"]


def fragment_pymalloc() -> list[str]:
    """Make three hundred thousand small objects and keep one in 300: empty pools
    scattered through arenas that stay (what a load leaves behind)."""
    junk = [str(i) * 4 for i in range(300_000)]
    keep = junk[::300]
    del junk
    gc.collect()
    return keep


@pytest.mark.parametrize("release", [True, False])
async def test_governor_trims_give_back_pymalloc_pools(
    aiohttp_server: ServerFactory, release: bool
) -> None:
    """A trim through the governor also gives back pymalloc's empty pools (compiled
    build), unless ``release_pymalloc=False``; its stats say which and the bytes."""
    governor = Governor(GovernorConfig(use_cgroup=False, release_pymalloc=release))
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN), governor=governor))
    keep = fragment_pymalloc()
    status, _, body = await request(server, "POST", "/_arenapool/trim")
    assert 200 == status
    released = json.loads(body)["pymalloc"]
    stats = governor.stats()
    assert all(s == s[: len(s) // 4] * 4 for s in keep)
    if not release:
        assert (0, "off", 0) == (
            released,
            stats["pymalloc_release"],
            stats["pymalloc_released_bytes"],
        )
    elif _ext.NO_EXTENSIONS:
        assert 0 == released
        assert "ARENAPOOL_NO_EXTENSIONS" in stats["pymalloc_release"]
    else:
        assert released >= 1024 * 1024
        assert ("on", released) == (stats["pymalloc_release"], stats["pymalloc_released_bytes"])


async def test_trim_route_without_governor(aiohttp_server: ServerFactory) -> None:
    """Without a governor, POST /trim still trims the given pools and the C heap."""
    pool = SlabPool(budget="8MiB", name="trim-test", decay=None)
    try:
        with pool.arena() as arena:
            view = arena.alloc(1024 * 1024)
            view[:] = b"x" * len(view)
        server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN), pools=[pool]))
        status, _, body = await request(server, "POST", "/_arenapool/trim")
    finally:
        pool.close()
    assert 200 == status
    assert json.loads(body)["pools"]["trim-test"] >= 1024 * 1024


async def test_prefix_redirects_to_dashboard_keeping_query(aiohttp_server: ServerFactory) -> None:
    """GET {prefix} redirects (308) to {prefix}/ and keeps the token query."""
    server = await aiohttp_server(admin_app(AdminConfig(token=TOKEN, prefix="/ops/")))
    status, headers, _ = await request(server, "GET", f"/ops?token={TOKEN}", token=None)
    assert 308 == status
    assert f"/ops/?token={TOKEN}" == headers["Location"]
