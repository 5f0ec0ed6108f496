"""Fuzzing the body and JSON reading path over real sockets.

Hypothesis draws a body (random bytes, valid JSON, mutated JSON, empty, over the
limit), a framing (honest Content-Length, chunked with random chunk sizes, no length,
a Content-Length that is too short or too long), a content type and how the bytes are
split into writes; the request goes to a real server with ``strict_content_type=True``.
Whatever it sends: the server never answers 500, nothing is logged as an unhandled
error, every honest request gets exactly its documented answer, and the pool is idle
after each example.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass

import orjson
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.hostile import Target, digest, hostile_server
from harness.http import Conn, RawResponse, build_request, chunked
from harness.idle import wait_idle

LIMIT = 16 * 1024
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "application/vnd.x+json")
CONTENT_TYPES = (*JSON_TYPES, "text/plain", "application/octet-stream", "multipart/form-data")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=25,
).map(orjson.dumps)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(json_values))
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["truncate", "replace", "insert"]))
    if how == "truncate":
        return bytes(data[:at])
    noise = draw(st.binary(min_size=1, max_size=4))
    if how == "replace":
        data[at : at + len(noise)] = noise
    else:
        data[at:at] = noise
    return bytes(data)


@st.composite
def oversize(draw: st.DrawFn) -> bytes:
    seed = draw(st.binary(min_size=1, max_size=16))
    size = LIMIT + draw(st.integers(1, 3000))
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Example:
    route: str
    body: bytes
    framing: str
    content_type: str | None
    chunk_sizes: list[int]
    lie: int
    splits: list[int]

    def wire(self) -> bytes:
        ct = self.content_type
        if self.framing == "chunked":
            return build_request(self.route, content_type=ct, chunked_body=True) + chunked(
                self.body, self.chunk_sizes
            )
        if self.framing == "none":
            return build_request(self.route, content_type=ct, content_length=None)
        declared = len(self.body)
        if self.framing == "short":
            declared = max(0, declared - self.lie)
        elif self.framing == "long":
            declared += self.lie
        return build_request(self.route, self.body, content_type=ct, content_length=declared)

    @property
    def honest(self) -> bool:
        return self.framing in ("length", "chunked", "none")

    def expected(self) -> tuple[int, str | None]:
        """The documented answer to an honest request."""
        body = b"" if self.framing == "none" else self.body
        is_json = self.content_type in JSON_TYPES
        if (
            self.route == "/echo"
            and not is_json
            and not (
                self.framing == "length" and len(body) > LIMIT  # refused before the handler
            )
        ):
            return 415, "unsupported_media_type"
        if len(body) > LIMIT:
            return 413, "body_too_large"
        if self.route == "/raw":
            return 200, None
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, "invalid_json"
        return 200, None


examples = st.builds(
    Example,
    route=st.sampled_from(["/echo", "/raw"]),
    body=st.one_of(st.binary(max_size=3000), json_values, mutated_json(), st.just(b""), oversize()),
    framing=st.sampled_from(["length", "length", "chunked", "chunked", "none", "short", "long"]),
    content_type=st.sampled_from((*CONTENT_TYPES, None)),
    chunk_sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=5),
    lie=st.integers(1, 200),
    splits=st.lists(st.integers(1, 4000), max_size=4),
)


class _Errors(logging.Handler):
    """Collects records at ERROR and above, except aiohttp rejecting bad HTTP itself."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            self.records.append(record)


async def run_example(srv: Target, example: Example) -> list[RawResponse]:
    conn = await Conn.open(srv.port)
    try:
        wire = example.wire()
        cuts = sorted({min(cut, len(wire)) for cut in example.splits} | {0, len(wire)})
        for start, end in itertools.pairwise(cuts):
            await conn.send(wire[start:end])
        if example.honest:
            return [await conn.response(timeout=10)]
        conn.shutdown_write()  # the lie is left for the server to notice
        return await conn.drain(timeout=10)
    finally:
        conn.close()


def check_example(example: Example, responses: list[RawResponse]) -> None:
    if not example.honest:  # whatever the excess bytes parse as, never a server error
        assert all(r.status is None or r.status < 500 for r in responses), responses
        return
    [response] = responses
    status, error = example.expected()
    assert (status, error) == (response.status, response.error), response
    if status == 200:
        body = b"" if example.framing == "none" else example.body
        assert digest(body) == response.json()["sha256"]


def test_body_reading_never_fails_unexpectedly() -> None:
    """No body, framing or content type makes the server answer 500 or log an unhandled
    error; honest requests get their documented answers; the pool is idle after each."""
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        srv = loop.run_until_complete(
            stack.enter_async_context(
                hostile_server(limit=LIMIT, strict_content_type=True, body_timeout=5.0)
            )
        )

        @settings(
            max_examples=2000,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(example=examples)
        def one(example: Example) -> None:
            responses = loop.run_until_complete(run_example(srv, example))
            event(f"{example.framing}: {[(r.status, r.error) for r in responses]}")
            check_example(example, responses)
            loop.run_until_complete(wait_idle(srv.pool, [srv.objects], timeout=10))
            assert [] == [r.getMessage() for r in errors.records]

        one()
    finally:
        loop.run_until_complete(stack.aclose())
        # aiohttp leaves a connection lost while lingering over an unread body with a
        # task that would read for up to lingering_time; cancel them as asyncio.run does
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.close()
        logging.getLogger().removeHandler(errors)


@pytest.mark.parametrize("framing", ["short", "long"])
def test_lying_lengths_are_exercised(framing: str) -> None:
    """The fuzzer's lying framings build the wire they claim to (a guard on the test)."""
    example = Example("/raw", b"0123456789", framing, None, [3], 4, [])
    head, _, body = example.wire().partition(b"\r\n\r\n")
    declared = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert (declared, body) == ((6 if framing == "short" else 14), b"0123456789")
