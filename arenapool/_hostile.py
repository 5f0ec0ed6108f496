"""Hostile HTTP/1.1 clients over raw sockets, for the reliability tests and the chaos soak.

Theory of operation
-------------------
Every client here is one :class:`Conn`: a non-blocking TCP socket to 127.0.0.1 that
sends exactly the bytes it is told to and reads only when it is asked to, so a test can
lie about ``Content-Length``, break chunk framing, stop half-way, trickle bytes, or
never drain a response (with a tiny ``SO_RCVBUF``). Every operation is bounded: a read
takes a ``timeout`` and a trickle a count of pieces, so no case can hang a test run.

:data:`CASES` is the table of hostile cases and their *documented outcomes* (status,
``error`` code, whether the server closes the connection); the tests assert it, the
chaos soak counts against it and ``docs/reliability.md`` prints it. :func:`hostile_app`
builds the server the cases run against: routes that hash what they parsed (so every
answer can be checked against what was sent), borrow from an :class:`ObjectPool`
through the arena, raise, or cancel themselves. :func:`wait_idle` polls the pool (never
a fixed sleep) until everything lent has come back.

The module is package code (not under ``tests/``) so that ``benchmarks/chaos.py`` and
the test suite import the same harness without ``sys.path`` tricks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ._pool import ObjectPool
from ._slab import SlabPool
from .aiohttp import ROUTE_STATS_KEY, get_arena, json_response, read_body, read_json, setup

__all__ = [
    "CASES",
    "Case",
    "Conn",
    "Expected",
    "RawResponse",
    "Scratch",
    "Server",
    "build_request",
    "cases_table",
    "chunked",
    "digest",
    "hostile_app",
    "hostile_server",
    "is_idle",
    "serve",
    "until",
    "wait_idle",
]

HOST = "127.0.0.1"
#: a read that gets nothing for this long gives up (seconds)
READ_TIMEOUT = 10.0


# -- responses ----------------------------------------------------------------------


@dataclass
class RawResponse:
    """What came back on a connection: one response, or ``status None`` if none did."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: the server closed the connection (after this response, or instead of one)
    closed: bool = False

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> str | None:
        """The ``error`` code of an arenapool error body, else ``None``."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        code = data.get("error") if isinstance(data, dict) else None
        return code if isinstance(code, str) else None


class _Closed(Exception):
    """The peer closed the connection before a whole response arrived."""


# -- one raw connection ---------------------------------------------------------------


class Conn:
    """One raw HTTP/1.1 connection that does only what it is told.

    ``rcvbuf`` sets ``SO_RCVBUF`` before connecting (the kernel doubles it and keeps a
    floor), so a client that never reads stalls the server's writes early.
    """

    def __init__(
        self, sock: socket.socket, *, read_size: int = 256 * 1024, read_gap: float = 0.0
    ) -> None:
        self.sock = sock
        self.read_size = read_size
        self.read_gap = read_gap
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self.eof = False

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        host: str = HOST,
        rcvbuf: int | None = None,
        read_size: int = 256 * 1024,
        read_gap: float = 0.0,
        timeout: float = 5.0,
    ) -> Conn:
        """Connect. A slow reader reads ``read_size`` bytes at a time, ``read_gap`` apart."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock, read_size=read_size, read_gap=read_gap)

    async def __aenter__(self) -> Conn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def send(self, data: bytes, *, timeout: float = READ_TIMEOUT) -> bool:
        """Send all of ``data``; False if the server has closed the connection."""
        try:
            await asyncio.wait_for(self._loop.sock_sendall(self.sock, data), timeout)
        except (ConnectionError, OSError):
            return False
        return True

    async def trickle(self, data: bytes, *, piece: int = 1, gap: float = 0.01) -> int:
        """Send ``data`` ``piece`` bytes at a time, ``gap`` seconds apart (a slowloris).

        Stops early if the server closes; returns how many bytes were sent.
        """
        sent = 0
        for start in range(0, len(data), piece):
            if not await self.send(data[start : start + piece]):
                break
            sent = min(start + piece, len(data))
            await asyncio.sleep(gap)
        return sent

    def shutdown_write(self) -> None:
        """Half-close: the server sees end of stream; we can still read."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close with FIN."""
        self.sock.close()

    def abort(self) -> None:
        """Close with RST (``SO_LINGER`` 0): the server sees a reset, not an EOF."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    async def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if self.read_gap:
            await asyncio.sleep(self.read_gap)
        try:
            data = await asyncio.wait_for(
                self._loop.sock_recv(self.sock, self.read_size), remaining
            )
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            raise _Closed
        self._buf += data

    async def _read_until(self, sep: bytes, deadline: float) -> bytes:
        while (at := self._buf.find(sep)) < 0:
            await self._fill(deadline)
        line = bytes(self._buf[: at + len(sep)])
        del self._buf[: at + len(sep)]
        return line

    async def _read_exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            await self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def response(self, *, timeout: float = READ_TIMEOUT) -> RawResponse:
        """Read one response; ``status None, closed True`` if the server closed first.

        Raises :class:`TimeoutError` if nothing complete arrives within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        try:
            head = await self._read_until(b"\r\n\r\n", deadline)
        except _Closed:
            return RawResponse(status=None, closed=True)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        try:
            body = await self._read_body(headers, deadline)
        except _Closed:
            return RawResponse(status=status, headers=headers, body=b"", closed=True)
        closed = headers.get("connection", "").lower() == "close" or self.eof
        return RawResponse(status=status, headers=headers, body=body, closed=closed)

    async def _read_body(self, headers: dict[str, str], deadline: float) -> bytes:
        if "content-length" in headers:
            return await self._read_exactly(int(headers["content-length"]), deadline)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int((await self._read_until(b"\r\n", deadline)).split(b";")[0], 16)
                if size == 0:
                    await self._read_until(b"\r\n", deadline)
                    return b"".join(parts)
                parts.append(await self._read_exactly(size, deadline))
                await self._read_exactly(2, deadline)
        with contextlib.suppress(_Closed):  # a body delimited by the connection closing
            while True:
                await self._fill(deadline)
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def drain(self, *, timeout: float = READ_TIMEOUT) -> list[RawResponse]:
        """Every response until the server closes (the last one is marked ``closed``)."""
        responses: list[RawResponse] = []
        while True:
            response = await self.response(timeout=timeout)
            if response.status is None:
                if responses:
                    responses[-1].closed = True
                else:
                    responses.append(response)
                return responses
            responses.append(response)
            if response.closed:
                return responses

    async def closed_by_server(self, *, timeout: float = READ_TIMEOUT) -> bool:
        """Wait (bounded) for the server to close; True if it did, False on bytes."""
        if self._buf:
            return False
        try:
            await self._fill(time.monotonic() + timeout)
        except _Closed:
            return True
        except TimeoutError:
            return False
        return False


