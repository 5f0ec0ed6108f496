"""Isolation: a handler that keeps arena views past its request (the view itself, a
sub-slice, a ``memoryview`` of it, a ctypes array over it) never lets a later request
see or change those bytes, and each escape is reported with the route.

Every body is filled with a marker unique to its request. Later requests scan the body
they read and, with ``scrub=True``, fresh uninitialised arena memory for any earlier
marker; the test checks after each of them that every stashed view still holds exactly
its own bytes (its block is quarantined, so no later request was given it).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from arenapool import SlabPool, ViewEscapedWarning
from arenapool.aiohttp import ROUTE_STATS_KEY, get_arena, json_response, read_body, setup
from harness.http import Conn, build_request, chunked
from harness.idle import until, wait_idle
from harness.server import serve

KiB = 1024
#: body sizes of the stashing and scanning requests: a shared first chunk, a block of
#: its own, and bodies read incrementally (declared > 256 KiB) or chunked (growing)
SIZES = [300, 5 * KiB, 70 * KiB, 300 * KiB]
#: fresh allocations a scanning request makes (and scans, with scrub=True)
FRESH = [64, 4 * KiB, 8 * KiB, 64 * KiB, 70 * KiB, 128 * KiB, 200 * KiB, 256 * KiB, 1100 * KiB]

KEEPERS: dict[str, Callable[[memoryview], Any]] = {
    "view": lambda view: view,
    "slice": lambda view: view[1:],
    "memoryview": memoryview,
    "ctypes": lambda view: (ctypes.c_char * view.nbytes).from_buffer(view),
}


def kept_bytes(kept: Any) -> bytes:
    return kept.raw if isinstance(kept, ctypes.Array) else bytes(kept)


def isolation_app(
    pool: SlabPool, kind: str, stash: list[Any], markers: list[bytes]
) -> web.Application:
    keep = KEEPERS[kind]

    async def stash_handler(request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        stash.append(keep(body))
        return json_response({"nbytes": body.nbytes})

    async def scan(request: web.Request) -> web.StreamResponse:
        body = bytes(await read_body(request))
        arena = get_arena(request)
        fresh = b"".join(bytes(arena.alloc(n)) for n in FRESH)
        return json_response(
            {
                "in_body": [m.decode() for m in markers if m in body],
                "in_fresh": [m.decode() for m in markers if m in fresh],
            }
        )

    app = web.Application()
    setup(app, pool=pool, limit="4MiB")
    app.router.add_post(f"/stash/{kind}", stash_handler)
    app.router.add_post("/scan", scan)
    return app


def body_of(marker: bytes, size: int) -> bytes:
    return (marker * (size // len(marker) + 1))[:size]


async def send(conn: Conn, path: str, body: bytes, *, chunks: bool) -> dict[str, Any]:
    if chunks:
        await conn.send(build_request(path, chunked_body=True) + chunked(body, [4096, 65536]))
    else:
        await conn.send(build_request(path, body, content_type="application/octet-stream"))
    response = await conn.response()
    assert 200 == response.status, response
    result: dict[str, Any] = orjson.loads(response.body)
    return result


async def stash_and_scan(
    kind: str, scrub: bool, *, warns: contextlib.AbstractContextManager[Any]
) -> tuple[SlabPool, web.Application, list[Any], list[bytes]]:
    """Send stashing requests under ``warns``, then scanning ones; check as we go."""
    pool = SlabPool("64MiB", decay=None, scrub=scrub, name="isolation")
    stash: list[Any] = []
    stashed: list[bytes] = []  # what each stashing request sent
    markers: list[bytes] = []
    app = isolation_app(pool, kind, stash, markers)
    async with serve(app) as port:
        conn = await Conn.open(port)
        try:
            with warns:
                for i, size in enumerate(SIZES * 2):
                    marker = f"<kept-{i}-{uuid.uuid4().hex}>".encode()
                    markers.append(marker)
                    stashed.append(body_of(marker, size))
                    await send(conn, f"/stash/{kind}", stashed[-1], chunks=i >= len(SIZES))
            for j, size in enumerate(SIZES * 3):
                own = f"<later-{j}-{uuid.uuid4().hex}>".encode()
                answer = await send(conn, "/scan", body_of(own, size), chunks=j % 2 == 1)
                assert [] == answer["in_body"]
                if scrub:  # not even uninitialised arena memory shows an earlier body
                    assert [] == answer["in_fresh"]
                if kind != "view":  # nobody was given those blocks: the bytes are intact
                    skip = 1 if kind == "slice" else 0
                    assert [b[skip:] for b in stashed] == [kept_bytes(k) for k in stash]
                markers.append(own)
        finally:
            conn.close()
    return pool, app, stash, stashed


@pytest.mark.parametrize("scrub", [False, True], ids=["plain", "scrub"])
@pytest.mark.parametrize("kind", ["slice", "memoryview", "ctypes"])
async def test_kept_subviews_are_quarantined_isolated_and_reported(kind: str, scrub: bool) -> None:
    """A handler keeping a sub-slice, a memoryview or a ctypes array over its body: each
    is an escape reported with a ViewEscapedWarning naming the route and counted in the
    route's `escapes`; its block is quarantined, so later requests never see, get or
    overwrite those bytes; once the views are dropped the pool is idle."""
    route = f"POST /stash/{kind}"
    warns = pytest.warns(ViewEscapedWarning, match=re.escape(f"arena {route!r}"))
    pool, app, stash, stashed = await stash_and_scan(kind, scrub, warns=warns)
    assert len(stashed) == sum(issubclass(w.category, ViewEscapedWarning) for w in warns)
    assert len(stashed) == app[ROUTE_STATS_KEY].snapshot()[route]["escapes"]
    assert len(stashed) == pool.stats()["quarantined_blocks"]
    stash.clear()
    await wait_idle(pool)
    pool.close()


@pytest.mark.parametrize("scrub", [False, True], ids=["plain", "scrub"])
async def test_kept_view_itself_is_released(scrub: bool) -> None:
    """A handler keeping the body view itself keeps a released view (using it raises),
    not the bytes: no escape, nothing quarantined, and later requests are isolated."""
    pool, app, stash, stashed = await stash_and_scan(
        "view",
        scrub,
        warns=contextlib.nullcontext(),  # filterwarnings=error: none allowed
    )
    assert 0 == app[ROUTE_STATS_KEY].snapshot()["POST /stash/view"]["escapes"]
    assert len(stashed) == len(stash)
    for kept in stash:
        with pytest.raises(ValueError, match="released"):
            bytes(kept)
    await wait_idle(pool)
    pool.close()


async def test_scrub_covers_blocks_a_growing_body_left_behind() -> None:
    """With scrub=True, the smaller blocks a chunked body outgrew (given back while it
    was still arriving) are zeroed too: a later request's fresh memory never shows
    their bytes."""
    pool = SlabPool("64MiB", decay=None, scrub=True, name="isolation")
    marker = f"<grown-{uuid.uuid4().hex}>".encode()
    markers = [marker]
    app = isolation_app(pool, "view", [], markers)
    async with serve(app) as port:
        conn = await Conn.open(port)
        try:
            await conn.send(build_request("/stash/view", chunked_body=True))
            piece = body_of(marker, 60 * KiB)
            for sent in range(1, 5):  # each piece outgrows the block: 64 -> 128 -> 256 KiB
                await conn.send(chunked(piece, end=False))
                need = 64 * KiB * 2 ** ((sent * 60 - 1) // 64).bit_length()
                await until(lambda need=need: pool.lent_bytes == need, what=f"a {need} block")
            await conn.send(b"0\r\n\r\n")
            assert 200 == (await conn.response()).status
            answer = await send(conn, "/scan", b"x" * 100, chunks=False)
            assert [] == answer["in_fresh"]
        finally:
            conn.close()
    await wait_idle(pool)
    pool.close()
