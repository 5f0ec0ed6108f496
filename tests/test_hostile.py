"""Hostile clients against a real server: each case gets its documented outcome, and the
pool is idle and the server still serves a normal request afterwards.

The cases and their outcomes are the table in ``harness.hostile.CASES`` (printed in
docs/reliability.md); every test here checks one row, or one defence behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from arenapool.aiohttp import FIRST_STEP
from harness.hostile import CASES, Target, cases_table, digest, hostile_server
from harness.http import RawResponse, build_request, chunked
from harness.idle import until, wait_idle

KiB = 1024
MiB = 1024 * KiB
BODY = orjson.dumps({"items": list(range(50)), "name": "hostile"})


def check(case: str, response: RawResponse) -> None:
    """The response is the documented outcome of ``case``."""
    expected = CASES[case].expected
    if expected.status is None:
        assert (None, True) == (response.status, response.closed), response
        return
    assert (expected.status, expected.error) == (response.status, response.error), response
    if expected.closes:
        assert response.closed, response


@pytest.fixture
async def server() -> AsyncIterator[Target]:
    async with hostile_server(limit="1MiB", body_timeout=2.0, queue_timeout=0.5) as srv:
        yield srv


def server_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- refusals before and during the read ------------------------------------------------


async def test_declared_oversize_refused_before_the_handler_runs(server: Target) -> None:
    """Content-Length above the limit: 413 `body_too_large` with only the head sent, and
    the handler never runs."""
    conn = await server.connect()
    await conn.send(build_request("/echo", b"", content_length=2 * MiB))
    response = await conn.response()
    check("declared_oversize", response)
    assert response.json()["limit"] == MiB
    assert 0 == server.calls.get("/echo", 0)
    assert 1 == server.route("/echo")["status_413"]
    await server.healthy()


async def test_chunked_body_past_the_limit_is_cut_off(server: Target) -> None:
    """A chunked body streaming past the limit gets 413 `body_too_large` and a close."""
    conn = await server.connect()
    await conn.send(build_request("/raw", chunked_body=True))
    await conn.send(chunked(b"x" * (MiB + 1), [64 * KiB]))
    check("chunked_oversize", await conn.response())
    await server.healthy()


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("size", [100 * KiB, 3 * MiB // 4], ids=["eager", "incremental"])
async def test_aborted_upload_is_an_incomplete_body_not_a_server_error(
    server: Target, caplog: pytest.LogCaptureFixture, how: str, size: int
) -> None:
    """A client that closes (FIN) or resets (RST) mid-body frees its budget; the server
    counts a 400 `incomplete_body` and logs no error."""
    conn = await server.connect()
    await conn.send(build_request("/raw", b"x" * 1000, content_length=size))
    await until(lambda: server.route("/raw").get("in_flight") == 1, what="the handler")
    conn.close() if how == "close" else conn.abort()
    await until(lambda: server.route("/raw").get("status_400") == 1, what="a 400")
    await server.healthy()
    assert [] == server_errors(caplog)


async def test_slowloris_gets_body_timeout(server: Target) -> None:
    """A client that trickles a few bytes of a large declared body gets 408
    `body_timeout` and a close after `body_timeout`."""
    conn = await server.connect()
    await conn.send(build_request("/raw", b"", content_length=MiB // 2))
    await conn.trickle(b"abcde", gap=0.02)
    check("slowloris", await conn.response())
    assert 1 == server.route("/raw")["status_408"]
    await server.healthy()


async def test_content_length_longer_than_body_times_out(server: Target) -> None:
    """Content-Length longer than what is sent, client waiting: 408 `body_timeout`."""
    conn = await server.connect()
    await conn.send(build_request("/echo", BODY, content_length=len(BODY) + 100))
    check("length_long", await conn.response())
    await server.healthy()


async def test_content_length_longer_then_half_close(server: Target) -> None:
    """Content-Length longer than what is sent, then a half-close: the server sees the
    connection end, closes without an answer, and frees the budget."""
    conn = await server.connect()
    await conn.send(build_request("/echo", BODY, content_length=len(BODY) + 100))
    conn.shutdown_write()
    assert await conn.closed_by_server()
    await server.healthy()


async def test_content_length_shorter_than_body(server: Target) -> None:
    """Content-Length shorter than the bytes sent: the excess is parsed as the next
    request, aiohttp rejects it with 400 and closes; anything answered before that is
    the route's answer to the declared prefix."""
    conn = await server.connect()
    await conn.send(build_request("/echo", BODY, content_length=10))
    *first, last = await conn.drain()
    check("length_short", last)
    assert all((400, "invalid_json") == (r.status, r.error) for r in first), first
    await server.healthy()