# -- requests -------------------------------------------------------------------------


def build_request(
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    content_type: str | None = "application/json",
    content_length: int | None = -1,
    chunked_body: bool = False,
    headers: Iterable[tuple[str, str]] = (),
    close: bool = False,
) -> bytes:
    """The head of a request (plus ``body`` unless it is chunked; frame that yourself).

    ``content_length=-1`` declares the true length; ``None`` declares none; any other
    value is declared as given (a lie, if it differs from ``len(body)``).
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if chunked_body:
        lines.append("Transfer-Encoding: chunked")
    elif content_length is not None:
        lines.append(f"Content-Length: {len(body) if content_length == -1 else content_length}")
    if close:
        lines.append("Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if chunked_body else head + body


def chunked(body: bytes, sizes: Sequence[int] = (), *, end: bool = True) -> bytes:
    """Chunked framing of ``body`` in pieces of ``sizes`` (cycled; whole body if empty)."""
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(body):
        n = sizes[i % len(sizes)] if sizes else len(body)
        n = max(1, n)
        piece = body[pos : pos + n]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        pos += len(piece)
        i += 1
    if end:
        out += b"0\r\n\r\n"
    return bytes(out)


def digest(data: bytes | memoryview) -> str:
    """The hash every route answers with, so clients can check what the server read."""
    return hashlib.sha256(data).hexdigest()


# -- the documented outcomes ------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A documented outcome: ``status None`` means the connection closes, no response."""

    status: int | None
    error: str | None = None
    closes: bool = False

    def __str__(self) -> str:
        if self.status is None:
            return "connection closed"
        code = f" `{self.error}`" if self.error else ""
        return f"{self.status}{code}" + (", then close" if self.closes else "")


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    expected: Expected


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "declared_oversize",
            "Content-Length above the limit (the handler never runs)",
            Expected(413, "body_too_large", closes=True),
        ),
        Case(
            "chunked_oversize",
            "chunked body that streams past the limit",
            Expected(413, "body_too_large", closes=True),
        ),
        Case(
            "aborted_upload",
            "client closes (FIN or RST) mid-body; the server counts a 400 "
            "`incomplete_body` (with handler_cancellation=True the handler is cancelled)",
            Expected(None),
        ),
        Case(
            "slowloris",
            "large Content-Length, a few bytes trickled, then nothing",
            Expected(408, "body_timeout", closes=True),
        ),
        Case(
            "length_long",
            "Content-Length longer than the body sent (client waits)",
            Expected(408, "body_timeout", closes=True),
        ),
        Case(
            "length_short",
            "Content-Length shorter than the bytes sent: the excess is parsed as the next "
            "request, which aiohttp rejects (text/plain)",
            Expected(400, None, closes=True),
        ),
        Case(
            "bad_chunk_framing",
            "malformed chunk size in the first packet (aiohttp rejects it, text/plain)",
            Expected(400, None, closes=True),
        ),
        Case(
            "bad_chunk_framing_mid_body",
            "malformed chunk size after the handler started reading",
            Expected(408, "body_timeout", closes=True),
        ),
        Case(
            "malformed_json",
            "syntax error; the body carries the byte position",
            Expected(400, "invalid_json"),
        ),
        Case("deep_json", "arrays nested 100,000 deep", Expected(400, "invalid_json")),
        Case("invalid_utf8", "a string with invalid UTF-8", Expected(400, "invalid_json")),
        Case(
            "huge_number",
            "an integer of 10,000 digits (beyond float range)",
            Expected(400, "invalid_json"),
        ),
        Case("duplicate_keys", '`{"a": 1, "a": 2}`: the last one wins', Expected(200)),
        Case("empty_body", "POST with no body to a JSON route", Expected(400, "invalid_json")),
        Case(
            "wrong_content_type",
            "text/plain to a JSON route with strict_content_type=True",
            Expected(415, "unsupported_media_type"),
        ),
        Case(
            "budget_exhausted",
            "no budget frees up within queue_timeout (Retry-After set)",
            Expected(503, "budget_exhausted"),
        ),
        Case(
            "waiters_full",
            "max_waiters requests already wait for budget: shed at once (Retry-After set)",
            Expected(503, "budget_exhausted"),
        ),
        Case(
            "handler_error",
            "the handler raises (aiohttp's text/plain)",
            Expected(500, None, closes=True),
        ),
        Case("cancelled", "the handler's task is cancelled", Expected(None)),
        Case(
            "slow_reader",
            "client never drains a large response (tiny SO_RCVBUF); the arena is "
            "released before the response is written",
            Expected(200),
        ),
        Case("pipelined", "several requests in one write, answered in order", Expected(200)),
    )
}


