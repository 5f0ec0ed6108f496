"""Seeded request mixes: the integrity runs and the chaos soak's fault mix.

Theory of operation
-------------------
:func:`run_mix` sends a bounded number of requests to a :func:`~harness.hostile.hostile_app`,
``concurrency`` at a time. Each request's kind is drawn from a seeded stream: valid JSON
(small, large, or echoed to a slow reader) or one of the faults of :data:`FAULT_MIX`.
Every valid answer is checked against what was sent; every fault must get the outcome
:data:`OUTCOME` documents for its kind. The :class:`Tally` counts both.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .hostile import digest
from .http import Conn, RawResponse, build_request, chunked

__all__ = ["FAULT_MIX", "OUTCOME", "Tally", "make_doc", "run_mix"]


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