async def test_bad_chunk_framing_in_first_packet(server: Target) -> None:
    """A malformed chunk-size line arriving with the head: aiohttp answers 400 and
    closes; the handler never runs."""
    conn = await server.connect()
    await conn.send(build_request("/echo", chunked_body=True) + b"zz\r\n[1]\r\n0\r\n\r\n")
    [response] = await conn.drain()
    check("bad_chunk_framing", response)
    assert 0 == server.calls.get("/echo", 0)
    await server.healthy()


async def test_bad_chunk_framing_mid_body(server: Target) -> None:
    """A malformed chunk-size line after the handler started reading: aiohttp's parser
    drops the body stream without failing it, so the read stalls until `body_timeout`
    (408) — the budget is held at most that long."""
    conn = await server.connect()
    await conn.send(build_request("/echo", chunked_body=True) + b"3\r\n[1,")
    await until(lambda: server.route("/echo").get("in_flight") == 1, what="the handler")
    await conn.send(b"\r\nzz\r\n2]\r\n0\r\n\r\n")
    check("bad_chunk_framing_mid_body", await conn.response())
    await server.healthy()


# -- bad JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("malformed_json", b'{"a": [1, 2,}'),
        ("deep_json", b"[" * 100_000 + b"]" * 100_000),
        ("invalid_utf8", b'{"a": "\xff\xfe"}'),
        ("huge_number", b"[" + b"9" * 10_000 + b"]"),
        ("empty_body", b""),
    ],
)
async def test_bad_json_gets_400_invalid_json(server: Target, case: str, body: bytes) -> None:
    """Malformed, deeply nested, invalid UTF-8, out-of-range and empty documents get 400
    `invalid_json` with a byte position, on a connection that stays usable."""
    conn = await server.connect()
    await conn.send(build_request("/echo", body))
    response = await conn.response()
    check(case, response)
    assert isinstance(response.json()["position"], int)
    await conn.send(build_request("/echo", BODY))  # the same connection still works
    assert (await conn.response()).json()["sha256"] == digest(BODY)
    await server.healthy()


async def test_malformed_json_position_is_the_byte_offset(server: Target) -> None:
    """The position in `invalid_json` counts bytes, multi-byte characters included."""
    body = '{"é→": [1, 2,}'.encode()
    response = await server.request("/echo", body)
    assert (400, body.index(b"}")) == (response.status, response.json()["position"])


async def test_duplicate_keys_last_one_wins(server: Target) -> None:
    """`{"a": 1, "a": 2}` is accepted (200) and decodes to its last value."""
    body = b'{"a": 1, "a": 2}'
    conn = await server.connect()
    await conn.send(build_request("/echo?echo=1", body))
    response = await conn.response()
    check("duplicate_keys", response)
    assert {"a": 2} == response.json()["echo"]
    await server.healthy()


async def test_wrong_content_type_with_strict_content_type() -> None:
    """With strict_content_type=True a text/plain body to a JSON route gets 415
    `unsupported_media_type`, unread."""
    async with hostile_server(strict_content_type=True) as srv:
        response = await srv.request("/echo", BODY, content_type="text/plain")
        check("wrong_content_type", response)
        assert 0 == srv.route("/echo")["bytes_read"]
        await srv.healthy()


# -- handler faults ---------------------------------------------------------------------


async def test_handler_exception_returns_everything(server: Target) -> None:
    """A handler that raises after reading and borrowing: 500, arena and object back."""
    logging.getLogger("aiohttp.server").disabled = True  # the injected fault is logged
    try:
        check("handler_error", await server.request("/boom", BODY))
    finally:
        logging.getLogger("aiohttp.server").disabled = False
    await server.healthy()


