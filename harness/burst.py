"""A burst: many large POSTs at once, each on its own connection, with what each one got.

Theory of operation
-------------------
:func:`burst` opens ``count`` connections to 127.0.0.1 first, each carrying one small
GET it waits for (so connection set-up is not counted as the server's latency: the
kernel completes a handshake before the server has accepted the connection, and a
server accepting 2,048 of them is busy for 100 ms after the client thinks it is
connected; a proxy's upstream connections are open and idle like these), then sends every
request at once: the head, then the body in pieces while the socket is watched for the
response. A server may answer before it has read the body (413, 503): the sender is then
stopped, as a real client's HTTP stack does, and the connection reset. Every request is
bounded by ``timeout`` (the client's patience); a request still unanswered then counts
as ``timeout``, as a client that gave up would.

The latency is the server's, not this client's: from the moment the head was handed to
the kernel to the moment the kernel received the answer's last bytes (``SO_TIMESTAMPNS``
on the socket; each ``recvmsg`` says when its bytes arrived). One Python process driving
2,048 connections spends whole seconds in a loop iteration of sends (on loopback a
``send`` also runs the receiver's TCP stack), and a response read late by the client is
not a response sent late by the server. Raw non-blocking sockets, no asyncio transports:
a transport copies each unsent piece into its buffer, and joining each head to its
4 MiB body cost the client 8 GiB of copies per burst.

:class:`Outcome` keeps the status, latency, ``Retry-After`` and whether a 200's
summary matched the body; :func:`summarize` turns a list of them into counts, shares,
latency percentiles per status and goodput (bytes of bodies answered 200 per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .http import HOST, ProtocolError, closes_after, read_body, read_head
from .loadgen import percentile
from .workload import Body

__all__ = ["Outcome", "burst", "summarize"]

#: bytes written per send while the body goes out
PIECE = 256 * 1024
#: ``SO_TIMESTAMPNS`` (Linux; the ``socket`` module does not name it): each ``recvmsg``
#: carries the wall-clock time its bytes reached the socket
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_STAMP.size)


@dataclass
class Outcome:
    """What one request of a burst got. ``status`` is ``None`` for a timeout or error."""

    status: int | None
    latency: float
    retry_after: str | None = None
    correct: bool | None = None
    error: str | None = None
    sent: int = 0


class _Receiver:
    """Reads one socket as its bytes arrive (``loop.add_reader``) into a StreamReader,
    noting when the kernel received the latest of them."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.reader = asyncio.StreamReader(limit=1 << 20)
        self.arrived: float | None = None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 16, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.stop()
            self.reader.set_exception(exc)
            return
        if data:
            # the arrival of the answer's bytes; not of the FIN after them, which a server
            # that closes seconds later sends (read late, it would stamp the answer late)
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    seconds, nanoseconds = _STAMP.unpack_from(raw)
                    self.arrived = seconds + nanoseconds / 1e9
            self.reader.feed_data(data)
        else:
            self.stop()
            self.reader.feed_eof()

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())


async def _send(sock: socket.socket, data: bytes, outcome: Outcome) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        await loop.sock_sendall(sock, view[start : start + PIECE])
        outcome.sent = min(len(view), start + PIECE)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status, headers = await read_head(reader)
    return status, headers, await read_body(reader, headers)


async def _one(
    sock: socket.socket,
    head: bytes,
    body: Body,
    timeout: float,
    go: asyncio.Event,
) -> Outcome:
    loop = asyncio.get_running_loop()
    await go.wait()
    outcome = Outcome(None, 0.0)
    receiver = _Receiver(sock, loop)
    sender: asyncio.Future[None] | None = None
    started = time.time()  # wall clock: the kernel's receive stamps are too
    try:
        # a fresh connection's send buffer takes the head whole
        await loop.sock_sendall(sock, head)
        sender = asyncio.ensure_future(_send(sock, body.data, outcome))
        status, headers, payload = await asyncio.wait_for(_response(receiver.reader), timeout)
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
        ended = time.time()
        arrived = receiver.arrived if outcome.status is not None else None
        outcome.latency = (arrived if arrived is not None else ended) - started
        receiver.stop()
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
        # unsent body bytes: drop them and reset, as a client that stops sending does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return outcome


async def _connect(port: int, timeout: float, warm: str | None) -> socket.socket | Outcome:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
        if warm is not None:
            await asyncio.wait_for(_warm(loop, sock, port, warm), timeout)
    except (OSError, TimeoutError, ProtocolError) as exc:
        sock.close()
        return Outcome(None, 0.0, error=f"connect: {type(exc).__name__}")
    return sock


async def _warm(loop: asyncio.AbstractEventLoop, sock: socket.socket, port: int, path: str) -> None:
    """GET ``path`` on the new connection and read the answer, keeping it open: the
    server has then accepted it and waits on it for the next request."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    receiver = _Receiver(sock, loop)
    try:
        await loop.sock_sendall(sock, request)
        _status, headers = await read_head(receiver.reader)
        await read_body(receiver.reader, headers)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("the server closed a warming connection") from exc
    finally:
        receiver.stop()
    if closes_after(headers):
        raise ProtocolError("the server will not keep a warming connection")


async def burst(
    port: int,
    body: Body,
    count: int,
    *,
    timeout: float,
    path: str = "/ingest",
    connect_timeout: float = 30.0,
    headers: Sequence[tuple[str, str]] = (),
    warm: str | None = "/health",
) -> tuple[list[Outcome], float]:
    """Send ``count`` requests carrying ``body`` at once; (outcomes, seconds it took).

    Connections that cannot be opened within ``connect_timeout`` count as errors;
    ``headers`` are added to every request. Each connection first carries a GET of
    ``warm`` (``None``: none), so the burst starts on connections the server has
    accepted and waits on, as a proxy's pool of upstream connections.
    """
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body.data)}\r\n\r\n"
    ).encode()
    conns = await asyncio.gather(*(_connect(port, connect_timeout, warm) for _ in range(count)))
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
            "p90_ms": _ms(percentile(latencies, 90)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "max_ms": _ms(max(latencies)),
        }
        if key == "503":
            row["with_retry_after"] = sum(1 for o in group if o.retry_after)
            row["within_50ms"] = sum(1 for latency in latencies if latency < 0.05)
        report["outcomes"][key] = row
    return report


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)