def cases_table() -> str:
    """:data:`CASES` as the Markdown table in ``docs/reliability.md``."""
    rows = ["| case | what the client does | documented outcome |", "|---|---|---|"]
    rows += [f"| `{c.name}` | {c.what} | {c.expected} |" for c in CASES.values()]
    return "\n".join(rows) + "\n"


# -- the server under test ------------------------------------------------------------


class Scratch:
    """A reusable per-request scratch object, borrowed through the arena."""

    __slots__ = ("__weakref__", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []

    def reset(self) -> None:
        self.items.clear()


OBJECTS_KEY = web.AppKey("hostile.objects", ObjectPool)
#: handler calls per path (and ``"<path> done"`` for handlers that finished)
CALLS_KEY = web.AppKey("hostile.calls", dict)
#: the ``X-Id`` header of each ``/raw`` request, in the order its body was read
SEEN_KEY = web.AppKey("hostile.seen", list)


def _count(data: Any) -> int:
    return len(data) if isinstance(data, list | dict | str) else 1


async def _echo(request: web.Request) -> web.StreamResponse:
    """Parse JSON from the arena, answer its hash and item count (``?echo=1``: and it)."""
    _note(request)
    data = await read_json(request)
    body = await read_body(request)  # the same view, not a second read
    scratch: Scratch = get_arena(request).borrow(request.app[OBJECTS_KEY])
    scratch.items.append(data)
    answer: dict[str, Any] = {"sha256": digest(body), "nbytes": body.nbytes}
    answer["count"] = _count(data)
    if request.query.get("echo"):
        answer["echo"] = data
    return json_response(answer)


async def _raw(request: web.Request) -> web.StreamResponse:
    """Read any body into the arena; answer its hash and length."""
    _note(request)
    body = await read_body(request)
    request.app[SEEN_KEY].append(request.headers.get("X-Id"))
    return json_response({"sha256": digest(body), "nbytes": body.nbytes})


async def _boom(request: web.Request) -> web.StreamResponse:
    """Read the body, borrow an object, then fail with an ordinary exception."""
    _note(request)
    await read_json(request)
    get_arena(request).borrow(request.app[OBJECTS_KEY])
    msg = "boom (an injected handler fault)"
    raise RuntimeError(msg)


async def _cancel(request: web.Request) -> web.StreamResponse:
    """Read the body, then cancel the handler's own task (a server-side cancellation)."""
    _note(request)
    await read_json(request)
    get_arena(request).borrow(request.app[OBJECTS_KEY])
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.Event().wait()  # the cancellation lands here
    msg = "unreachable: the task was cancelled"  # pragma: no cover
    raise AssertionError(msg)  # pragma: no cover


async def _slow(request: web.Request) -> web.StreamResponse:
    """Read the body, then work for ``?ms=`` (at most 5 s) before answering."""
    _note(request)
    data = await read_json(request)
    get_arena(request).borrow(request.app[OBJECTS_KEY])
    await asyncio.sleep(min(float(request.query.get("ms", "100")), 5000.0) / 1000)
    _note(request, " done")
    return json_response({"count": _count(data)})


def _note(request: web.Request, suffix: str = "") -> None:
    calls: dict[str, int] = request.app[CALLS_KEY]
    key = request.path + suffix
    calls[key] = calls.get(key, 0) + 1


def hostile_app(pool: SlabPool, *, objects: int = 256, **options: Any) -> web.Application:
    """The app the hostile cases run against; ``options`` go to :func:`setup`.

    Routes: ``/echo`` (JSON: hash, count, ``?echo=1`` echoes), ``/raw`` (any body),
    ``/boom`` (raises), ``/cancel`` (cancels itself), ``/slow`` (works ``?ms=``).
    """
    app = web.Application()
    setup(app, pool=pool, **options)
    app[OBJECTS_KEY] = ObjectPool(Scratch, reset=Scratch.reset, maxsize=objects, name="scratch")
    app[CALLS_KEY] = {}
    app[SEEN_KEY] = []
    app.router.add_post("/echo", _echo)
    app.router.add_post("/raw", _raw)
    app.router.add_post("/boom", _boom)
    app.router.add_post("/cancel", _cancel)
    app.router.add_post("/slow", _slow)
    return app


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    *,
    handler_cancellation: bool = False,
    shutdown_timeout: float = 1.0,
    **runner_options: Any,
) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 on a free port; yields the port.

    ``handler_cancellation=False`` is aiohttp's production default (its test server
    turns it on): a client that leaves does not cancel its handler. On exit, handlers
    still running get ``shutdown_timeout`` seconds: after a refusal aiohttp keeps
    reading and discarding the unread body for up to ``lingering_time`` (10 s), even
    once the client has gone, and a test should not wait for that.
    """
    runner = web.AppRunner(
        app,
        handler_cancellation=handler_cancellation,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        **runner_options,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()


@dataclass
class Server:
    """A running :func:`hostile_app` and the raw connections opened to it."""

    app: web.Application
    pool: SlabPool
    port: int
    conns: list[Conn] = field(default_factory=list)

    @property
    def objects(self) -> ObjectPool[Scratch]:
        return self.app[OBJECTS_KEY]

    @property
    def calls(self) -> dict[str, int]:
        return self.app[CALLS_KEY]

    @property
    def seen(self) -> list[str | None]:
        return self.app[SEEN_KEY]

    def route(self, path: str, method: str = "POST") -> dict[str, int]:
        """This route's counters from ``app[ROUTE_STATS_KEY]`` (zeros if never hit)."""
        snapshot = self.app[ROUTE_STATS_KEY].snapshot()
        return snapshot.get(f"{method} {path}", {})

    async def connect(self, **options: Any) -> Conn:
        """A raw connection, closed when the server context ends if not before."""
        conn = await Conn.open(self.port, **options)
        self.conns.append(conn)
        return conn

    async def request(self, path: str, body: bytes = b"", **options: Any) -> RawResponse:
        """One request on a fresh connection (see :func:`build_request` for options)."""
        conn = await self.connect()
        try:
            await conn.send(build_request(path, body, **options))
            return await conn.response()
        finally:
            conn.close()

    async def check_echo(self, data: Any = None) -> None:
        """A well-behaved client gets a correct 200 from ``/echo``."""
        body = orjson.dumps(data if data is not None else {"ok": [1, 2, 3], "n": "é"})
        response = await self.request("/echo", body)
        if response.status != 200 or response.json()["sha256"] != digest(body):
            msg = f"a normal request failed: {response.status} {response.body[:200]!r}"
            raise AssertionError(msg)

    async def healthy(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Idle, still serving a normal request, and idle again; returns pool stats."""
        await wait_idle(self.pool, [self.objects], timeout=timeout)
        await self.check_echo()
        return await wait_idle(self.pool, [self.objects], timeout=timeout)


@contextlib.asynccontextmanager
async def hostile_server(
    *,
    budget: int | str = "64MiB",
    scrub: bool = False,
    decay: float | None = None,
    handler_cancellation: bool = False,
    **options: Any,
) -> AsyncIterator[Server]:
    """A fresh pool, :func:`hostile_app` on it, served on 127.0.0.1.

    ``options`` go to :func:`setup` (``limit``, ``body_timeout``, ``queue_timeout``,
    ``max_waiters``, ``strict_content_type`` ...). Connections and the pool are closed
    on exit.
    """
    pool = SlabPool(budget, decay=decay, scrub=scrub, name="hostile")
    app = hostile_app(pool, **options)
    try:
        async with serve(app, handler_cancellation=handler_cancellation) as port:
            server = Server(app, pool, port)
            try:
                yield server
            finally:
                for conn in server.conns:
                    conn.close()
    finally:
        pool.close()


# -- workloads: integrity runs and the fault mix -------------------------------------------

#: fault kinds of the soak and their share of requests (the rest are valid)
FAULT_MIX: dict[str, float] = {
    "aborted_upload": 0.05,
    "handler_error": 0.05,
    "client_cancel": 0.01,
    "server_cancel": 0.01,
    "malformed_json": 0.05,
    "declared_oversize": 0.01,
    "chunked_oversize": 0.01,
}

#: what each kind must get: a ``"status error"`` key, ``"closed"`` (no answer), or
#: ``"aborted"`` (the client left before any answer could come)
OUTCOME: dict[str, str] = {
    "valid": "200",
    "valid_large": "200",
    "slow_reader": "200",
    "aborted_upload": "aborted",
    "handler_error": "500",
    "client_cancel": "aborted",
    "server_cancel": "closed",
    "malformed_json": "400 invalid_json",
    "declared_oversize": "413 body_too_large",
    "chunked_oversize": "413 body_too_large",
}

_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "arena", "slab", "pool", "quarantine", "é→ü")


def make_doc(rng: random.Random, ident: int, size: int) -> dict[str, Any]:
    """A JSON document of roughly ``size`` bytes, unique to ``ident``."""
    salt = rng.getrandbits(64)
    row = " ".join(rng.choice(_WORDS) for _ in range(12))
    rows = max(1, size // (len(row.encode()) + 16))
    return {"id": ident, "salt": salt, "rows": [f"{ident}:{i}:{row}" for i in range(rows)]}


@dataclass
class Tally:
    """What a run sent and got back."""

    requests: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    #: kind -> outcome -> count
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    #: 200 answers whose hash, length, count or echo did not match what was sent
    corrupted: int = 0
    #: answers other than the documented one for their kind
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, outcome: str, *, corrupt: bool = False) -> None:
        self.requests += 1
        self.sent[kind] = self.sent.get(kind, 0) + 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        per_kind = self.by_kind.setdefault(kind, {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1
        if corrupt:
            self.corrupted += 1
        elif outcome != OUTCOME[kind]:
            self.unexpected += 1
        else:
            return
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {outcome}{' (corrupt)' if corrupt else ''}")


def _outcome(response: RawResponse) -> str:
    if response.status is None:
        return "closed"
    return f"{response.status} {response.error}" if response.error else str(response.status)


def _correct(response: RawResponse, body: bytes, doc: Any, *, echo: bool) -> bool:
    try:
        answer = response.json()
    except orjson.JSONDecodeError:
        return False
    if (answer.get("sha256"), answer.get("nbytes")) != (digest(body), len(body)):
        return False
    if answer.get("count") != (len(doc) if isinstance(doc, dict | list) else 1):
        return False
    return not echo or answer.get("echo") == doc


class _Client:
    """One worker's keep-alive connection, reopened after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Conn | None = None

    async def get(self) -> Conn:
        if self.conn is None or self.conn.eof:
            if self.conn is not None:
                self.conn.close()
            self.conn = await Conn.open(self.port)
        return self.conn

    async def exchange(self, wire: bytes, *, timeout: float) -> RawResponse:
        conn = await self.get()
        if not await conn.send(wire):
            conn.close()
            self.conn = None
            conn = await self.get()
            await conn.send(wire)
        response = await conn.response(timeout=timeout)
        if response.closed:
            conn.close()
            self.conn = None
        return response

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def _one_shot(port: int, wire: bytes, *, timeout: float, **options: Any) -> RawResponse:
    conn = await Conn.open(port, **options)
    try:
        await conn.send(wire)
        return await conn.response(timeout=timeout)
    finally:
        conn.close()


def _frame(path: str, body: bytes, rng: random.Random, chunk_share: float) -> bytes:
    if rng.random() < chunk_share:
        sizes = [rng.choice((1, 7, 512, 4096, 65536, 300_000)) for _ in range(4)]
        return build_request(path, chunked_body=True) + chunked(body, sizes)
    return build_request(path, body)


def _malformed(rng: random.Random, ident: int) -> bytes:
    body = orjson.dumps(make_doc(rng, ident, rng.randint(16, 2048)))
    choice = rng.randrange(4)
    if choice == 0:
        return body[: rng.randrange(len(body))]  # every proper prefix of an object is bad
    if choice == 1:
        return body[:-1] + b', "bad": "\xff\xfe"}'  # invalid UTF-8 in a string
    if choice == 2:
        return b"[" * 5000 + b"]" * 5000  # deeper than the decoder allows
    return body[:-1] + b",}"


@dataclass
class _Worker:
    """One client task of :func:`run_mix`: a seeded random stream and a connection."""

    port: int
    rng: random.Random
    tally: Tally
    large: tuple[int, int]
    limit: int
    timeout: float
    client: _Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = _Client(self.port)

    async def valid(self, ident: int, kind: str) -> None:
        rng = self.rng
        size = rng.randint(16, 4096) if kind == "valid" else rng.randint(*self.large)
        doc = make_doc(rng, ident, size)
        body = orjson.dumps(doc)
        echo = kind == "slow_reader"
        wire = _frame("/echo?echo=1" if echo else "/echo", body, rng, 0.2)
        if echo:
            slow = {"rcvbuf": 4096, "read_size": 4096, "read_gap": 0.0005}
            response = await _one_shot(self.port, wire, timeout=self.timeout, **slow)
        else:
            response = await self.client.exchange(wire, timeout=self.timeout)
        outcome = _outcome(response)
        corrupt = outcome == "200" and not _correct(response, body, doc, echo=echo)
        self.tally.add(kind, outcome, corrupt=corrupt)

    async def fault(self, ident: int, kind: str) -> None:
        rng, port, timeout = self.rng, self.port, self.timeout
        if kind == "malformed_json":
            wire = build_request("/echo", _malformed(rng, ident))
            self.tally.add(kind, _outcome(await self.client.exchange(wire, timeout=timeout)))
            return
        body = orjson.dumps(make_doc(rng, ident, rng.choice((512, 8192, 600_000))))
        if kind in ("aborted_upload", "client_cancel"):
            conn = await Conn.open(port)
            if kind == "aborted_upload":
                await conn.send(build_request("/echo", body)[: -rng.randint(1, len(body))])
            else:
                await conn.send(build_request("/slow?ms=200", body))
                await asyncio.sleep(rng.uniform(0.0, 0.05))  # the client gives up mid-handler
            conn.abort() if rng.random() < 0.5 else conn.close()
            self.tally.add(kind, "aborted")
            return
        if kind == "handler_error":
            wire = build_request("/boom", body)
        elif kind == "server_cancel":
            wire = build_request("/cancel", body)
        elif kind == "declared_oversize":
            wire = build_request("/echo", b"", content_length=self.limit + 1)
        else:  # chunked_oversize
            big = b"[" + b"1," * ((self.limit + 65536) // 2) + b"1]"
            wire = build_request("/echo", chunked_body=True) + chunked(big, [65536])
        self.tally.add(kind, _outcome(await _one_shot(port, wire, timeout=timeout)))


async def run_mix(
    port: int,
    *,
    requests: int,
    concurrency: int = 32,
    seed: int = 0,
    faults: dict[str, float] | None = None,
    large_share: float = 0.03,
    slow_share: float = 0.01,
    large: tuple[int, int] = (256 * 1024, 1536 * 1024),
    limit: int = 2 * 1024 * 1024,
    timeout: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """Send ``requests`` requests, ``concurrency`` at a time, and check every answer.

    Each request's kind is drawn (seeded) from ``faults`` (a share per fault kind,
    :data:`FAULT_MIX` by default; ``{}`` for an all-valid integrity run); the rest are
    valid: small JSON, ``large_share`` large bodies, ``slow_share`` slow readers of a
    large echoed response; a fifth of bodies are sent chunked. Valid answers are
    checked against what was sent (hash, length, item count, echo). ``limit`` must be
    the server's body limit; ``progress(done)`` is called after each request.
    """
    mix = FAULT_MIX if faults is None else faults
    tally = Tally()
    next_id = 0
    done = 0

    def draw(rng: random.Random) -> str:
        x = rng.random()
        for kind, share in mix.items():
            if x < share:
                return kind
            x -= share
        y = rng.random()
        if y < slow_share:
            return "slow_reader"
        return "valid_large" if y < slow_share + large_share else "valid"

    async def worker(w: int) -> None:
        nonlocal next_id, done
        rng = random.Random(seed * 1_000_003 + w)
        me = _Worker(port, rng, tally, large, limit, timeout)
        try:
            while next_id < requests:
                ident = next_id
                next_id += 1
                kind = draw(rng)
                try:
                    if kind in ("valid", "valid_large", "slow_reader"):
                        await me.valid(ident, kind)
                    else:
                        await me.fault(ident, kind)
                except (TimeoutError, OSError) as exc:
                    tally.add(kind, f"client error {type(exc).__name__}")
                    me.client.close()
                    me.client.conn = None
                done += 1
                if progress is not None:
                    progress(done)
        finally:
            me.client.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return tally


# -- waiting without sleeping blindly -----------------------------------------------------


async def until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 5 ms until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:g}s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.005)


def is_idle(pool: SlabPool, objects: Iterable[ObjectPool[Any]] = ()) -> bool:
    """Nothing lent, nothing quarantined, nobody waiting, every object back."""
    stats = pool.stats()
    return (
        stats["lent_bytes"] == 0
        and stats["quarantined_blocks"] == 0
        and stats["waiting"] == 0
        and all(op.in_use == 0 for op in objects)
    )


async def wait_idle(
    pool: SlabPool, objects: Iterable[ObjectPool[Any]] = (), *, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll until :func:`is_idle`; returns the pool's stats.

    Arenas are released when handlers finish, which may be after the client has its
    answer, so tests poll with a deadline instead of sleeping. Raises
    :class:`AssertionError` showing the pool's state if it is not idle in time.
    """
    pools = list(objects)
    deadline = time.monotonic() + timeout
    while not is_idle(pool, pools):
        if time.monotonic() > deadline:
            out = {op.name: op.in_use for op in pools}
            msg = f"pool not idle after {timeout:g}s: {pool!r}, objects out {out}"
            raise AssertionError(msg)
        await asyncio.sleep(0.005)
    return pool.stats()
