"""Refusal on the head (``arenapool.aiohttp._heads``) and one large body per turn of the
event loop (``_hotpath._Turns``), against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from arenapool import SlabPool
from arenapool.aiohttp import ROUTE_STATS_KEY, read_body, setup
from arenapool.aiohttp._heads import GC_HOLD_MAX, GC_QUIET, GcHold
from arenapool.aiohttp._hotpath import TURN_MIN, WIDE_READ_AHEAD, _Turns
from arenapool.aiohttp._ready import READ_AHEAD
from harness.http import read_body as read_answer_body
from harness.http import read_head

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
KiB = 1024
MiB = 1024 * KiB


Gates = tuple[asyncio.Event, asyncio.Event]


def head_app(pool: SlabPool, seen: list[str], **options: Any) -> tuple[web.Application, Gates]:
    """An app whose first middleware notes every request aiohttp makes (``seen``), then
    arenapool's; POST /raw reads its body through arenapool, POST /stream reads it
    itself, POST /maybe reads it through arenapool only with ``?read=1``, after it has
    set the first returned event and the second has been set."""
    app = web.Application()
    entered, proceed = asyncio.Event(), asyncio.Event()

    @web.middleware
    async def witness(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(witness)
    setup(app, pool, **options)

    async def raw(request: web.Request) -> web.Response:
        return web.json_response({"nbytes": len(await read_body(request))})

    async def stream(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"nbytes": total})

    async def maybe(request: web.Request) -> web.Response:
        entered.set()
        await proceed.wait()
        if request.query.get("read"):
            return web.json_response({"nbytes": len(await read_body(request))})
        return web.json_response({"nbytes": None})

    app.router.add_post("/raw", raw)
    app.router.add_post("/stream", stream)
    app.router.add_post("/maybe", maybe)
    return app, (entered, proceed)


def request_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def answer_to_head(port: int, path: str, length: int) -> tuple[int, dict[str, str], Any]:
    """Send a head declaring ``length`` body bytes and none of them; the answer (a server
    that waits for the body never gives one: the test times out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(path, length))
        await writer.drain()
        status, headers = await asyncio.wait_for(read_head(reader), 30)
        body = await asyncio.wait_for(read_answer_body(reader, headers), 30)
    finally:
        writer.close()
    return status, headers, orjson.loads(body)


