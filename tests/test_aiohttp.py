"""The aiohttp adapter against real servers on 127.0.0.1 (pytest-aiohttp)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import re
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from arenapool import (
    Arena,
    ArenaReleasedError,
    PoolClosedError,
    PoolTimeout,
    SlabPool,
    ViewEscapedWarning,
    _ext,
    current_arena,
)
from arenapool.aiohttp import (
    ARENA_KEY,
    ROUTE_STATS_KEY,
    _hotpath,
    get_arena,
    json_response,
    read_body,
    read_json,
    setup,
    with_arena,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def wait_idle(pool: SlabPool, timeout: float = 5.0) -> dict[str, Any]:
    """Poll until nothing is lent or waiting (the handler's finally runs after the reply)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = pool.stats()
        if stats["lent_bytes"] == 0 and stats["waiting"] == 0 and stats["arenas_open"] == 0:
            return stats
        if loop.time() > deadline:
            raise AssertionError(f"pool not idle after {timeout}s: {stats}")
        await asyncio.sleep(0.01)


def echo_app(pool: SlabPool, **options: Any) -> web.Application:
    app = web.Application()
    setup(app, pool, **options)

    async def echo(request: web.Request) -> web.Response:
        data = await read_json(request)
        return json_response({"data": data})

    async def raw(request: web.Request) -> web.Response:
        body = await read_body(request)
        return web.Response(body=bytes(body))

    app.router.add_post("/echo", echo)
    app.router.add_post("/raw", raw)
    return app


def route_that_signals(
    app: web.Application, path: str, read: Callable[[web.Request], Awaitable[Any]]
) -> asyncio.Event:
    """POST ``path``: sets the returned event as the handler starts, then ``read``s the
    body and answers 200; the test acts between the two."""
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        started.set()
        await read(request)
        return web.Response(text="complete")

    app.router.add_post(path, handler)
    return started


def document(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes (size >= 2)."""
    if size < 16:
        return b'"' + b"x" * (size - 2) + b'"'
    head = b'{"pad": "'
    tail = b'"}'
    return head + b"y" * (size - len(head) - len(tail)) + tail


@pytest.fixture
def pool() -> Any:
    with SlabPool("16MiB", max_class="256KiB", decay=None) as p:
        yield p


@pytest.mark.parametrize("size", [2, 100, 4096, 70_000, 300_000, 1_500_000])
@pytest.mark.parametrize("chunked", [False, True])
async def test_round_trip_matches_json_loads(
    aiohttp_client: ClientFactory, pool: SlabPool, size: int, chunked: bool
) -> None:
    """Bodies from tiny to above the largest class decode exactly like json.loads."""
    client = await aiohttp_client(echo_app(pool, limit="4MiB"))
    body = document(size)
    assert size == len(body)

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7919):
            yield body[start : start + 7919]

    response = await client.post("/echo", data=stream() if chunked else body)
    assert 200 == response.status
    assert {"data": json.loads(body)} == await response.json()
    await wait_idle(pool)


async def test_empty_body_is_400_at_position_zero(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """An empty JSON body is malformed at byte 0."""
    client = await aiohttp_client(echo_app(pool))
    response = await client.post("/echo", data=b"")
    assert 400 == response.status
    payload = await response.json()
    assert ("invalid_json", 0) == (payload["error"], payload["position"])


async def test_malformed_json_gives_400_with_byte_position(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Malformed JSON answers 400 in the documented shape with the byte position."""
    client = await aiohttp_client(echo_app(pool))
    body = '{"naïve": [1, 2,, 3]}'.encode()
    response = await client.post("/echo", data=body)
    assert 400 == response.status
    payload = await response.json()
    assert "invalid_json" == payload["error"]
    assert body.index(b",,") + 1 == payload["position"]
    assert "detail" in payload
    await wait_idle(pool)


async def test_declared_oversize_is_413_before_the_handler_runs(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A Content-Length above the limit gets 413 and the handler never runs."""
    calls = []
    app = web.Application()
    setup(app, pool, limit="64KiB")

    async def handler(request: web.Request) -> web.Response:
        calls.append(request)
        await read_body(request)
        return web.Response(text="read")

    app.router.add_post("/up", handler)
    client = await aiohttp_client(app)
    response = await client.post("/up", data=b"z" * 100_000)
    assert 413 == response.status
    payload = await response.json()
    assert ("body_too_large", 65536) == (payload["error"], payload["limit"])
    assert [] == calls
    assert 0 == pool.stats()["high_water_lent_bytes"]
    assert 1 == app[ROUTE_STATS_KEY].snapshot()["POST /up"]["status_413"]


def _post_whole_then_read(port: int, path: str, body_size: int) -> tuple[bytes, int]:
    """What ``requests`` does: send the head and the whole body, then read the answer.
    Blocking, in a thread; (the answer's head and body, bytes sent)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_size}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.sendall(b" " * body_size)  # would stall for ever if the server stopped reading
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head_end = answer.index(b"\r\n\r\n") + 4
        length = int(re.search(rb"(?i)content-length: *(\d+)", answer[:head_end]).group(1))
        while len(answer) < head_end + length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer, len(head) + body_size


async def _send_then_stall(port: int, data: bytes) -> tuple[bytes, bytes]:
    """Send ``data`` (a head, perhaps part of its body), then nothing more; the answer's
    status line and the rest of its head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()
    return status_line, head


async def _raw_server(aiohttp_client: ClientFactory, pool: SlabPool, limit: str) -> int:
    """A server with arenapool's ``setup(limit=)`` and POST /raw (echoes the body read
    into the arena); its port."""
    app = web.Application()
    setup(app, pool, limit=limit)
    app.router.add_post("/raw", _raw_handler)
    client = await aiohttp_client(app)
    port = client.server.port
    assert port is not None
    return port


@pytest.mark.parametrize("arrives", ["with_its_head", "after_the_handler_started"])
async def test_a_declared_body_at_the_limit_is_judged_by_its_declared_size(
    aiohttp_client: ClientFactory, pool: SlabPool, arrives: str
) -> None:
    """Content-Length at the limit is read, one byte over it is 413, whether the body came
    with its head (its size is then the count aiohttp's parser kept) or only after the
    handler started (its size is then the header's): the same answers both ways."""
    app = web.Application()
    setup(app, pool, limit="1KiB")
    app.router.add_post("/raw", _raw_handler)
    started = route_that_signals(app, "/signal", read_body)
    client = await aiohttp_client(app)
    port = client.server.port
    assert port is not None

    async def post(path: str, body: bytes) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        try:
            if arrives == "with_its_head":
                writer.write(head.encode() + body)
            else:
                started.clear()
                writer.write(head.encode())
                if path == "/signal":  # the handler runs, waiting for the body
                    await asyncio.wait_for(started.wait(), 30)
                    writer.write(body)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 30)
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(re.search(rb"content-length: (\d+)", rest.lower())[1])  # type: ignore[index]
            return status, await asyncio.wait_for(reader.readexactly(length), 30)
        finally:
            writer.close()

    status, answer = await post("/raw" if arrives == "with_its_head" else "/signal", b"x" * 1024)
    assert status.startswith(b"HTTP/1.1 200 "), (status, answer)
    if arrives == "with_its_head":
        assert b"x" * 1024 == answer
    status, answer = await post("/raw", b"x" * 1025)
    assert status.startswith(b"HTTP/1.1 413 "), (status, answer)
    assert b'"body_too_large"' in answer
    await wait_idle(pool)


async def test_a_refused_body_sent_whole_still_gets_its_answer(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A client that sends all of a refused body before reading (``requests`` does) gets
    the 413, not a reset: the rest is read and dropped unparsed (no lingering parse),
    and the connection is not kept for another request."""
    port = await _raw_server(aiohttp_client, pool, "64KiB")
    answer, _sent = await asyncio.to_thread(_post_whole_then_read, port, "/raw", 8 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()
    assert b'"body_too_large"' in answer


async def test_a_body_larger_than_the_budget_is_refused_before_it_is_sent(
    aiohttp_client: ClientFactory,
) -> None:
    """A declared body that could never be admitted (larger than the whole budget, within
    the limit) is refused on its head: the client that has sent nothing else gets 503
    at once, not after its first step of body (issue 13: judged as it arrives)."""
    with SlabPool("256KiB", max_class="256KiB", decay=None) as small:
        port = await _raw_server(aiohttp_client, small, "1MiB")
        status_line, head = await _send_then_stall(
            port,
            b"POST /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 524288\r\n\r\n",
        )  # the head only: a server that waits for body bytes never answers
        assert status_line.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after:" in head.lower()
        assert 0 == small.stats()["high_water_lent_bytes"]


async def test_chunked_overflow_is_413(aiohttp_client: ClientFactory, pool: SlabPool) -> None:
    """A chunked body that streams past the limit is cut off with 413 and released."""
    client = await aiohttp_client(echo_app(pool, limit="64KiB"))

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1000

    response = await client.post("/echo", data=stream())
    assert 413 == response.status
    assert "body_too_large" == (await response.json())["error"]
    await wait_idle(pool)


def holding_app(
    pool: SlabPool, *, queue_timeout: float, body_timeout: float | None = 60.0
) -> tuple[web.Application, asyncio.Event, asyncio.Event]:
    """The app of :func:`hold_budget`, its ``gate`` and the event its /hold handler sets
    once it has read its body."""
    app = web.Application()
    setup(app, pool, limit="256KiB", queue_timeout=queue_timeout, body_timeout=body_timeout)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await read_body(request)
        entered.set()
        await gate.wait()
        return web.Response(text="held")

    app.router.add_post("/hold", hold)
    app.router.add_post("/raw", _raw_handler)
    return app, gate, entered


async def hold_budget(
    aiohttp_client: ClientFactory,
    pool: SlabPool,
    *,
    queue_timeout: float,
    body_timeout: float | None = 60.0,
) -> tuple[web.Application, TestClient[Any, Any], asyncio.Event, asyncio.Task[Any]]:
    """An app whose /hold request keeps most of a 256 KiB budget until ``gate`` is set.

    Returns once the holder has read its body; /raw echoes a body read into the arena.
    """
    app, gate, entered = holding_app(pool, queue_timeout=queue_timeout, body_timeout=body_timeout)
    client = await aiohttp_client(app)
    holder = asyncio.create_task(client.post("/hold", data=b"h" * 200_000))
    await entered.wait()
    return app, client, gate, holder


async def test_budget_exhausted_gives_503_with_retry_after(aiohttp_client: ClientFactory) -> None:
    """When the budget stays full past queue_timeout the request gets 503 + Retry-After."""
    with SlabPool("256KiB", max_class="256KiB", decay=None, retry_after=2.0) as pool:
        _app, client, gate, holder = await hold_budget(aiohttp_client, pool, queue_timeout=0.2)
        response = await client.post("/raw", data=b"r" * 100_000)
        assert 503 == response.status
        assert "2" == response.headers["Retry-After"]
        payload = await response.json()
        assert ("budget_exhausted", 2) == (payload["error"], payload["retry_after"])
        gate.set()
        assert 200 == (await holder).status
        stats = await wait_idle(pool)
        assert 1 == stats["wait_timeouts"]


async def test_queued_request_proceeds_when_budget_frees(aiohttp_client: ClientFactory) -> None:
    """A request waiting for budget is served as soon as another request releases it."""
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        app, client, gate, holder = await hold_budget(aiohttp_client, pool, queue_timeout=30)
        waiter = asyncio.create_task(client.post("/raw", data=b"r" * 100_000))
        await _until(lambda: pool.stats()["waiting"] == 1)
        gate.set()
        assert 200 == (await holder).status
        response = await waiter
        assert 200 == response.status
        assert b"r" * 100_000 == await response.read()
        assert 1 == app[ROUTE_STATS_KEY].snapshot()["POST /raw"]["waits"]
        await wait_idle(pool)


async def _raw_handler(request: web.Request) -> web.Response:
    body = await read_body(request)
    return web.Response(body=bytes(body))


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_handler_exception_releases_the_arena(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A handler that raises after reading still releases its arena (500 answered)."""
    app = web.Application()
    setup(app, pool)

    async def boom(request: web.Request) -> web.Response:
        await read_body(request)
        raise RuntimeError("handler failed")

    app.router.add_post("/boom", boom)
    client = await aiohttp_client(app)
    response = await client.post("/boom", data=b"x" * 50_000)
    assert 500 == response.status
    stats = await wait_idle(pool)
    assert 0 == stats["quarantined_blocks"]


async def test_cancelled_handler_releases_the_arena(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A handler cancelled mid-request (CancelledError) releases its arena."""
    app = web.Application()
    setup(app, pool)
    entered = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def slow(request: web.Request) -> web.Response:
        await read_body(request)
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        entered.set()
        await asyncio.Event().wait()
        return web.Response(text="never")

    app.router.add_post("/slow", slow)
    client = await aiohttp_client(app)
    request = asyncio.create_task(client.post("/slow", data=b"x" * 50_000))
    await entered.wait()
    assert pool.stats()["lent_bytes"] > 0
    tasks[0].cancel()
    await wait_idle(pool)
    request.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await request


async def test_client_disconnect_mid_body_releases_the_arena(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A client that closes the socket halfway through the body leaves the pool idle."""
    app = echo_app(pool)
    reading = route_that_signals(app, "/upload", read_body)
    client = await aiohttp_client(app)
    host, port = client.server.host, client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 70_000
    )
    await writer.drain()
    await reading.wait()
    await _until(lambda: pool.stats()["lent_bytes"] > 0)
    writer.transport.abort()
    await wait_idle(pool)
    response = await client.post("/echo", data=b"[1]")  # the server still serves
    assert 200 == response.status


def queued(pool: SlabPool) -> int:
    """Requests queued for budget: lends waiting, and bodies waiting for admission."""
    stats = pool.stats()
    return int(stats["waiting"]) + int(stats["admission"]["queued"])


async def test_client_disconnect_while_waiting_for_budget(aiohttp_client: ClientFactory) -> None:
    """A client that leaves while queued for budget gives its place up (it sent 60,000
    bytes of a declared 100,000: more than a first step, so its whole body queues for
    admission, and the holder leaves too little budget for it)."""
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        _app, client, gate, holder = await hold_budget(aiohttp_client, pool, queue_timeout=30)
        _, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(
            b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"q" * 60_000
        )
        await writer.drain()
        await _until(lambda: queued(pool) == 1)
        writer.transport.abort()
        await _until(lambda: queued(pool) == 0)
        gate.set()
        assert 200 == (await holder).status
        await wait_idle(pool)


async def test_body_clock_ends_a_wait_for_budget(aiohttp_client: ClientFactory) -> None:
    """A sender that stalls while its first step waits for budget is cut off by its body
    clock (408), not kept queued until queue_timeout: the one disconnect watch of the
    loop ends the wait; the queue empties and the pool goes idle."""
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        _app, client, gate, holder = await hold_budget(
            aiohttp_client, pool, queue_timeout=30, body_timeout=0.3
        )
        assert client.server.port is not None
        status_line, head = await _send_then_stall(
            client.server.port,
            b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"q" * 1_000,
        )  # less than a first step, then nothing
        assert status_line.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        assert 0 == pool.stats()["waiting"]
        gate.set()
        assert 200 == (await holder).status
        stats = await wait_idle(pool)
        assert 0 == stats["admission"]["pending_bytes"]


async def test_decorator_without_middleware(aiohttp_client: ClientFactory) -> None:
    """@with_arena gives a handler an arena (as argument and contextvar) without setup()."""
    with SlabPool("4MiB", decay=None) as pool:
        seen: list[bool] = []

        @with_arena(limit="64KiB", pool=pool)
        async def handler(request: web.Request, arena: Any) -> web.Response:
            seen.append(arena is get_arena(request) is current_arena())
            data = await read_json(request)
            return json_response({"sum": sum(data)})

        app = web.Application()
        app.router.add_post("/sum", handler)
        client = await aiohttp_client(app)
        response = await client.post("/sum", data=b"[1, 2, 3]")
        assert (200, {"sum": 6}) == (response.status, await response.json())
        assert [True] == seen
        response = await client.post("/sum", data=b"[" + b"1," * 40_000 + b"1]")
        assert 413 == response.status
        await wait_idle(pool)


async def test_decorator_on_class_based_view(aiohttp_client: ClientFactory) -> None:
    """@with_arena works on web.View methods."""
    with SlabPool("4MiB", decay=None) as pool:

        class Items(web.View):
            @with_arena(pool=pool)
            async def post(self) -> web.Response:
                data = await read_json(self.request)
                return json_response({"count": len(data)})

        app = web.Application()
        app.router.add_view("/items", Items)
        client = await aiohttp_client(app)
        response = await client.post("/items", data=b'["a", "b"]')
        assert {"count": 2} == await response.json()
        await wait_idle(pool)


async def test_decorator_limit_overrides_app_limit_under_middleware(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Under the middleware, @with_arena(limit=) refuses a bigger declared body with 413."""
    app = web.Application()
    setup(app, pool, limit="4MiB")

    @with_arena(limit="1KiB")
    async def small(request: web.Request) -> web.Response:
        return json_response(await read_json(request))

    app.router.add_post("/small", small)
    client = await aiohttp_client(app)
    assert 200 == (await client.post("/small", data=b"[1]")).status
    assert 413 == (await client.post("/small", data=b"[" + b"0," * 600 + b"0]")).status


async def test_middleware_with_other_middlewares(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Other middlewares around the arena middleware see the request and response."""
    order: list[str] = []

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        order.append("outer-in")
        response = await handler(request)
        order.append("outer-out")
        response.headers["X-Outer"] = "1"
        return response

    app = web.Application(middlewares=[outer])
    setup(app, pool)

    @web.middleware
    async def inner(request: web.Request, handler: Any) -> web.StreamResponse:
        order.append(f"inner-arena:{current_arena() is not None}")
        return await handler(request)

    app.middlewares.append(inner)

    async def handler(request: web.Request) -> web.Response:
        return json_response(await read_json(request))

    app.router.add_post("/x", handler)
    client = await aiohttp_client(app)
    response = await client.post("/x", data=b'{"k": 1}')
    assert ("1", {"k": 1}) == (response.headers["X-Outer"], await response.json())
    assert ["outer-in", "inner-arena:True", "outer-out"] == order


async def test_the_innermost_middleware_becomes_the_routes_own_wrapper(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """With nothing after it, the arena middleware is taken out of the app's middlewares
    when the app starts and each route's handler is served through it instead (aiohttp
    then skips its middleware machinery): the handler still has its arena, an outer
    middleware still wraps it, a handler's own limit still holds; with a middleware
    after it, it stays a middleware (that one must run inside it)."""

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers["X-Outer"] = "1"
        return response

    app = web.Application(middlewares=[outer])
    setup(app, pool, limit="1MiB")

    @with_arena(limit="1KiB")
    async def small(request: web.Request) -> web.Response:
        return json_response({"arena": current_arena() is not None})

    app.router.add_post("/x", small)
    client = await aiohttp_client(app)
    assert [outer] == list(app.middlewares)  # ours became the route's wrapper
    response = await client.post("/x", data=b"{}")
    assert ("1", {"arena": True}) == (response.headers["X-Outer"], await response.json())
    assert 413 == (await client.post("/x", data=b" " * 2000)).status  # the handler's limit

    kept = web.Application()
    setup(kept, pool)
    kept.middlewares.append(outer)
    kept.router.add_post("/x", small)
    client = await aiohttp_client(kept)
    assert 2 == len(kept.middlewares)  # ours, then outer: ours stays
    assert {"arena": True} == await (await client.post("/x", data=b"{}")).json()


async def test_two_apps_two_pools(aiohttp_client: ClientFactory) -> None:
    """Two apps with their own pools account separately."""
    with SlabPool("4MiB", decay=None) as pool_a, SlabPool("4MiB", decay=None) as pool_b:
        client_a = await aiohttp_client(echo_app(pool_a))
        client_b = await aiohttp_client(echo_app(pool_b))
        assert 200 == (await client_a.post("/raw", data=b"a" * 10_000)).status
        assert 200 == (await client_b.post("/raw", data=b"b" * 20_000)).status
        assert 10_000 <= pool_a.stats()["high_water_lent_bytes"] < 20_000
        assert 20_000 <= pool_b.stats()["high_water_lent_bytes"]
        await wait_idle(pool_a)
        await wait_idle(pool_b)


async def test_strict_content_type_gives_415(aiohttp_client: ClientFactory, pool: SlabPool) -> None:
    """With strict_content_type, a non-JSON content type is answered with 415."""
    client = await aiohttp_client(echo_app(pool, strict_content_type=True))
    response = await client.post("/echo", data=b"[1]", headers={"Content-Type": "text/plain"})
    assert 415 == response.status
    assert "unsupported_media_type" == (await response.json())["error"]
    ok = await client.post("/echo", data=b"[1]", headers={"Content-Type": "application/json"})
    assert 200 == ok.status


async def test_msgspec_decoder_per_app_and_typed(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """decoder="msgspec" decodes, and type= validates into a msgspec.Struct."""
    import msgspec

    class Point(msgspec.Struct):
        x: int
        y: int

    app = echo_app(pool, decoder="msgspec")

    async def point(request: web.Request) -> web.Response:
        p = await read_json(request, type=Point)
        return json_response({"sum": p.x + p.y})

    app.router.add_post("/point", point)
    client = await aiohttp_client(app)
    assert {"data": [1, {"a": None}]} == await (
        await client.post("/echo", data=b'[1, {"a": null}]')
    ).json()
    assert {"sum": 5} == await (await client.post("/point", data=b'{"x": 2, "y": 3}')).json()
    bad = await client.post("/point", data=b'{"x": "two", "y": 3}')
    assert (400, "invalid_json") == (bad.status, (await bad.json())["error"])


async def test_stashed_view_cannot_read_later_requests(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A handler that keeps a slice of its body never sees a later request's bytes."""
    stash: list[memoryview] = []
    app = echo_app(pool)

    async def keep(request: web.Request) -> web.Response:
        body = await read_body(request)
        stash.append(body[0:16])  # a sub-slice escapes the request
        return web.Response(text="kept")

    app.router.add_post("/keep", keep, name="keeper")
    client = await aiohttp_client(app)
    with pytest.warns(ViewEscapedWarning, match="keeper"):
        kept = await client.post("/keep", data=b"A" * 5000)
    assert 200 == kept.status
    await _until(lambda: pool.stats()["quarantined_blocks"] == 1)
    for _ in range(20):
        response = await client.post("/raw", data=b"B" * 5000)
        assert 200 == response.status
    assert b"A" * 16 == bytes(stash[0])
    assert 1 == app[ROUTE_STATS_KEY].snapshot()["keeper"]["escapes"]
    stash.clear()
    await _until(lambda: pool.stats()["quarantined_blocks"] == 0)


async def test_memoryview_response_body_is_copied_out(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A handler returning an arena view as the body still sends the right bytes."""
    app = echo_app(pool)

    async def mirror(request: web.Request) -> web.Response:
        return web.Response(body=await read_body(request))

    app.router.add_post("/mirror", mirror)
    client = await aiohttp_client(app)
    response = await client.post("/mirror", data=b"m" * 70_000)
    assert (200, b"m" * 70_000) == (response.status, await response.read())
    await wait_idle(pool)


async def test_pool_closed_on_cleanup_after_requests() -> None:
    """The pool made by setup() is closed when the app is cleaned up."""
    app = web.Application()
    pool = setup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert not pool.closed
    await runner.cleanup()
    assert pool.closed


def test_no_response_path_hands_arena_memory_to_aiohttp() -> None:
    """json_response bodies are bytes objects, never memoryviews."""
    response = json_response({"a": [1, 2]})
    assert isinstance(response.body, bytes)
    assert {"a": [1, 2]} == orjson.loads(response.body)


def test_json_response_is_what_aiohttp_makes() -> None:
    """The usual answer is stored field by field, not constructed: it must hold exactly
    the fields aiohttp's constructor gives it, in the same order, with its own headers
    and state (a change to one response's reaches no other)."""
    doc = {"a": [1, 2], "b": "é"}
    ours = json_response(doc)
    theirs = web.Response(body=orjson.dumps(doc), content_type="application/json")
    assert type(ours) is web.Response
    assert vars(ours) == vars(theirs)
    assert list(vars(ours)) == list(vars(theirs)) == list(_hotpath.JSON_FIELDS)
    assert ours.content_type == "application/json"
    assert ours.status == 200
    assert ours.reason == "OK"
    other = json_response(doc)
    assert other._headers is not ours._headers
    assert other._state is not ours._state
    ours.headers["X-One"] = "1"
    ours._state["key"] = "value"
    assert "X-One" not in other.headers
    assert "key" not in other._state
    assert "X-One" not in json_response(doc).headers
    # the other answers still go through the constructor
    made = json_response(doc, status=201, headers={"X-Two": "2"})
    assert (made.status, made.headers["X-Two"], made.content_type) == (201, "2", "application/json")


def test_json_response_copies_only_what_is_safe_to_copy() -> None:
    """A Response class that keeps a field in a slot, or sets a field json_response
    does not store, is made by its constructor."""
    assert _hotpath._json_fields(web.Response) is not None

    class Slotted(web.Response):
        __slots__ = ("_extra",)

    class Shared(web.Response):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._seen: list[str] = []

    assert _hotpath._json_fields(Slotted) is None
    assert _hotpath._json_fields(Shared) is None


async def test_json_response_on_the_wire_is_aiohttp_s(aiohttp_client: ClientFactory) -> None:
    """Served from 127.0.0.1, json_response's bytes are the constructor's, but the Date."""
    doc = {"records": [{"value": 1, "tag": "x"}], "n": None}

    async def ours(request: web.Request) -> web.Response:
        return json_response(doc)

    async def theirs(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    app = web.Application()
    app.router.add_get("/ours", ours)
    app.router.add_get("/theirs", theirs)
    client = await aiohttp_client(app)
    answers = []
    for path in ("/ours", "/theirs"):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        answers.append(re.sub(rb"\r\nDate: [^\r]*", b"", raw))
    assert answers[0] == answers[1]
    assert answers[0].endswith(b"\r\n\r\n" + orjson.dumps(doc))


def test_socket_family_is_loopback_only() -> None:
    """The test servers bind 127.0.0.1 (guard against accidental wider binds)."""
    assert socket.gethostbyname("127.0.0.1") == "127.0.0.1"


# -- small bodies: decoded where aiohttp holds them; arenas made on first use ----------


async def test_small_json_never_touches_the_pool(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A declared body up to inline_max is decoded from aiohttp's bytes: no arena, no block."""
    app = echo_app(pool)
    client = await aiohttp_client(app)
    body = document(60_000)
    response = await client.post("/echo", data=body)
    assert (200, {"data": json.loads(body)}) == (response.status, await response.json())
    stats = await wait_idle(pool)
    assert (0, 0) == (stats["arenas_total"], stats["high_water_lent_bytes"])
    route = app[ROUTE_STATS_KEY].snapshot()["POST /echo"]
    assert (1, 60_000, 0) == (route["requests"], route["bytes_read"], route["arena_high_water"])


@pytest.mark.parametrize("inline_max", ["0", "1KiB"])
async def test_bodies_above_inline_max_are_read_into_the_arena(
    aiohttp_client: ClientFactory, pool: SlabPool, inline_max: str
) -> None:
    """inline_max="0" (or a body above it) sends read_json through the arena."""
    app = echo_app(pool, inline_max=inline_max)
    client = await aiohttp_client(app)
    body = document(5000)
    response = await client.post("/echo", data=body)
    assert (200, {"data": json.loads(body)}) == (response.status, await response.json())
    stats = await wait_idle(pool)
    assert 1 == stats["arenas_total"]
    assert 5000 <= app[ROUTE_STATS_KEY].snapshot()["POST /echo"]["arena_high_water"]


async def test_read_body_after_read_json_gives_an_arena_view(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """After an inline read_json, read_body still returns the body, now in the arena."""
    app = echo_app(pool)
    seen: list[Any] = []

    async def both(request: web.Request) -> web.Response:
        data = await read_json(request)
        view = await read_body(request)
        seen.append((data, bytes(view), view.readonly, get_arena(request).used))
        assert view is await read_body(request)
        return web.Response(text="ok")

    app.router.add_post("/both", both)
    client = await aiohttp_client(app)
    assert 200 == (await client.post("/both", data=b'{"a": [1, 2]}')).status
    assert [({"a": [1, 2]}, b'{"a": [1, 2]}', False, 13)] == seen
    await wait_idle(pool)


async def test_small_body_in_pieces_is_read_whole(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A small body whose second half arrives after the handler started decodes whole."""
    app = echo_app(pool)
    started = route_that_signals(app, "/late", read_json)
    client = await aiohttp_client(app)
    body = orjson.dumps({"values": list(range(500))})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    writer.write(head + body[:100])
    await writer.drain()
    await started.wait()
    writer.write(body[100:])
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200")
    writer.close()
    assert 0 == (await wait_idle(pool))["arenas_total"]


async def test_small_body_that_stalls_gets_408(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """The inline path keeps body_timeout: a small body that never completes gets 408."""
    app = echo_app(pool, body_timeout=0.2)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n[1,")
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 408")
    writer.close()
    assert 1 == app[ROUTE_STATS_KEY].snapshot()["POST /echo"]["status_408"]


async def test_body_reads_leave_no_timer_behind(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """The body clocks of a loop share one timer: sixty bodies read into the arena leave
    at most that one in the loop's heap, not a cancelled timer each until its
    ``body_grace`` (10 s) is up. (Their clocks still cut off a stalled body:
    test_hostile.py.)"""
    app = echo_app(pool)
    client = await aiohttp_client(app)
    loop = asyncio.get_running_loop()
    no_timer = aiohttp.ClientTimeout()  # (the client's own would be in the heap too)
    response = await client.post("/raw", data=b"r" * 1_000, timeout=no_timer)
    assert 1_000 == len(await response.read())
    # a server's loop has timers due sooner than a clock's first check (the governor's,
    # the disconnect watch's): asyncio drops cancelled timers from the heap's head only
    sooner = loop.call_later(5.0, lambda: None)
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    for size in (100_000, 200_000) * 30:
        response = await client.post("/raw", data=b"r" * size, timeout=no_timer)
        assert size == len(await response.read())
    after = len(loop._scheduled)  # type: ignore[attr-defined]
    sooner.cancel()
    assert after <= before + 1


async def _halves(data: bytes, reading: Callable[[], bool]) -> AsyncIterator[bytes]:
    """``data`` in two halves, the second once ``reading()`` is true."""
    half = len(data) // 2
    yield data[:half]
    await _until(reading)
    yield data[half:]


def test_a_loop_that_served_is_freed_once_closed() -> None:
    """The body path keeps one helper per event loop (the body clocks' timer, the watch
    over requests waiting for budget, the turns of large bodies) in tables keyed weakly
    by the loop. None may hold its loop: a loop that served bodies, waits and turns is
    gone once closed and dropped, and so are its entries."""
    seen: dict[str, bool] = {}
    # the tables the running build uses: the compiled module's own, when it is loaded
    hot = importlib.import_module(_ext.LOADED.get(_hotpath.__name__, _hotpath.__name__))

    async def serve() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
            app, gate, entered = holding_app(pool, queue_timeout=30)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                for size in (100_000, 200_000):  # bodies read with a clock running: the
                    # second half sent once the read waits for it (a body that came whole
                    # with its head is read without one)
                    halves = _halves(b"r" * size, lambda: loop in hot._CLOCKS)
                    headers = {"Content-Length": str(size)}
                    async with session.post(f"{url}/raw", data=halves, headers=headers) as response:
                        assert size == len(await response.read())
                holder = asyncio.create_task(session.post(f"{url}/hold", data=b"h" * 200_000))
                await entered.wait()
                waiter = asyncio.create_task(session.post(f"{url}/raw", data=b"w" * 100_000))
                await _until(lambda: pool.stats()["waiting"] == 1)
                await hot._take_turn()
                seen.update(
                    clocks=loop in hot._CLOCKS, watch=loop in hot._WATCHES, turns=loop in hot._TURNS
                )
                gate.set()
                for task in (holder, waiter):
                    async with await task as response:
                        assert 200 == response.status
            await runner.cleanup()
        return weakref.ref(loop)

    def entries() -> int:
        return len(hot._CLOCKS) + len(hot._WATCHES) + len(hot._TURNS)

    # (loops of earlier tests may still be alive, and in the tables, when this one
    # starts: its own entries are what must go)
    gc.collect()
    before = entries()
    ref = asyncio.run(serve())
    gc.collect()
    assert {"clocks": True, "watch": True, "turns": True} == seen
    assert ref() is None
    assert entries() <= before


async def test_arena_is_made_on_first_use_and_released(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A handler that never asks for its arena costs no arena; current_arena() makes it."""
    app = echo_app(pool)
    arenas: list[Any] = []

    async def untouched(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def touched(request: web.Request) -> web.Response:
        arena = current_arena()
        assert arena is not None
        arena.alloc(100)
        arenas.append(arena)
        assert arena is get_arena(request)
        return web.Response(text="ok")

    app.router.add_get("/untouched", untouched)
    app.router.add_get("/touched", touched)
    client = await aiohttp_client(app)
    assert 200 == (await client.get("/untouched")).status
    assert 0 == (await wait_idle(pool))["arenas_total"]
    assert 200 == (await client.get("/touched")).status
    assert 1 == (await wait_idle(pool))["arenas_total"]
    assert "RELEASED" == arenas[0].state.value
    assert current_arena() is None


async def test_get_arena_after_the_request_finished_refuses(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Asking for the arena after our middleware finished (an on_response_prepare
    signal runs then) raises instead of making an arena nobody would release."""
    app = echo_app(pool)
    seen: list[str] = []

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/untouched":
            with pytest.raises(ArenaReleasedError, match="has finished"):
                get_arena(request)
            seen.append("refused")

    async def untouched(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.on_response_prepare.append(prepare)
    app.router.add_get("/untouched", untouched)
    client = await aiohttp_client(app)
    assert 200 == (await client.get("/untouched")).status
    assert ["refused"] == seen
    assert 0 == (await wait_idle(pool))["arenas_total"]


async def test_a_served_request_keeps_neither_its_arena_nor_its_body(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """aiohttp keeps a served request alive until its connection's next request; of
    arenapool it then holds nothing of its own: the request's state, its released arena
    and the body's view go as it is served (kept with it, one set per idle connection,
    they set CPython's cyclic GC off every few requests under load). What it holds
    under ``ARENA_KEY`` is its route's served state, shared by the route's requests,
    and asking for the arena afterwards is refused as finished, as before."""
    app = web.Application()
    setup(app, pool)
    kept: list[web.Request] = []
    arenas: list[weakref.ref[Arena]] = []
    states: list[weakref.ref[Any]] = []
    payload = b"x" * 100_000  # read into the arena (read_body always is)

    async def handler(request: web.Request) -> web.Response:
        body = await read_body(request)
        arenas.append(weakref.ref(get_arena(request)))
        states.append(weakref.ref(request[ARENA_KEY]))
        kept.append(request)  # as aiohttp's connection keeps it
        return web.Response(body=bytes(body))

    app.router.add_post("/keep", handler)
    client = await aiohttp_client(app)
    for _ in range(2):
        response = await client.post("/keep", data=payload)
        assert (200, payload) == (response.status, await response.read())
    assert 0 == (await wait_idle(pool))["lent_bytes"]
    assert [None, None] == [ref() for ref in arenas]  # nothing holds a released arena
    assert [None, None] == [ref() for ref in states]  # nor a request's own state
    first, second = (request[ARENA_KEY] for request in kept)
    assert first is second  # the route's served state
    assert (None, None, None) == (first.request, first._arena, first.body)
    assert "POST /keep" == first.route
    for request in kept:
        with pytest.raises(ArenaReleasedError, match="has finished"):
            get_arena(request)


async def test_after_the_request_its_task_finds_what_was_current_before(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Code that runs in the request's task after the middleware (here an outer
    middleware, after its ``await handler``) finds what was current before the
    request, an outer ``with`` block's arena or None, and the request's own arena is
    released; a state the middleware made has every slot set (it has no ``__init__``)."""
    seen: list[object] = []

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/nested":
            with pool.arena() as mine:
                response = await handler(request)
                seen.append(current_arena() is mine)
        else:
            response = await handler(request)
            seen.append(current_arena())
        return response

    app = web.Application(middlewares=[outer])
    setup(app, pool)
    states: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        arena = current_arena()
        assert arena is not None
        arena.alloc(64)
        seen.append(arena)
        states.append(request[ARENA_KEY])
        return json_response({"ok": True})

    app.router.add_post("/nested", handler)
    app.router.add_post("/plain", handler)
    client = await aiohttp_client(app)
    for path in ("/nested", "/plain"):
        assert 200 == (await client.post(path, data=b"{}")).status
    nested_arena, after_nested, plain_arena, after_plain = seen
    assert (True, None) == (after_nested, after_plain)
    assert isinstance(nested_arena, Arena)
    assert isinstance(plain_arena, Arena)
    assert ("RELEASED", "RELEASED") == (nested_arena.state.value, plain_arena.state.value)
    for state in states:  # every slot set (no __init__: serve_route stores each)
        assert all(hasattr(state, name) for name in type(state).__slots__)
        assert state.request is None  # served
    assert 3 == (await wait_idle(pool))["arenas_total"]  # the two requests' and mine


async def test_small_body_client_leaves_mid_body(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """A client that aborts halfway through a small body (the inline read): the request
    ends (aiohttp cancels its handler), no arena was made, and the server keeps serving."""
    app = echo_app(pool)
    started = route_that_signals(app, "/late", read_json)
    client = await aiohttp_client(app)
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n[1,")
    await writer.drain()
    await started.wait()
    writer.transport.abort()
    late = app[ROUTE_STATS_KEY].routes["POST /late"]
    await _until(lambda: late.in_flight == 0)
    assert (1, 0) == (late.requests, late.bytes_read)
    assert 0 == (await wait_idle(pool))["arenas_total"]
    assert 200 == (await client.post("/echo", data=b"[1]")).status


# -- one table from error to answer ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PoolClosedError("the pool is closed"),
        PoolTimeout("no object within 1 s", timeout=1.0, maxsize=4),
    ],
    ids=["pool_closed", "pool_timeout"],
)
async def test_pool_errors_are_503_with_retry_after_not_500(
    aiohttp_client: ClientFactory, pool: SlabPool, error: Exception
) -> None:
    """PoolClosedError and PoolTimeout escaping a handler answer 503 with their code and
    Retry-After (their `status_hint`), never aiohttp's 500."""
    app = web.Application()
    setup(app, pool)

    async def fail(request: web.Request) -> web.Response:
        raise error

    app.router.add_get("/fail", fail)
    client = await aiohttp_client(app)
    response = await client.get("/fail")
    body = await response.json()
    assert (503, type(error).code, "1") == (
        response.status,
        body["error"],
        response.headers["Retry-After"],
    )


def test_error_codes_are_derived_from_the_error_classes() -> None:
    """Every error class the adapter answers has its own code, and ERROR_CODES maps it
    to that class's status_hint: one source for both."""
    from arenapool.aiohttp import _responses

    for cls in _responses.ANSWERED:
        assert cls.status_hint == _responses.ERROR_CODES[cls.code], cls
    assert len({cls.code for cls in _responses.ANSWERED}) == len(_responses.ANSWERED)
