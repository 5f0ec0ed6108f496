"""Workloads and a bounded HTTP/1.1 load client for the demo, the bench and the soak.

Theory of operation
-------------------
A :class:`Workload` says how big request bodies are (fixed, uniform or log-uniform
between two sizes) and how many requests are in flight. :meth:`Workload.deck` builds a
small set of distinct JSON bodies from a seed, and each body knows the summary the
example service must answer with (``count``, ``sum``, ``digest``), so the client counts
wrong answers as corruption, not just non-200 statuses. A :class:`Plan` walks the deck
in a seeded order; two plans with the same seed send the same bodies in the same order,
which is how every mode in a comparison sees the same traffic.

:func:`run_load` drives one server and always stops by itself: it starts no request
after ``requests`` have been started or ``duration`` seconds have passed, every request
has its own ``timeout``, and the whole run is cut off ``timeout`` seconds after the
deadline whatever the server does.

The client speaks HTTP/1.1 over asyncio streams instead of using aiohttp's client. On
the 2-core machine this was written on, an aiohttp ``ClientSession`` saturated at about
9.7k small requests/s against a server that a plain keep-alive stream client drove to
20.8k/s, so with aiohttp's client the small-body numbers measured the client, not the
server. The subset spoken here is small: keep-alive requests with a Content-Length body,
responses with Content-Length or chunked bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from ._units import format_size, parse_size

__all__ = [
    "WORKLOADS",
    "Body",
    "LoadResult",
    "Plan",
    "Workload",
    "burst_workload",
    "get_workload",
    "make_body",
    "percentile",
    "run_load",
    "summarize_body",
]

Distribution = Literal["fixed", "uniform", "log-uniform"]

#: Smallest body :func:`make_body` can produce: the JSON envelope with no records.
MIN_BODY = 64

KiB = 1024
MiB = 1024 * 1024

# Log lines are built from this alphabet: mostly ASCII, a few multi-byte characters so
# that the decoders' UTF-8 paths are exercised too.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz      0123456789.,:=/-_éü→"
_LEVELS = ("debug", "info", "info", "info", "warning", "error")


@dataclass(frozen=True)
class Body:
    """One request body and the answer a correct server gives for it."""

    data: bytes
    count: int
    total: int
    digest: str

    def expected(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.total, "digest": self.digest}


def summarize_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary the example service computes: count, sum of ``value``, digest of tags.

    The digest is BLAKE2b (8 bytes, hex) over every record's ``tag`` in order. The
    example service carries its own copy of this function so that it stays a
    self-contained file users can copy; tests check the two agree.
    """
    digest = hashlib.blake2b(digest_size=8)
    total = 0
    for record in records:
        total += record["value"]
        digest.update(record["tag"].encode())
    return {"count": len(records), "sum": total, "digest": digest.hexdigest()}


def make_body(size: int, rng: random.Random) -> Body:
    """A JSON body of exactly ``size`` bytes: ``{"source", "records": [...], "pad"}``.

    Records look like structured log events (id, level, value, tag, message). Records
    are added while they fit; a ``pad`` string fills the rest so the length is exact.
    """
    if size < MIN_BODY:
        msg = f"body size must be at least {MIN_BODY} bytes, got {size!r}"
        raise ValueError(msg)
    text = "".join(rng.choice(_ALPHABET) for _ in range(4096))
    envelope = len(orjson.dumps({"source": "arenapool-loadgen", "records": [], "pad": ""}))
    budget = size - envelope
    records: list[dict[str, Any]] = []
    used = 0
    while True:
        start = rng.randrange(len(text) - 400)
        record = {
            "id": len(records),
            "ts": 1_700_000_000 + rng.randrange(86_400),
            "level": rng.choice(_LEVELS),
            "value": rng.randrange(1_000_000),
            "tag": f"{rng.getrandbits(32):08x}",
            "message": text[start : start + rng.randrange(40, 400)],
        }
        cost = len(orjson.dumps(record)) + (1 if records else 0)
        if used + cost > budget:
            break
        records.append(record)
        used += cost
    doc = {"source": "arenapool-loadgen", "records": records, "pad": " " * (budget - used)}
    data = orjson.dumps(doc)
    if len(data) != size:  # pragma: no cover - the arithmetic above is exact
        msg = f"generated {len(data)} bytes for a {size}-byte body"
        raise AssertionError(msg)
    summary = summarize_body(records)
    return Body(data, summary["count"], summary["sum"], summary["digest"])