def send_whole_then_read(port: int, path: str, length: int) -> bytes:
    """Blocking, as ``requests`` does: the head and all of the body, then the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_head(path, length))
        sock.sendall(b" " * length)  # stalls for ever if the server stops reading
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
            match = re.search(rb"(?i)content-length: *(\d+)\r\n", answer)
            end = answer.find(b"\r\n\r\n")
            if match and end >= 0 and len(answer) >= end + 4 + int(match.group(1)):
                return answer


async def send_then_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, Any]:
    """Write ``data`` on an open connection, then read its answer: the status and the
    decoded JSON body. The connection is closed after."""
    try:
        writer.write(data)
        await writer.drain()
        status, headers = await read_head(reader)
        return status, orjson.loads(await read_answer_body(reader, headers))
    finally:
        writer.close()


def route(app: web.Application, name: str) -> dict[str, int]:
    return app[ROUTE_STATS_KEY].snapshot()[name]


async def test_a_hopeless_body_is_refused_by_its_connection_once_its_route_is_known(
    aiohttp_client: ClientFactory,
) -> None:
    """A declared body larger than the whole budget gets 503 + Retry-After either way;
    the first time from the body read (the route's middlewares and handler run), and
    from then on from its connection, on its head: no request is made of it, nothing
    is lent, and the route still counts it."""
    seen: list[str] = []
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        app, _ = head_app(pool, seen, limit="1MiB")
        client = await aiohttp_client(app)
        port = client.server.port
        first = await answer_to_head(port, "/raw", 512 * KiB)
        second = await answer_to_head(port, "/raw", 512 * KiB)
        for status, headers, payload in (first, second):
            assert (503, "budget_exhausted") == (status, payload["error"])
            assert int(headers["retry-after"]) >= 1
            assert payload["retry_after"] == int(headers["retry-after"])
        assert "close" == second[1]["connection"].lower()
        # the connection writes its answer itself: the same shape aiohttp wrote
        assert first[1]["content-type"] == second[1]["content-type"] == "application/json"
        assert first[2] == second[2]
        assert ["/raw"] == seen  # the second never became a request
        counts = route(app, "POST /raw")
        assert (2, 2) == (counts["requests"], counts["status_503"])
        stats = pool.stats()
        assert (0, 0) == (stats["high_water_lent_bytes"], stats["admission"]["pending_bytes"])
        response = await client.post("/raw", data=b"x" * 100_000)  # the route still serves
        assert 100_000 == (await response.json())["nbytes"]


async def test_a_connection_opened_before_the_route_was_known_judges_its_next_head(
    aiohttp_client: ClientFactory,
) -> None:
    """An idle keep-alive connection (a proxy's pooled upstream connection) opened
    before the app had a route to judge judges the heads that come on it after."""
    seen: list[str] = []
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        app, _ = head_app(pool, seen, limit="1MiB")
        client = await aiohttp_client(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        try:
            writer.write(request_head("/stream", 10) + b"0123456789")  # served, kept open
            status, headers = await read_head(reader)
            assert 10 == orjson.loads(await read_answer_body(reader, headers))["nbytes"]
            assert 503 == (await answer_to_head(client.server.port, "/raw", 512 * KiB))[0]
            writer.write(request_head("/raw", 512 * KiB))
            status, headers = await read_head(reader)
            await read_answer_body(reader, headers)
        finally:
            writer.close()
        assert 503 == status
        assert ["/stream", "/raw"] == seen  # the pooled connection's head made no request


async def test_a_route_that_reads_its_own_body_is_never_judged_on_its_head(
    aiohttp_client: ClientFactory,
) -> None:
    """A handler that streams its body elsewhere uses no budget: its bodies, larger than
    the whole budget, are served, after another route has been refused on its head."""
    seen: list[str] = []
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        app, _ = head_app(pool, seen, limit="1MiB")
        client = await aiohttp_client(app)
        for _ in range(2):
            assert 503 == (await answer_to_head(client.server.port, "/raw", 512 * KiB))[0]
        for _ in range(2):
            response = await client.post("/stream", data=b"s" * (512 * KiB))
            assert (200, 512 * KiB) == (response.status, (await response.json())["nbytes"])
        assert ["/raw", "/stream", "/stream"] == seen


async def test_a_body_over_the_limit_is_413_on_its_head_even_sent_whole(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Over the route's limit, once the route is known: 413 with the limit, from the
    connection, to a client that sends all 8 MiB before it reads (the rest is read and
    dropped, so its send finishes and it gets the answer, not a reset)."""
    seen: list[str] = []
    app, _ = head_app(pool, seen, limit="64KiB")
    client = await aiohttp_client(app)
    response = await client.post("/raw", data=b"x" * 20_000)  # the route becomes known
    assert 20_000 == (await response.json())["nbytes"]
    answer = await asyncio.to_thread(send_whole_then_read, client.server.port, "/raw", 8 * MiB)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 413 {HTTPStatus(413).phrase}\r\n".encode())  # aiohttp's
    assert b"\r\ncontent-type: application/json\r\n" in head.lower()
    assert b"connection: close" in head.lower()
    payload = orjson.loads(body)
    assert ("body_too_large", 64 * KiB) == (payload["error"], payload["limit"])
    assert ["/raw"] == seen
    assert 1 == route(app, "POST /raw")["status_413"]


async def test_an_admissible_head_stays_expected_until_its_body_is_read_or_its_request_ends(
    aiohttp_client: ClientFactory,
) -> None:
    """A head judged admissible on its connection is counted as expected (so the heads
    behind it see it), its request takes that count over, and gives it back when its
    body is read, or when the handler ends without reading it."""
    seen: list[str] = []
    with SlabPool("4MiB", decay=None) as pool:
        app, (entered, proceed) = head_app(pool, seen, limit="2MiB")
        client = await aiohttp_client(app)
        port = client.server.port
        proceed.set()
        response = await client.post("/maybe?read=1", data=b"x" * 100_000)
        assert 100_000 == (await response.json())["nbytes"]  # the route becomes known
        entered.clear()
        proceed.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head("/maybe?read=1", MiB))
            await writer.drain()
            await entered.wait()  # its handler has started, and not read yet
            waiting = pool.stats()["admission"]["pending_bytes"]
            proceed.set()
            writer.write(b"y" * MiB)
            await writer.drain()
            status, headers = await read_head(reader)
            nbytes = orjson.loads(await read_answer_body(reader, headers))["nbytes"]
        finally:
            writer.close()
        assert waiting >= MiB  # expected from its head on, before its body read
        assert (200, MiB) == (status, nbytes)
        assert 0 == pool.stats()["admission"]["pending_bytes"]
        response = await client.post("/maybe", data=b"z" * MiB)  # judged, never read
        assert (200, None) == (response.status, (await response.json())["nbytes"])
        assert 0 == pool.stats()["admission"]["pending_bytes"]
        assert 3 == len(seen)


async def test_a_head_no_request_took_is_given_back_when_its_connection_closes(
    aiohttp_client: ClientFactory,
) -> None:
    """An admissible head whose request never reaches arenapool (a middleware before it
    answered) leaves its expected count with its connection, which gives it back when
    it closes."""
    with SlabPool("4MiB", decay=None) as pool:
        app = web.Application()

        @web.middleware
        async def deny(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.query.get("deny"):
                return web.Response(status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(deny)
        setup(app, pool, limit="2MiB")

        async def raw(request: web.Request) -> web.Response:
            return web.json_response({"nbytes": len(await read_body(request))})

        app.router.add_post("/raw", raw)
        client = await aiohttp_client(app)
        response = await client.post("/raw", data=b"x" * 100_000)  # the route becomes known
        assert 100_000 == (await response.json())["nbytes"]
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        try:
            writer.write(request_head("/raw?deny=1", MiB) + b"y" * MiB)
            status, headers = await read_head(reader)
            await read_answer_body(reader, headers)
            held = pool.stats()["admission"]["pending_bytes"]
        finally:
            writer.close()
        assert 401 == status
        assert held >= MiB  # judged on its head, taken by no request
        await until(lambda: pool.stats()["admission"]["pending_bytes"] == 0)


async def test_an_admissible_head_reads_ahead_at_aiohttps_default_while_the_budget_has_room(
    aiohttp_client: ClientFactory,
) -> None:
    """A head judged admissible while every expected body fits the budget's free room
    gets aiohttp's own read-ahead before its handler runs; one judged while the room is
    taken gets setup()'s 64 KiB, and so do a head that was not judged because its route
    was not known yet and a chunked body (never judged on its head), although their
    connections were opened reading ahead at aiohttp's default. Each body is still read
    whole."""
    marks: list[int] = []
    entered = asyncio.Event()
    with SlabPool("1MiB", max_class="1MiB", decay=None) as pool:
        app = web.Application()
        setup(app, pool, limit="1MiB")

        async def peek(request: web.Request) -> web.Response:
            marks.append(request.content._high_water)  # as the head left it
            entered.set()
            return web.json_response({"nbytes": len(await read_body(request))})

        app.router.add_post("/peek", peek)
        client = await aiohttp_client(app)
        port = client.server.port
        body = b"x" * (400 * KiB)
        response = await client.post("/peek", data=body)  # the route becomes known
        assert 400 * KiB == (await response.json())["nbytes"]
        answer = await asyncio.to_thread(send_whole_then_read, port, "/peek", 400 * KiB)
        assert answer.endswith(b'{"nbytes": 409600}')
        entered.clear()
        with pool.arena() as held:
            held.alloc(768 * KiB)  # the free room is less than the next body now
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_head("/peek", 400 * KiB))
            await writer.drain()
            await entered.wait()  # its handler has run up to its read
        # the block is back: the body is admitted as it arrives
        status, payload = await send_then_answer(reader, writer, b"y" * (400 * KiB))
        assert (200, 400 * KiB) == (status, payload.get("nbytes")), payload
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a new one
        chunk = b"z" * (100 * KiB)
        chunked = (
            b"POST /peek HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))
            + b"0\r\n\r\n"
        )
        status, payload = await send_then_answer(reader, writer, chunked)
        assert (200, 400 * KiB) == (status, payload.get("nbytes")), payload
        assert [2 * READ_AHEAD, 2 * WIDE_READ_AHEAD, 2 * READ_AHEAD, 2 * READ_AHEAD] == marks
        assert 0 == pool.stats()["admission"]["pending_bytes"]


async def test_a_body_that_came_whole_with_its_head_is_neither_judged_nor_narrowed(
    aiohttp_client: ClientFactory,
) -> None:
    """A declared body that arrived whole in the recv that brought its head has nothing
    left to refuse or to read ahead: its head is not counted as expected, and its
    stream keeps its read-ahead (narrowing it there paused the reader for nothing), on
    an idle connection and behind another request alike. Each body is still read whole.

    Head and body go out in one write of less than loopback's 64 KiB segment, so one
    recv brings both."""
    pending: list[int] = []
    marks: list[int] = []
    with SlabPool("4MiB", decay=None) as pool:
        app, (_, proceed) = head_app(pool, [], limit="1MiB")

        async def peek(request: web.Request) -> web.Response:
            pending.append(pool.stats()["admission"]["pending_bytes"])
            marks.append(request.content._high_water)
            return web.json_response({"nbytes": len(await read_body(request))})

        app.router.add_post("/peek", peek)
        client = await aiohttp_client(app)
        port = client.server.port
        proceed.set()
        response = await client.post("/peek", data=b"x" * 20_000)  # the route becomes known
        assert 20_000 == (await response.json())["nbytes"]
        whole = request_head("/peek", 20_000) + b"y" * 20_000
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, payload = await send_then_answer(reader, writer, whole)
        assert (200, 20_000) == (status, payload.get("nbytes")), payload
        # behind another request on its connection (pipelined in the same write)
        first = request_head("/maybe", 2) + b"{}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(first + whole)
            await writer.drain()
            answers = []
            for _ in range(2):
                status, headers = await read_head(reader)
                answers.append((status, orjson.loads(await read_answer_body(reader, headers))))
        finally:
            writer.close()
        assert [(200, {"nbytes": None}), (200, {"nbytes": 20_000})] == answers
        assert [0, 0] == pending[1:]
        assert [2 * WIDE_READ_AHEAD, 2 * WIDE_READ_AHEAD] == marks[1:]
        assert 0 == pool.stats()["admission"]["pending_bytes"]


async def test_refuse_on_head_off_leaves_every_judgement_to_the_body_read(
    aiohttp_client: ClientFactory,
) -> None:
    """``setup(refuse_on_head=False)``: every hopeless body becomes a request, and is
    refused by its body read (the same 503)."""
    seen: list[str] = []
    with SlabPool("256KiB", max_class="256KiB", decay=None) as pool:
        app, _ = head_app(pool, seen, limit="1MiB", refuse_on_head=False)
        client = await aiohttp_client(app)
        for _ in range(2):
            assert 503 == (await answer_to_head(client.server.port, "/raw", 512 * KiB))[0]
        assert ["/raw", "/raw"] == seen


async def test_a_large_body_waits_for_a_turn_of_the_loop_after_another() -> None:
    """The first large body of a turn goes on at once; a second waits until the loop
    has run what was ready meanwhile (a socket's read, in a server), then goes on, and
    the turn is free again once nobody waits; a waiter that left is skipped."""
    loop = asyncio.get_running_loop()
    turns = _Turns()
    order: list[str] = []
    assert turns.take(loop) is None
    left = turns.take(loop)
    second = turns.take(loop)
    assert left is not None
    assert second is not None
    left.cancel()
    loop.call_soon(order.append, "ready meanwhile")
    await second
    order.append("second")
    assert ["ready meanwhile", "second"] == order
    assert turns.taken
    await asyncio.sleep(0)  # the turn passes on, with nobody left to take it
    await asyncio.sleep(0)
    assert not turns.taken
    assert turns.take(loop) is None
    assert TURN_MIN >= 64 * KiB  # (only bodies past inline sizes take turns)


async def test_large_bodies_read_together_are_all_served(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Eight bodies over TURN_MIN at once: each takes its turn, all are answered."""
    seen: list[str] = []
    app, _ = head_app(pool, seen, limit="2MiB")
    client = await aiohttp_client(app)
    size = TURN_MIN + 1000
    responses = await asyncio.gather(
        *(client.post("/raw", data=bytes([i]) * size) for i in range(8))
    )
    assert [size] * 8 == [(await r.json())["nbytes"] for r in responses]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_the_cyclic_gc_waits_while_heads_are_refused_and_runs_after() -> None:
    """A refusal on a head holds the collector; it runs again once refusals have stopped
    for GC_QUIET, and a hold never outlasts GC_HOLD_MAX even if they do not stop."""
    await until(gc.isenabled)  # (a hold begun by another test's refusals has ended)
    hold = GcHold()
    try:
        hold.refused()
        began = time.monotonic()
        assert not gc.isenabled()
        assert hold.since is not None
        await until(gc.isenabled)
        assert time.monotonic() - began >= GC_QUIET
        assert (1, None) == (hold.holds, hold.since)
        hold.refused()
        while not gc.isenabled():  # refusals that never stop
            hold.refused()
            await asyncio.sleep(0.01)
        assert GC_HOLD_MAX <= time.monotonic() - began
        assert hold.held >= GC_HOLD_MAX
    finally:
        gc.enable()


def test_a_collector_turned_off_by_the_process_stays_off() -> None:
    hold = GcHold()
    gc.disable()
    try:
        hold.refused()
        assert (0, None) == (hold.holds, hold.since)
        assert not gc.isenabled()
    finally:
        gc.enable()