async def test_server_side_cancellation_returns_everything(server: Target) -> None:
    """A handler whose task is cancelled after reading and borrowing: the connection
    closes, arena and object come back."""
    check("cancelled", await server.request("/cancel", BODY))
    assert 1 == server.calls["/cancel"]
    await server.healthy()


async def test_client_disconnect_cancels_the_handler() -> None:
    """With handler_cancellation=True, a client that leaves while its handler works
    cancels it: the handler never finishes and arena and object come back."""
    async with hostile_server(handler_cancellation=True) as srv:
        conn = await srv.connect()
        await conn.send(build_request("/slow?ms=5000", BODY))
        await until(lambda: srv.calls.get("/slow") == 1, what="the handler")
        await until(lambda: srv.objects.in_use == 1, what="the borrow")
        conn.close()
        await wait_idle(srv.pool, [srv.objects])
        assert "/slow done" not in srv.calls
        await srv.healthy()


# -- slow readers, pipelining, many connections -------------------------------------------


async def test_slow_readers_hold_no_arena_memory(server: Target) -> None:
    """Clients with a tiny receive buffer that do not read a large response: every arena
    is released while the responses are still unsent, other clients are served, and
    each response arrives whole and correct when finally read."""
    docs = [{"reader": i, "rows": ["x" * 100] * 4000} for i in range(4)]
    conns = []
    for doc in docs:
        conn = await server.connect(rcvbuf=4096, read_size=4096)
        await conn.send(build_request("/echo?echo=1", orjson.dumps(doc)))
        conns.append(conn)
    await until(lambda: server.calls.get("/echo") == len(docs), what="the handlers")
    await wait_idle(server.pool, [server.objects])
    await server.check_echo()
    for doc, conn in zip(docs, conns, strict=True):
        response = await conn.response()
        check("slow_reader", response)
        assert (doc, digest(orjson.dumps(doc))) == (
            response.json()["echo"],
            response.json()["sha256"],
        )
    await server.healthy()


async def test_pipelined_requests_answered_in_order(server: Target) -> None:
    """Ten requests in one write (JSON, raw, chunked) get ten correct answers in order."""
    bodies = [orjson.dumps({"i": i, "pad": "p" * (i * 997)}) for i in range(10)]
    wire = b""
    for i, body in enumerate(bodies):
        if i % 3 == 2:
            wire += build_request("/raw", chunked_body=True) + chunked(body, [100])
        else:
            wire += build_request("/echo" if i % 3 == 0 else "/raw", body)
    conn = await server.connect()
    await conn.send(wire)
    for body in bodies:
        response = await conn.response()
        check("pipelined", response)
        assert digest(body) == response.json()["sha256"]
    await server.healthy()


async def test_many_concurrent_connections(server: Target) -> None:
    """200 connections sending at once all get correct answers; the pool ends idle."""

    async def one(i: int) -> bool:
        body = orjson.dumps({"client": i, "pad": "z" * (i * 301 % 20_000)})
        conn = await server.connect()
        try:
            await conn.send(build_request("/echo", body))
            response = await conn.response(timeout=30)
        finally:
            conn.close()
        return response.status == 200 and response.json()["sha256"] == digest(body)

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert [True] * 200 == results
    await server.healthy()


# -- the memory budget under hostile load ------------------------------------------------


async def _hog(srv: Target, declared: int, *, sent: bytes = b"x") -> None:
    """A slow sender: declares ``declared`` bytes, sends ``sent``, then waits."""
    conn = await srv.connect()
    await conn.send(build_request("/raw", sent, content_length=declared))


async def test_slowloris_connections_hold_one_small_step_each() -> None:
    """Eight slow senders declaring 4 MiB each hold one FIRST_STEP block each (16 KiB,
    not 32 MiB: budget follows bytes received), and a normal client gets 200 meanwhile."""
    async with hostile_server(limit="8MiB", body_timeout=30.0) as srv:
        step = srv.pool.block_size(FIRST_STEP)
        for _ in range(8):
            await _hog(srv, 4 * MiB, sent=b"abc")
        await until(lambda: srv.route("/raw").get("in_flight") == 8, what="8 handlers")
        await until(lambda: srv.pool.lent_bytes == 8 * step, what="8 first steps")
        await srv.check_echo()
        assert 8 * step == srv.pool.stats()["lent_bytes"]
        for conn in srv.conns:
            conn.abort()
        await srv.healthy()