@dataclass(frozen=True)
class Workload:
    """Request bodies between ``min_size`` and ``max_size`` and how many fly at once."""

    name: str
    min_size: int
    max_size: int
    distribution: Distribution
    concurrency: int
    deck_size: int = 32
    description: str = ""

    def __post_init__(self) -> None:
        if not MIN_BODY <= self.min_size <= self.max_size:
            msg = (
                f"workload {self.name!r}: need {MIN_BODY} <= min_size <= max_size, "
                f"got {self.min_size!r} and {self.max_size!r}"
            )
            raise ValueError(msg)
        if self.concurrency < 1 or self.deck_size < 1:
            msg = f"workload {self.name!r}: concurrency and deck_size must be positive"
            raise ValueError(msg)

    def sample_size(self, rng: random.Random) -> int:
        lo, hi = self.min_size, self.max_size
        if self.distribution == "fixed" or lo == hi:
            return lo
        if self.distribution == "uniform":
            return rng.randint(lo, hi)
        # log-uniform: every doubling of size is equally likely
        size = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return min(hi, max(lo, size))

    def sizes(self, seed: int) -> list[int]:
        """The deck's body sizes for ``seed`` (the same seed gives the same sizes)."""
        rng = random.Random(f"sizes:{self.name}:{seed}")
        count = 1 if self.distribution == "fixed" else self.deck_size
        return [self.sample_size(rng) for _ in range(count)]

    def deck(self, seed: int) -> list[Body]:
        """Distinct bodies for ``seed``, built deterministically."""
        rng = random.Random(f"bodies:{self.name}:{seed}")
        return [make_body(size, rng) for size in self.sizes(seed)]

    def scaled(self, factor: float) -> Workload:
        """The same workload with every size multiplied by ``factor`` (for quick runs)."""
        return replace(
            self,
            min_size=max(MIN_BODY, int(self.min_size * factor)),
            max_size=max(MIN_BODY, int(self.max_size * factor)),
        )

    def describe(self) -> str:
        if self.min_size == self.max_size:
            sizes = format_size(self.min_size)
        else:
            sizes = f"{format_size(self.min_size)}-{format_size(self.max_size)} {self.distribution}"
        return f"{sizes}, {self.concurrency} in flight"


WORKLOADS: dict[str, Workload] = {
    "small": Workload("small", KiB, KiB, "fixed", 16, description="1 KiB bodies"),
    "large": Workload("large", MiB, 4 * MiB, "uniform", 4, description="1-4 MiB bodies"),
    "mixed": Workload(
        "mixed", KiB, 4 * MiB, "log-uniform", 8, description="1 KiB-4 MiB, log-uniform"
    ),
}


def burst_workload(budget: int | str, *, factor: int = 4, body: int | str = "4MiB") -> Workload:
    """4 MiB bodies, as many at once as make ``factor`` times ``budget`` in flight."""
    budget_b = parse_size(budget, name="budget")
    body_b = parse_size(body, name="body")
    concurrency = max(1, math.ceil(factor * budget_b / body_b))
    return Workload(
        "burst",
        body_b,
        body_b,
        "fixed",
        concurrency,
        description=f"{concurrency} concurrent {format_size(body_b)} bodies "
        f"({factor}x a {format_size(budget_b)} budget)",
    )


def get_workload(name: str, *, budget: int | str = "256MiB", scale: float = 1.0) -> Workload:
    """A named workload (``small``, ``large``, ``mixed``, ``burst``), sizes times ``scale``."""
    if name == "burst":
        # Scale the budget the burst is measured against, not only the body, so a
        # scaled burst keeps its 4x-the-budget shape.
        budget_b = max(MIN_BODY, int(parse_size(budget, name="budget") * scale))
        return burst_workload(budget_b, body=max(MIN_BODY, int(4 * MiB * scale)))
    try:
        workload = WORKLOADS[name]
    except KeyError:
        names = ", ".join([*WORKLOADS, "burst"])
        msg = f"unknown workload {name!r}; choose from {names}"
        raise ValueError(msg) from None
    return workload if scale == 1.0 else workload.scaled(scale)


class Plan:
    """The seeded order in which a deck's bodies are sent.

    Plans with the same deck and seed yield the same sequence; a plan keeps its place
    across :func:`run_load` calls, so a server driven in slices sees one sequence.
    """

    def __init__(self, deck: list[Body], seed: int) -> None:
        if not deck:
            msg = "a plan needs at least one body"
            raise ValueError(msg)
        self.deck = deck
        self._rng = random.Random(f"plan:{seed}")
        self.sent = 0

    def next_body(self) -> Body:
        self.sent += 1
        if len(self.deck) == 1:
            return self.deck[0]
        return self.deck[self._rng.randrange(len(self.deck))]


