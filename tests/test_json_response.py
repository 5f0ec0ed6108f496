"""``json_response`` and the per-route serving against a real server on 127.0.0.1: the
answer's keywords, msgspec Structs, and the route stats of routes served directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from arenapool import SlabPool
from arenapool._governor import Governor, GovernorConfig
from arenapool.aiohttp import ROUTE_STATS_KEY, json_response, read_json, setup

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class Point(msgspec.Struct):
    x: int
    y: int


async def test_json_response_keywords_and_structs(aiohttp_client: ClientFactory) -> None:
    """Status, reason, headers and orjson options reach the answer; Structs encode."""

    async def plain(request: web.Request) -> web.Response:
        return json_response({"b": 1, "a": [Point(1, 2)]})

    async def custom(request: web.Request) -> web.Response:
        return json_response(
            {"b": 1, "a": 2},
            status=201,
            reason="Made",
            headers={"X-Kind": "custom"},
            option=orjson.OPT_SORT_KEYS,
        )

    app = web.Application()
    setup(app, pool=SlabPool("4MiB"))
    app.router.add_get("/plain", plain)
    app.router.add_get("/custom", custom)
    client = await aiohttp_client(app)

    resp = await client.get("/plain")
    assert (200, "application/json") == (resp.status, resp.content_type)
    assert b'{"b":1,"a":[{"x":1,"y":2}]}' == await resp.read()

    resp = await client.get("/custom")
    assert (201, "Made", "custom") == (resp.status, resp.reason, resp.headers["X-Kind"])
    assert "application/json" == resp.content_type
    assert b'{"a":2,"b":1}' == await resp.read()


async def test_routes_served_directly_keep_their_stats(aiohttp_client: ClientFactory) -> None:
    """With arenapool's middleware served through the routes, each route still counts
    its requests and bytes under its own name; a route never requested is not listed,
    and the governor counts the requests in flight from those counters."""
    governor = Governor(GovernorConfig(use_cgroup=False))
    seen: list[int] = []

    async def ingest(request: web.Request) -> web.Response:
        seen.append(governor.in_flight)
        return json_response({"n": len(await read_json(request))})

    async def other(request: web.Request) -> web.Response:
        return json_response({})

    app = web.Application()
    setup(app, pool=SlabPool("4MiB"), governor=governor)
    app.router.add_post("/ingest", ingest, name="ingest")
    app.router.add_get("/other", other)
    client = await aiohttp_client(app)
    assert not app.middlewares, "the arena middleware is served through the routes"

    for _ in range(3):
        resp = await client.post("/ingest", data=b"[1,2,3]")
        assert 3 == (await resp.json())["n"]
    stats = app[ROUTE_STATS_KEY].snapshot()
    assert ["ingest"] == sorted(stats)
    assert (3, 21, 0) == (
        stats["ingest"]["requests"],
        stats["ingest"]["bytes_read"],
        stats["ingest"]["in_flight"],
    )
    assert [1, 1, 1] == seen
    assert 0 == governor.in_flight
    assert 0 == governor.stats()["in_flight"]
