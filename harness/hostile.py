"""The hostile cases, their documented outcomes, and the server they run against.

Theory of operation
-------------------
:data:`CASES` is the table of hostile cases and their *documented outcomes* (status,
``error`` code, whether the server closes the connection); the tests assert it, the
chaos soak counts against it and ``docs/reliability.md`` prints it. :func:`hostile_app`
builds the server the cases run against: routes that hash what they parsed (so every
answer can be checked against what was sent), borrow from an :class:`ObjectPool`
through the arena, raise, or cancel themselves. :func:`hostile_server` serves it on
127.0.0.1 (:func:`harness.server.serve`) and yields a :class:`Target`, through which a
test opens raw :class:`~harness.http.Conn` connections. The clients themselves are in
:mod:`harness.http`; the fault mix of the integrity runs and the chaos soak in
:mod:`harness.mix`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from arenapool import ObjectPool, SlabPool
from arenapool.aiohttp import ROUTE_STATS_KEY, get_arena, json_response, read_body, read_json, setup

from .http import Conn, RawResponse, build_request
from .idle import wait_idle
from .server import serve

__all__ = [
    "CALLS_KEY",
    "CASES",
    "OBJECTS_KEY",
    "SEEN_KEY",
    "Case",
    "Expected",
    "Scratch",
    "Target",
    "cases_table",
    "digest",
    "hostile_app",
    "hostile_server",
]


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


@dataclass
class Target:
    """A running :func:`hostile_app`: its app, pool and port, and the raw connections opened
    to it (closed when :func:`hostile_server` ends)."""

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
) -> AsyncIterator[Target]:
    """A fresh pool, :func:`hostile_app` on it, served on 127.0.0.1.

    ``options`` go to :func:`setup` (``limit``, ``body_timeout``, ``queue_timeout``,
    ``max_waiters``, ``strict_content_type`` ...). Connections and the pool are closed
    on exit.
    """
    pool = SlabPool(budget, decay=decay, scrub=scrub, name="hostile")
    app = hostile_app(pool, **options)
    try:
        async with serve(app, handler_cancellation=handler_cancellation) as port:
            server = Target(app, pool, port)
            try:
                yield server
            finally:
                for conn in server.conns:
                    conn.close()
    finally:
        pool.close()
