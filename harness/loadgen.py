"""A bounded HTTP/1.1 load client for the demo, the bench and the soak.

Theory of operation
-------------------
:func:`run_load` drives one server with the bodies of a
:class:`~harness.workload.Plan` and always stops by itself: it starts no request after
``requests`` have been started or ``duration`` seconds have passed, every request has
its own ``timeout``, and the whole run is cut off ``timeout`` seconds after the deadline
whatever the server does. Every 200 answer is checked against the summary its body
expects, so wrong answers count as corruption, not just non-200 statuses.

The client speaks HTTP/1.1 over asyncio streams instead of using aiohttp's client. On
the 2-core machine this was written on, an aiohttp ``ClientSession`` saturated at about
9.7k small requests/s against a server that a plain keep-alive stream client drove to
20.8k/s, so with aiohttp's client the small-body numbers measured the client, not the
server. Requests carry a Content-Length body; responses are read by
:mod:`harness.http`'s one reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .http import closes_after, read_body, read_head
from .workload import Body, Plan

__all__ = ["LoadResult", "Pacing", "percentile", "run_load"]


@dataclass(frozen=True)
class Pacing:
    """Send each body in pieces of ``piece`` bytes, awaiting ``pause()`` before each
    piece after the first, the way a body arrives over a real network: the server's
    handler then runs while the rest of its body is still on the way, where a body
    written whole is usually buffered whole before the handler starts.

    ``pause`` is ``lambda: asyncio.sleep(gap)`` for a load (``benchmarks/
    callgrind_request.py --trickle``); a test can await an event instead.
    """

    piece: int
    pause: Callable[[], Awaitable[object]]

    def __post_init__(self) -> None:
        if self.piece < 1:
            msg = "a piece must be at least 1 byte"
            raise ValueError(msg)


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
    # percentiles an outside client reported (wrk), used when ``latencies`` is empty
    fixed_percentiles_ms: dict[int, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return self.ok + self.shed + self.errors + self.corrupt

    @property
    def rps(self) -> float:
        """Successful responses per second of wall time."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies and int(q) in self.fixed_percentiles_ms:
            return self.fixed_percentiles_ms[int(q)]
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


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed before any of the answer arrived."""


class _Connection:
    """One keep-alive connection of the load client, reopened when the server closes it."""

    def __init__(self, host: str, port: int, pacing: Pacing | None = None) -> None:
        self.host, self.port = host, port
        self.pacing = pacing
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
        pacing = self.pacing
        # A server may answer (413, 503) and close before reading the whole body; its
        # answer can still be in our receive buffer, so read it rather than give up.
        with contextlib.suppress(ConnectionError):
            if pacing is None:
                self.writer.write(body)
            else:
                view = memoryview(body)
                for start in range(0, len(body), pacing.piece):
                    if start:
                        await self.writer.drain()
                        await pacing.pause()
                    self.writer.write(view[start : start + pacing.piece])
            await self.writer.drain()
        try:
            status, headers = await read_head(self.reader)
            payload = await read_body(self.reader, headers)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            partial = getattr(exc, "partial", b"")
            if self.used and not partial:
                raise _StaleConnection(str(exc)) from exc
            raise
        self.used += 1
        if closes_after(headers):
            self.close()
        return status, payload

    async def exchange(
        self, head: bytes, body: bytes, timeout: float, res: LoadResult
    ) -> tuple[int, bytes]:
        """One request; resent once on a new connection if the old one went stale."""
        try:
            return await self.request(head, body, timeout)
        except _StaleConnection:
            # The server closed an idle keep-alive connection as we sent on it (a
            # recycled worker does this). HTTP clients resend on a new connection in
            # that case (RFC 9112 section 9.3.1); so do we, once.
            self.close()
            res.retried += 1
            return await self.request(head, body, timeout)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _record(res: LoadResult, body: Body, status: int, payload: bytes, latency: float) -> None:
    """Count one answer: ok (and its latency), corrupt, shed or an error."""
    res.bytes_sent += len(body.data)
    res.statuses[status] = res.statuses.get(status, 0) + 1
    if status == 200:
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and all(answer.get(k) == v for k, v in body.expected().items()):
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
    pacing: Pacing | None = None,
) -> LoadResult:
    """Send at most ``requests`` requests for at most ``duration`` seconds; verify answers.

    ``concurrency`` connections each send one request at a time (keep-alive). Pass a
    ``result`` to watch it fill in from another task; ``on_response`` is called after
    every response; ``pacing`` sends each body in pieces (:class:`Pacing`; default:
    whole; a request's pauses count in its ``timeout``). Always returns within
    ``duration + 2 * timeout`` seconds.
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
        conn = _Connection(host, port, pacing)
        try:
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                res.started += 1
                body = plan.next_body()
                head = head_prefix + b"Content-Length: %d\r\n\r\n" % len(body.data)
                t0 = time.perf_counter()
                try:
                    status, payload = await conn.exchange(head, body.data, timeout, res)
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    asyncio.TimeoutError,
                    _StaleConnection,
                    ValueError,  # harness.http.ProtocolError and bad numbers
                ) as exc:
                    conn.close()
                    res._error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                    continue
                _record(res, body, status, payload, time.perf_counter() - t0)
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