async def test_slow_sender_holds_one_step_until_it_has_sent_one() -> None:
    """A sender of a declared 4 MiB body holds one FIRST_STEP block and no admission
    while it has sent less than that step; once it has, its whole body is admitted
    (a ticket keeps room for it, so it can always finish) and read into one block of
    its declared size, filled in place; at the end the body is all there."""
    async with hostile_server(limit="8MiB", body_timeout=30.0) as srv:
        declared = 4 * MiB
        step = srv.pool.block_size(FIRST_STEP)
        conn = await srv.connect()
        await conn.send(build_request("/raw", b"", content_length=declared))
        await conn.send(b"y" * (10 * KiB))
        await until(lambda: srv.pool.lent_bytes == step, what="a first step")
        admission = srv.pool.stats()["admission"]
        # judged on its head: expected (pending), nothing reserved
        before = (srv.pool.lent_bytes, admission["admitted_bytes"], admission["pending_bytes"] > 0)
        await conn.send(b"y" * (100 * KiB))
        await until(lambda: srv.pool.lent_bytes == declared, what="the body admitted")
        admission = srv.pool.stats()["admission"]
        after = (srv.pool.lent_bytes, admission["admitted_bytes"] > 0, admission["pending_bytes"])
        await conn.send(b"y" * (declared - 110 * KiB))
        response = await conn.response()
        assert (step, 0, True) == before
        assert (declared, True, 0) == after
        assert (200, declared) == (response.status, response.json()["nbytes"])
        await srv.healthy()


async def test_body_timeout_cuts_off_slowloris() -> None:
    """Six slow senders are cut off at `body_timeout` with 408 and their budget comes
    back."""
    async with hostile_server(limit="8MiB", body_timeout=0.5) as srv:
        for _ in range(6):
            await _hog(srv, 2 * MiB)
        await until(lambda: srv.route("/raw").get("in_flight") == 6, what="6 handlers")
        for conn in list(srv.conns):
            check("slowloris", await conn.response())
        assert 6 == srv.route("/raw")["status_408"]
        assert 0 == srv.pool.stats()["admission"]["pending_bytes"]  # none left expected
        await srv.healthy()


async def test_body_below_the_minimum_rate_is_cut_off_after_the_grace() -> None:
    """A sender that keeps trickling (so never idle) but stays below `body_min_rate`
    after `body_grace` gets 408 long before `body_timeout`."""
    async with hostile_server(
        limit="8MiB", body_timeout=60.0, body_min_rate=100_000, body_grace=0.3
    ) as srv:
        conn = await srv.connect()
        await conn.send(build_request("/raw", b"", content_length=MiB))
        trickle = asyncio.ensure_future(conn.trickle(b"a" * 200, gap=0.05))
        response = await conn.response()
        trickle.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickle
        check("slowloris", response)
        assert "minimum rate" in response.json()["detail"]
        await srv.healthy()


class _Filler:
    """Holds the pool's budget in blocks of ``size``, one arena each (the stand-in for
    requests that hold budget while they work)."""

    def __init__(self, srv: Target, blocks: int, size: int) -> None:
        self.arenas = []
        for _ in range(blocks):
            arena = srv.pool.arena()
            arena.alloc(size)
            self.arenas.append(arena)

    def free(self, count: int | None = None) -> None:
        for arena in self.arenas[:count]:
            arena.release()


async def _fill_budget(srv: Target, blocks: int, size: int = 256 * KiB) -> _Filler:
    filler = _Filler(srv, blocks, size)
    await until(lambda: srv.pool.available == 0, what="the budget to fill")
    return filler


async def test_budget_exhausted_after_queue_timeout() -> None:
    """With the budget held, a request waits `queue_timeout` and gets 503
    `budget_exhausted` with Retry-After; once budget is back, requests succeed again."""
    async with hostile_server(budget="1MiB", limit="1MiB", queue_timeout=0.2) as srv:
        filler = await _fill_budget(srv, 4)
        response = await srv.request("/raw", BODY)
        check("budget_exhausted", response)
        assert ("1", 1) == (response.headers["retry-after"], response.json()["retry_after"])
        assert 1 == srv.pool.stats()["wait_timeouts"]
        filler.free()
        await srv.healthy()


