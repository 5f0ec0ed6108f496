"""The body read copies every chunk aiohttp has buffered in one pass (``_hotpath._drain``),
against real servers on 127.0.0.1: the bytes arrive whole and in order, the stream's
counts move as aiohttp's own reads move them, and the socket's reader is resumed only
when it was paused (aiohttp's per-chunk read resumes below the low-water mark whether or
not it was)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import TestClient

from arenapool import SlabPool
from arenapool.aiohttp import read_body, setup
from arenapool.aiohttp._hotpath import _BATCH, _drain
from harness.http import read_body as read_answer_body
from harness.http import read_head

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
KiB = 1024
MiB = 1024 * KiB


def request_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def pattern(nbytes: int) -> bytes:
    """Bytes that differ from one position to the next (a misplaced chunk shows)."""
    return bytes(i * 7 % 251 for i in range(nbytes))


async def until(content: StreamReader, condition: Callable[[], bool]) -> None:
    """Wait for ``content``'s next feeds until ``condition`` holds (aiohttp wakes a
    stream's waiter with every chunk it feeds)."""
    while not condition():
        await content._wait("until")


async def answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status, headers = await read_head(reader)
    return status, orjson.loads(await read_answer_body(reader, headers))


def test_the_stream_has_what_the_one_pass_copy_needs() -> None:
    """aiohttp 3.14, as the project pins it, keeps what ``_drain`` reads."""
    assert _BATCH


async def test_a_large_body_is_read_whole_and_the_reader_resumed_only_when_paused(
    aiohttp_client: ClientFactory,
) -> None:
    """A 2 MiB body written at once: aiohttp pauses the socket's reader once its stream
    holds more than the high-water mark, and the body read drains what is buffered
    each time it wakes. The paused reader is resumed, and the read never asks a running
    one to resume (aiohttp's per-chunk read asks after every chunk popped below the
    mark, paused or not: 11 calls for this body, 10 of them on a running reader), and
    the handler gets every byte in order."""
    body = pattern(2 * MiB)
    with SlabPool("16MiB", decay=None) as pool:
        app = web.Application()
        setup(app, pool, limit="4MiB")

        async def digest(request: web.Request) -> web.Response:
            transport = request.transport
            assert transport is not None
            calls = {"resume": 0, "running": 0}
            resume = transport.resume_reading

            def counted_resume() -> None:
                calls["resume"] += 1
                calls["running"] += int(transport.is_reading())  # nothing to resume
                resume()

            transport.resume_reading = counted_resume  # type: ignore[method-assign]
            # let aiohttp fill its stream up to the high-water mark first
            await until(request.content, lambda: not transport.is_reading())
            view = await read_body(request)
            transport.resume_reading = resume  # type: ignore[method-assign]
            return web.json_response(
                {"sha": hashlib.sha256(view).hexdigest(), "nbytes": len(view), **calls}
            )

        app.router.add_post("/digest", digest)
        client = await aiohttp_client(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        try:
            writer.write(request_head("/digest", len(body)) + body)
            status, payload = await asyncio.wait_for(answer(reader), 30)
        finally:
            writer.close()
    assert 200 == status, payload
    assert (hashlib.sha256(body).hexdigest(), len(body)) == (payload["sha"], payload["nbytes"])
    # the paused reader was resumed; a running one was asked at most once, by aiohttp
    # itself as the body ended (StreamReader.feed_eof resumes, paused or not)
    assert payload["resume"] >= 1
    assert payload["running"] <= 1


async def test_the_one_pass_copy_takes_a_partly_read_chunk_and_moves_the_counts(
    aiohttp_client: ClientFactory,
) -> None:
    """Two chunks buffered (the second sent only once the first was in the stream), the
    first partly read by ``content.read(10)``: ``_drain`` copies the rest of it and the
    whole second, in order, and leaves the stream's counts as aiohttp's reads would."""
    first, second = pattern(40 * KiB), pattern(50 * KiB)[::-1]
    total = len(first) + len(second)
    got_first = asyncio.Event()
    with SlabPool("4MiB", decay=None) as pool:
        app = web.Application()
        setup(app, pool, limit="1MiB")

        async def drained(request: web.Request) -> web.Response:
            content = request.content
            await until(content, lambda: content._size >= len(first))
            got_first.set()
            await until(content, lambda: content._size >= total)
            chunks = len(content._buffer)
            head = await content.read(10)  # a bounded read: the first chunk is split
            into = bytearray(total)
            _drain(content, memoryview(into), 10)
            into[:10] = head
            return web.json_response(
                {
                    "chunks": chunks,
                    "sha": hashlib.sha256(into).hexdigest(),
                    "size": content._size,
                    "buffered": len(content._buffer),
                    "offset": content._buffer_offset,
                    "cursor": content._cursor,
                    "eof": content.is_eof(),
                }
            )

        app.router.add_post("/drained", drained)
        client = await aiohttp_client(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        try:
            writer.write(request_head("/drained", total) + first)
            await writer.drain()
            await asyncio.wait_for(got_first.wait(), 30)
            writer.write(second)
            await writer.drain()
            status, payload = await asyncio.wait_for(answer(reader), 30)
        finally:
            writer.close()
    assert 200 == status, payload
    assert payload["chunks"] >= 2
    assert hashlib.sha256(first + second).hexdigest() == payload["sha"]
    assert (0, 0, 0, total, True) == (
        payload["size"],
        payload["buffered"],
        payload["offset"],
        payload["cursor"],
        payload["eof"],
    )
