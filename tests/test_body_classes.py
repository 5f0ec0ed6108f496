"""Issue 12's body classes against a real server on 127.0.0.1: content-coded bodies
(judged by their inflated size, bombs cut off, undecodable ones 400), the limit on every
way a handler reads a body, and ``Expect: 100-continue`` refused before the upload.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import shutil
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import psutil
import pytest
from aiohttp import web

from arenapool import SlabPool
from arenapool.aiohttp import json_response, read_body, read_json, setup, with_arena
from harness.http import Conn, RawResponse, build_request, chunked
from harness.idle import wait_idle
from harness.server import serve

KiB = 1024
MiB = 1024 * KiB

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _json(request: web.Request) -> web.StreamResponse:
    doc = await read_json(request)
    return json_response({"n": len(doc)})


async def _body(request: web.Request) -> web.StreamResponse:
    return json_response({"n": (await read_body(request)).nbytes})


async def _read(request: web.Request) -> web.StreamResponse:
    return json_response({"n": len(await request.read())})


async def _text(request: web.Request) -> web.StreamResponse:
    return json_response({"n": len(await request.text())})


async def _post(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    return json_response({"n": sum(len(str(v)) for v in form.values())})


async def _multipart(request: web.Request) -> web.StreamResponse:
    reader = await request.multipart()
    total = 0
    async for part in reader:
        while chunk := await part.read_chunk():  # type: ignore[union-attr]
            total += len(chunk)
    return json_response({"n": total})


async def _content(request: web.Request) -> web.StreamResponse:
    total = 0
    while chunk := await request.content.read(64 * KiB):
        total += len(chunk)
    return json_response({"n": total})


READERS: dict[str, Handler] = {
    "json": _json,
    "body": _body,
    "read": _read,
    "text": _text,
    "post": _post,
    "multipart": _multipart,
    "content": _content,
}


def make_app(pool: SlabPool, limit: str = "8MiB") -> web.Application:
    # aiohttp's own client_max_size is raised out of the way: arenapool's limit is
    # the one these tests see
    app = web.Application(client_max_size=1 << 30)
    setup(app, pool, limit=limit)
    for name, handler in READERS.items():
        app.router.add_post(f"/{name}", handler)
        app.router.add_post(f"/deco/{name}", with_arena(limit="1MiB")(handler))
    return app


@pytest.fixture
async def port() -> AsyncIterator[int]:
    with SlabPool("64MiB", decay=None) as pool:
        async with serve(make_app(pool)) as bound:
            yield bound
        await wait_idle(pool)


async def send(port: int, head: bytes, body: bytes = b"") -> RawResponse:
    async with await Conn.open(port) as conn:
        await conn.send(head + body)
        return await conn.response()


def no_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


DOC = orjson.dumps({"records": [{"value": i, "tag": f"t{i % 7}"} for i in range(250)]})


# -- defect 2: a coded body is judged by its inflated size ---------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize("reader", ["json", "body", "deco/json"])
async def test_coded_body_is_read_inflated(port: int, coding: str, reader: str) -> None:
    """A correct gzip/deflate JSON body with a correct (compressed) Content-Length is
    read whole: 200, never 400 `incomplete_body` nor a 413 naming the compressed size."""
    wire = gzip.compress(DOC) if coding == "gzip" else zlib.compress(DOC)
    assert len(wire) < len(DOC)
    head = build_request(f"/{reader}", wire, headers=[("Content-Encoding", coding)])
    response = await send(port, head)
    expected = 1 if reader.endswith("json") else len(DOC)
    assert (200, expected) == (response.status, response.json()["n"]), response


@pytest.mark.parametrize("reader", ["json", "body", "read", "content"])
async def test_coded_body_inflating_past_the_limit_is_413_naming_the_limit(
    port: int, reader: str
) -> None:
    """A small gzip body that inflates past the 8 MiB limit is cut off as it inflates:
    413 `body_too_large` whose `limit` is the real limit."""
    wire = gzip.compress(b" " * (9 * MiB))
    head = build_request(f"/{reader}", wire, headers=[("Content-Encoding", "gzip")])
    response = await send(port, head)
    assert (413, "body_too_large") == (response.status, response.error), response
    assert 8 * MiB == response.json()["limit"]


async def test_gzip_bomb_costs_little_memory(port: int) -> None:
    """A 500 MiB gzip bomb (about 500 KiB on the wire) is 413 at the limit, and the
    server's RSS grows by far less than the bomb (the limit, at most)."""
    bomb = gzip.compress(b"\0" * (500 * MiB), compresslevel=9)
    rss = psutil.Process().memory_info().rss
    head = build_request("/read", bomb, headers=[("Content-Encoding", "gzip")])
    response = await send(port, head)
    grown = psutil.Process().memory_info().rss - rss
    assert (413, 8 * MiB) == (response.status, response.json()["limit"])
    assert grown < 64 * MiB, grown