async def test_max_waiters_sheds_at_once() -> None:
    """With `max_waiters` requests already waiting, the next is shed with 503 at once,
    while the waiter is still queued; the waiter is served when budget frees."""
    async with hostile_server(
        budget="1MiB", limit="1MiB", queue_timeout=30.0, max_waiters=1
    ) as srv:
        filler = await _fill_budget(srv, 4)
        waiter = await srv.connect()
        await waiter.send(build_request("/raw", BODY))
        await until(lambda: srv.pool.stats()["waiting"] == 1, what="a waiter")
        shed = await srv.request("/raw", BODY)
        check("waiters_full", shed)
        assert (1, 1) == (srv.pool.stats()["shed"], srv.pool.stats()["waiting"])
        filler.free()
        response = await waiter.response()
        assert (200, len(BODY)) == (response.status, response.json()["nbytes"])
        await srv.healthy()


async def test_budget_waits_are_fifo() -> None:
    """Waiters are served in arrival order: a small request behind a larger one does
    not overtake it even when the small one would fit first."""
    async with hostile_server(budget="1MiB", limit="1MiB", queue_timeout=30.0) as srv:
        filler = await _fill_budget(srv, 64, FIRST_STEP)
        sizes = {"A": FIRST_STEP, "B": 10, "C": 10}
        for n, (name, size) in enumerate(sizes.items(), start=1):
            conn = await srv.connect()
            await conn.send(build_request("/raw", b"q" * size, headers=[("X-Id", name)]))
            await until(lambda n=n: srv.pool.stats()["waiting"] == n, what=f"waiter {name}")
        filler.free(1)  # frees exactly one FIRST_STEP block: only A fits, B and C queue on
        await until(lambda: len(srv.seen) == 3, what="all three waiters")
        assert ["A", "B", "C"] == srv.seen
        filler.free()
        await srv.healthy()


async def test_client_leaving_while_waiting_gives_up_its_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that disconnects while its request waits for budget leaves the queue
    at once (not at `queue_timeout`); it counts as a 400, and no error is logged."""
    async with hostile_server(budget="1MiB", limit="1MiB", queue_timeout=30.0) as srv:
        filler = await _fill_budget(srv, 4)
        waiter = await srv.connect()
        await waiter.send(build_request("/raw", BODY))
        await until(lambda: srv.pool.stats()["waiting"] == 1, what="a waiter")
        waiter.abort()
        await until(lambda: srv.pool.stats()["waiting"] == 0, what="the waiter to leave")
        await until(lambda: srv.route("/raw").get("status_400") == 1, what="a 400")
        assert 0 == srv.pool.stats()["wait_timeouts"]
        filler.free()
        await srv.healthy()
    assert [] == server_errors(caplog)


async def test_many_slow_senders_cannot_starve_everyone() -> None:
    """200 slow senders, each declaring 1 MiB against a 64 MiB budget and sending a few
    bytes (what `slowhttptest -B` does), hold one small step each: lent budget stays
    at 200 x FIRST_STEP, far below the budget, and 20 normal requests all get 200."""
    async with hostile_server(budget="64MiB", limit="8MiB", body_timeout=30.0) as srv:
        for _ in range(200):
            await _hog(srv, MiB, sent=b"data=")
        await until(lambda: srv.route("/raw").get("in_flight") == 200, what="200 handlers")
        lent = srv.pool.lent_bytes
        assert lent <= 200 * srv.pool.block_size(FIRST_STEP)
        responses = await asyncio.gather(*(srv.request("/echo", BODY) for _ in range(20)))
        assert [200] * 20 == [r.status for r in responses]
        for conn in srv.conns:
            conn.abort()
        await srv.healthy()


def test_documented_outcomes_table_is_current() -> None:
    """docs/reliability.md prints the outcome table these tests check, unchanged."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
    assert cases_table() in docs.read_text(encoding="utf-8")
