"""One raw HTTP/1.1 client (:class:`Conn`) and the one response reader of the harness.

Theory of operation
-------------------
:func:`read_head` and :func:`read_body` read one response from anything with
``readuntil``, ``readexactly`` and ``read`` (a :class:`ByteStream`): an
:class:`asyncio.StreamReader` (the load generator's keep-alive connections) or a
:class:`Conn`. Both raise :class:`asyncio.IncompleteReadError` when the peer closes
mid-message and :class:`ProtocolError` on a status line that is not HTTP/1.x, so every
client sees a short or broken answer the same way.

A :class:`Conn` is a non-blocking TCP socket to 127.0.0.1 that sends exactly the bytes it
is told to and reads only when it is asked to, so a test can lie about
``Content-Length``, break chunk framing, stop half-way, trickle bytes, or never drain a
response (with a tiny ``SO_RCVBUF``). Every operation is bounded: a read takes a
``timeout`` and a trickle a count of pieces, so no case can hang a test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

__all__ = [
    "HOST",
    "READ_TIMEOUT",
    "ByteStream",
    "Conn",
    "ProtocolError",
    "RawResponse",
    "build_request",
    "chunked",
    "closes_after",
    "read_body",
    "read_head",
]

HOST = "127.0.0.1"
#: a read that gets nothing for this long gives up (seconds)
READ_TIMEOUT = 10.0


# -- reading a response ------------------------------------------------------------------


class ProtocolError(ValueError):
    """The bytes are not an HTTP/1.x response."""


class ByteStream(Protocol):
    """What the response reader reads from; EOF mid-message is IncompleteReadError."""

    async def readuntil(self, separator: bytes) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def read(self) -> bytes: ...


async def read_head(stream: ByteStream) -> tuple[int, dict[str, str]]:
    """The status and the headers (names lower-cased) of one response."""
    head = await stream.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        msg = f"bad status line {lines[0][:80]!r}"
        raise ProtocolError(msg)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def closes_after(headers: dict[str, str]) -> bool:
    """True if the response ends the connection (``Connection: close`` or no framing)."""
    if headers.get("connection", "").lower() == "close":
        return True
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    framed = chunked or "content-length" in headers
    return not framed


async def read_body(stream: ByteStream, headers: dict[str, str]) -> bytes:
    """The body after :func:`read_head`: Content-Length, chunked, or up to the close."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await stream.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await stream.readuntil(b"\r\n")  # no trailers are sent to us
                return b"".join(parts)
            parts.append((await stream.readexactly(size + 2))[:-2])
    if "content-length" in headers:
        return await stream.readexactly(int(headers["content-length"]))
    return await stream.read()  # a body delimited by the connection closing


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
        self._deadline = 0.0  # of the read in progress (see response())
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

    # -- the ByteStream the reader reads, bounded by self._deadline

    async def _fill(self) -> bool:
        """Receive more bytes into the buffer; False once the server has closed."""
        remaining = self._deadline - time.monotonic()
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
            return False
        self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        while (at := self._buf.find(separator)) < 0:
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self._buf), None)
        return self._take(at + len(separator))

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
        return self._take(n)

    async def read(self) -> bytes:
        while await self._fill():
            pass
        return self._take(len(self._buf))

    # -- responses

    async def response(self, *, timeout: float = READ_TIMEOUT) -> RawResponse:
        """Read one response; ``status None, closed True`` if the server closed first.

        Raises :class:`TimeoutError` if nothing complete arrives within ``timeout``.
        """
        self._deadline = time.monotonic() + timeout
        try:
            status, headers = await read_head(self)
        except asyncio.IncompleteReadError:
            return RawResponse(status=None, closed=True)
        try:
            body = await read_body(self, headers)
        except asyncio.IncompleteReadError:
            return RawResponse(status=status, headers=headers, body=b"", closed=True)
        closed = headers.get("connection", "").lower() == "close" or self.eof
        return RawResponse(status=status, headers=headers, body=body, closed=closed)

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
        self._deadline = time.monotonic() + timeout
        try:
            return not await self._fill()
        except TimeoutError:
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