async def test_declared_oversize_is_early_413_only_without_coding(port: int) -> None:
    """Content-Length above the limit with no coding: 413 before the body is read. With
    a coding the same Content-Length is a compressed size, so the body is read."""
    head = build_request("/body", b"", content_length=9 * MiB)
    response = await send(port, head)
    assert (413, 8 * MiB) == (response.status, response.json()["limit"])


# -- defect 3: an undecodable coded body is 400, not 500 -----------------------------------


@pytest.mark.parametrize("reader", sorted(READERS))
async def test_undecodable_coded_body_is_400_without_an_error_log(
    port: int, reader: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`Content-Encoding: gzip` on a body that is not gzip: 400
    `invalid_content_encoding` on every route, whatever reads the body, no ERROR log."""
    ctype = "multipart/form-data; boundary=xyzzy" if reader == "multipart" else "text/plain"
    if reader == "post":
        ctype = "application/x-www-form-urlencoded"
    head = build_request(
        f"/{reader}", DOC, content_type=ctype, headers=[("Content-Encoding", "gzip")]
    )
    response = await send(port, head)
    assert (400, "invalid_content_encoding") == (response.status, response.error), response
    assert [] == no_errors(caplog)


# -- defect 4: every read under the middleware is cut off at the limit --------------------


def multipart_body(size: int, boundary: str = "xyzzy") -> bytes:
    return (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\n').encode()
        + b"m" * size
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize(("prefix", "limit"), [("", 8 * MiB), ("deco/", MiB)])
@pytest.mark.parametrize("reader", sorted(READERS))
async def test_chunked_body_past_the_limit_is_413_whatever_reads_it(
    port: int, reader: str, prefix: str, limit: int
) -> None:
    """A chunked body past the limit (a 50 MiB multipart part under the app's 8 MiB,
    or under `@with_arena(limit="1MiB")`) is 413 for `read_json`, `read_body`, `read()`,
    `text()`, `post()`, `multipart()` and `request.content` reads."""
    ctype = "multipart/form-data; boundary=xyzzy"
    head = build_request(f"/{prefix}{reader}", content_type=ctype, chunked_body=True)
    async with await Conn.open(port) as conn:
        await conn.send(head)
        sender = asyncio.ensure_future(
            conn.send(chunked(multipart_body(50 * MiB), [256 * KiB]), timeout=30)
        )
        response = await conn.response(timeout=30)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert (413, "body_too_large", limit) == (
        response.status,
        response.error,
        response.json()["limit"],
    ), response


@pytest.mark.parametrize("reader", ["read", "text", "post", "multipart", "content"])
async def test_chunked_body_within_the_limit_is_read_by_every_api(port: int, reader: str) -> None:
    """The limit cuts nothing short: a chunked multipart body of 2 MiB under the 8 MiB
    limit is read whole by each API."""
    ctype = "multipart/form-data; boundary=xyzzy"
    body = multipart_body(2 * MiB)
    head = build_request(f"/{reader}", content_type=ctype, chunked_body=True)
    response = await send(port, head, chunked(body, [64 * KiB]))
    assert 200 == response.status, response


# -- defect 5: Expect: 100-continue with a declared oversize --------------------------------


@pytest.mark.parametrize(("path", "limit"), [("/body", 8 * MiB), ("/deco/body", MiB)])
async def test_expect_continue_with_declared_oversize_gets_413_instead_of_100(
    port: int, path: str, limit: int
) -> None:
    """`Expect: 100-continue` and a declared body over the route's limit: the first
    answer is 413 (never `100 Continue`), and the connection closes. Within the limit
    the answer is 100 and then 200."""
    head = build_request(path, b"", content_length=limit + 1, headers=[("Expect", "100-continue")])
    async with await Conn.open(port) as conn:
        await conn.send(head)
        response = await conn.response()
        assert (413, limit) == (response.status, response.json()["limit"]), response
        assert response.closed
    small = b"z" * 1000
    head = build_request(path, b"", content_length=len(small), headers=[("Expect", "100-continue")])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        writer.write(small)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert final.startswith(b"HTTP/1.1 200"), final
    finally:
        writer.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_expect_continue_never_uploads_an_oversize_body(port: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """curl with `Expect: 100-continue` and a 50 MiB file against the 8 MiB limit gets
    413 and uploads (almost) nothing: curl's own count of bytes sent stays far below."""
    upload = tmp_path / "big.bin"
    with upload.open("wb") as f:
        f.truncate(50 * MiB)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
        "-H", "Expect: 100-continue", "-H", "Content-Type: application/octet-stream",
        "--expect100-timeout", "30", "--data-binary", f"@{upload}",
        f"http://127.0.0.1:{port}/body",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    status, uploaded = out.decode().split()
    assert "413" == status
    assert float(uploaded) < MiB, uploaded