@dataclass
class LoadResult:
    """What one :func:`run_load` call saw. Updated live while it runs."""

    started: int = 0
    ok: int = 0
    shed: int = 0  # 503/429: the server refused on purpose (budget, overload)
    errors: int = 0  # other statuses, connection errors, timeouts
    corrupt: int = 0  # 200 with a summary that does not match the body
    retried: int = 0  # requests resent once after a stale keep-alive connection
    bytes_sent: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, ok responses
    statuses: dict[int, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return self.ok + self.shed + self.errors + self.corrupt

    @property
    def rps(self) -> float:
        """Successful responses per second of wall time."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        value = percentile(self.latencies, q)
        return None if value is None else value * 1000.0

    def _error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.completed,
            "ok": self.ok,
            "shed": self.shed,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "retried": self.retried,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "p50_ms": _round(self.percentile_ms(50)),
            "p99_ms": _round(self.percentile_ms(99)),
            "bytes_sent": self.bytes_sent,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "error_samples": list(self.error_samples),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _ProtocolError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one response: (status, body, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise _ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get(b"connection", b"").lower() != b"close"
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent to us
                break
            chunks.append(await reader.readexactly(size + 2))
        return status, b"".join(c[:-2] for c in chunks), keep_alive
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"])), keep_alive
    return status, await reader.read(), False  # body runs to connection close


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed before any of the answer arrived."""


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # requests answered on the current connection

    async def request(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(head, body), timeout)

    async def _request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.used = 0
        assert self.reader is not None
        self.writer.write(head)
        self.writer.write(body)
        # A server may answer (413, 503) and close before reading the whole body; its
        # answer can still be in our receive buffer, so read it rather than give up.
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        try:
            status, payload, keep_alive = await _read_response(self.reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            partial = getattr(exc, "partial", b"")
            if self.used and not partial:
                raise _StaleConnection(str(exc)) from exc
            raise
        self.used += 1
        if not keep_alive:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(
    host: str,
    port: int,
    plan: Plan,
    *,
    concurrency: int,
    requests: int,
    duration: float,
    timeout: float = 30.0,
    path: str = "/ingest",
    result: LoadResult | None = None,
    on_response: Callable[[LoadResult], None] | None = None,
) -> LoadResult:
    """Send at most ``requests`` requests for at most ``duration`` seconds; verify answers.

    ``concurrency`` connections each send one request at a time (keep-alive). Pass a
    ``result`` to watch it fill in from another task; ``on_response`` is called after
    every response. Always returns within ``duration + 2 * timeout`` seconds.
    """
    if requests < 0 or duration < 0 or concurrency < 1:
        msg = "requests and duration must be >= 0 and concurrency >= 1"
        raise ValueError(msg)
    res = result if result is not None else LoadResult()
    issued = 0
    start = time.perf_counter()
    deadline = start + duration
    head_prefix = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\n"
    ).encode()

    async def worker() -> None:
        nonlocal issued
        conn = _Connection(host, port)
        try:
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                res.started += 1
                body = plan.next_body()
                head = head_prefix + b"Content-Length: %d\r\n\r\n" % len(body.data)
                t0 = time.perf_counter()
                try:
                    try:
                        status, payload = await conn.request(head, body.data, timeout)
                    except _StaleConnection:
                        # The server closed an idle keep-alive connection as we sent on
                        # it (a recycled worker does this). HTTP clients resend on a new
                        # connection in that case (RFC 9112 section 9.3.1); so do we, once.
                        conn.close()
                        res.retried += 1
                        status, payload = await conn.request(head, body.data, timeout)
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    _StaleConnection,
                ) as exc:
                    conn.close()
                    res._error(f"{type(exc).__name__}: {exc}")
                    continue
                except (asyncio.TimeoutError, _ProtocolError, ValueError) as exc:
                    conn.close()
                    res._error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                    continue
                latency = time.perf_counter() - t0
                res.bytes_sent += len(body.data)
                res.statuses[status] = res.statuses.get(status, 0) + 1
                if status == 200:
                    try:
                        answer = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        answer = None
                    if isinstance(answer, dict) and all(
                        answer.get(k) == v for k, v in body.expected().items()
                    ):
                        res.ok += 1
                        res.latencies.append(latency)
                    else:
                        res.corrupt += 1
                        if len(res.error_samples) < 5:
                            res.error_samples.append(f"corrupt answer {payload[:120]!r}")
                elif status in (429, 503):
                    res.shed += 1
                else:
                    res._error(f"HTTP {status}: {payload[:120]!r}")
                if on_response is not None:
                    on_response(res)
        finally:
            conn.close()

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        # Every request is bounded by `timeout`; this bound is for the run as a whole.
        await asyncio.wait_for(asyncio.gather(*tasks), duration + 2 * timeout + 1.0)
    except asyncio.TimeoutError:  # pragma: no cover - only a stuck event loop gets here
        res._error("load run cut off at its hard deadline")
    finally:
        for task in tasks:
            task.cancel()
        res.elapsed += time.perf_counter() - start  # a reused result adds up its slices
    return res
