"""A burst: many large POSTs at once, each on its own connection, with what each one got.

Theory of operation
-------------------
:func:`burst` opens ``count`` connections to 127.0.0.1 first (so connection set-up,
bounded by the listen backlog, is not counted as the server's latency), then sends every
request at once: the head, then the body in pieces while a reader waits for the
response. A server may answer before it has read the body (413, 503): the reader then
stops the writer, as a real client's HTTP stack does, and the latency is the time from
the first byte sent to the whole response read. Every request is bounded by
``timeout`` (the client's patience); a request still unanswered then counts as
``timeout``, as a client that gave up would.

:class:`Outcome` keeps the status, latency, ``Retry-After`` and whether a 200's
summary matched the body; :func:`summarize` turns a list of them into counts, shares,
latency percentiles per status and goodput (bytes of bodies answered 200 per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .http import HOST, ProtocolError, read_body, read_head
from .loadgen import percentile
from .workload import Body

__all__ = ["Outcome", "burst", "summarize"]

#: bytes written per send while the body goes out
PIECE = 256 * 1024


@dataclass
class Outcome:
    """What one request of a burst got. ``status`` is ``None`` for a timeout or error."""

    status: int | None
    latency: float
    retry_after: str | None = None
    correct: bool | None = None
    error: str | None = None
    sent: int = 0


async def _send(writer: asyncio.StreamWriter, data: bytes, outcome: Outcome) -> None:
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        writer.write(view[start : start + PIECE])
        await writer.drain()
        outcome.sent = min(len(view), start + PIECE)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await read_head(reader)
    return status, headers, await read_body(reader, headers)


async def _one(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    head: bytes,
    body: Body,
    timeout: float,
    go: asyncio.Event,
) -> Outcome:
    reader, writer = conn
    await go.wait()
    outcome = Outcome(None, 0.0)
    started = time.perf_counter()
    sender = asyncio.ensure_future(_send(writer, head + body.data, outcome))
    try:
        status, headers, payload = await asyncio.wait_for(_response(reader), timeout)
        outcome.status = status
        outcome.retry_after = headers.get("retry-after")
        if status == 200:
            try:
                outcome.correct = orjson.loads(payload) == body.expected()
            except orjson.JSONDecodeError:
                outcome.correct = False
    except asyncio.TimeoutError:
        outcome.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
        outcome.error = type(exc).__name__
    finally:
        outcome.latency = time.perf_counter() - started
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
        writer.transport.abort()  # unsent body bytes: drop them, do not flush them
    return outcome


async def burst(
    port: int,
    body: Body,
    count: int,
    *,
    timeout: float,
    path: str = "/ingest",
    connect_timeout: float = 30.0,
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[list[Outcome], float]:
    """Send ``count`` requests carrying ``body`` at once; (outcomes, seconds it took).

    Connections that cannot be opened within ``connect_timeout`` count as errors;
    ``headers`` are added to every request.
    """
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body.data)}\r\n\r\n"
    ).encode()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | Outcome:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(HOST, port, limit=1 << 20), connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            return Outcome(None, 0.0, error=f"connect: {type(exc).__name__}")

    conns = await asyncio.gather(*(connect() for _ in range(count)))
    go = asyncio.Event()
    tasks: list[asyncio.Future[Outcome]] = []
    failed: list[Outcome] = []
    for conn in conns:
        if isinstance(conn, Outcome):
            failed.append(conn)
        else:
            tasks.append(asyncio.ensure_future(_one(conn, head, body, timeout, go)))
    started = time.perf_counter()
    go.set()
    outcomes = list(await asyncio.gather(*tasks)) if tasks else []
    return outcomes + failed, time.perf_counter() - started


def summarize(outcomes: Sequence[Outcome], elapsed: float, body_size: int) -> dict[str, Any]:
    """Counts, shares and latency percentiles (ms) per status, and goodput."""
    by: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        key = str(outcome.status) if outcome.status is not None else (outcome.error or "error")
        by.setdefault(key, []).append(outcome)
    ok = [o for o in by.get("200", []) if o.correct]
    total = len(outcomes)
    report: dict[str, Any] = {
        "requests": total,
        "ok": len(ok),
        "ok_share": round(len(ok) / total, 4) if total else 0.0,
        "wrong_answers": len(by.get("200", [])) - len(ok),
        "elapsed_s": round(elapsed, 3),
        "goodput_mib_s": round(len(ok) * body_size / 2**20 / elapsed, 1) if elapsed else 0.0,
        "goodput_rps": round(len(ok) / elapsed, 1) if elapsed else 0.0,
        "outcomes": {},
    }
    for key, group in sorted(by.items()):
        latencies = [o.latency for o in group]
        row: dict[str, Any] = {
            "count": len(group),
            "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "max_ms": _ms(max(latencies)),
        }
        if key == "503":
            row["with_retry_after"] = sum(1 for o in group if o.retry_after)
        report["outcomes"][key] = row
    return report


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)
