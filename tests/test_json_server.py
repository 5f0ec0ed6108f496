"""JSON errors over HTTP on a real server on 127.0.0.1: depth, positions, the corpus.

Issue 12, defects 1 and 7: nesting past a decoder's limit is a 400 (never a 500, never
an ERROR log) and every syntax error carries its byte position, line and column,
whichever decoder runs (orjson, msgspec, typed msgspec).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from _example import load_example
from _json_corpus import ACCEPT, DEPTH, IMPLEMENTATION, REJECT, Case, ImplCase, expected
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arenapool import SlabPool
from arenapool.aiohttp import read_json, setup

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
MODES = ["orjson", "msgspec", "typed"]


class Ingest(msgspec.Struct):
    records: list[int]


class Wrapped(msgspec.Struct):
    value: Any


@pytest.fixture
def pool() -> Any:
    with SlabPool("16MiB", max_class="256KiB", decay=None) as p:
        yield p


def json_app(pool: SlabPool) -> web.Application:
    """POST /orjson, /msgspec (echo the decoded document), /typed (Ingest) and
    /wrapped (Wrapped: {"value": any document}, fully decoded by typed msgspec)."""
    app = web.Application()
    setup(app, pool, limit="4MiB")

    def answer(request: web.Request, data: Any) -> web.Response:
        # msgspec encodes what the decoders make (orjson's encoder stops at 254 levels and
        # at 64-bit integers); ?echo=0 answers without the document
        body = {"data": data} if request.query.get("echo") != "0" else {}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def orjson_route(request: web.Request) -> web.Response:
        return answer(request, await read_json(request, decoder="orjson"))

    async def msgspec_route(request: web.Request) -> web.Response:
        return answer(request, await read_json(request, decoder="msgspec"))

    async def typed_route(request: web.Request) -> web.Response:
        doc = await read_json(request, type=Ingest)
        return answer(request, len(doc.records))

    async def wrapped_route(request: web.Request) -> web.Response:
        return answer(request, (await read_json(request, type=Wrapped)).value)

    app.router.add_post("/orjson", orjson_route)
    app.router.add_post("/msgspec", msgspec_route)
    app.router.add_post("/typed", typed_route)
    app.router.add_post("/wrapped", wrapped_route)
    return app


async def post(client: TestClient[Any, Any], path: str, doc: bytes) -> tuple[int, Any]:
    async with client.post(path, data=doc, headers={"Content-Type": "application/json"}) as resp:
        body = await resp.read()
        return resp.status, msgspec.json.decode(body) if body else None


def assert_located(doc: bytes, answer: Any) -> None:
    """A 400 body names a byte inside (or at the end of) the document, and a line and
    column that agree with it."""
    position = answer["position"]
    assert isinstance(position, int), answer
    assert 0 <= position <= len(doc), answer
    prefix = doc[:position]
    assert (prefix.count(b"\n") + 1, position - prefix.rfind(b"\n")) == (
        answer["line"],
        answer["column"],
    )


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- depth (defect 1) -----------------------------------------------------------------


@pytest.mark.parametrize("case", DEPTH, ids=repr)
@pytest.mark.parametrize("mode", ["orjson", "msgspec"])
async def test_depth_answers(
    aiohttp_client: ClientFactory,
    pool: SlabPool,
    caplog: pytest.LogCaptureFixture,
    case: ImplCase,
    mode: str,
) -> None:
    """Each decoder answers the depth cases as documented: 200 within its limit, 400 with
    the limit in the detail past it; never a 500, never an ERROR log."""
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(json_app(pool))

    status, answer = await post(client, f"/{mode}?echo=0", case.doc)

    verdict = case.orjson if mode == "orjson" else case.msgspec
    if verdict == "accept":
        assert 200 == status
    else:
        assert 400 == status, answer
        assert ("invalid_json", "too_deep") == (answer["error"], answer["reason"])
        assert isinstance(answer["limit"], int)
        assert str(answer["limit"]) in answer["detail"]
        assert "too deep" in answer["detail"]
        assert "limit of" in answer["detail"]
        assert_located(case.doc, answer)
        assert case.doc[answer["position"] : answer["position"] + 1] in (b"[", b"{")
    assert [] == no_errors_logged(caplog)


async def test_issue_case_100000_brackets_typed(
    aiohttp_client: ClientFactory, pool: SlabPool, caplog: pytest.LogCaptureFixture
) -> None:
    """The example service's case: typed msgspec given `{"records":[],"x":` and 100,000
    '[' answers 400 (too deep, at a bracket), not 500, and logs nothing at ERROR."""
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(json_app(pool))
    doc = b'{"records":[],"x":' + b"[" * 100_000

    status, answer = await post(client, "/typed", doc)

    assert (400, "invalid_json", "too_deep") == (status, answer["error"], answer["reason"])
    assert "msgspec's limit of" in answer["detail"]
    assert b"[" == doc[answer["position"] : answer["position"] + 1]
    assert [] == no_errors_logged(caplog)


# -- the corpus (defect 7) ------------------------------------------------------------


@pytest.mark.parametrize("mode", [*MODES, "wrapped"])
async def test_every_invalid_document_is_400_with_a_position(
    aiohttp_client: ClientFactory, pool: SlabPool, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Every document of the reject corpus answers 400 invalid_json with a byte position,
    line and column, whichever decoder runs (typed: msgspec's schema error comes first
    for most of them; the syntax error further on is what is answered)."""
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(json_app(pool))
    wrong: list[tuple[str, int, Any]] = []

    for case in REJECT:
        doc = b'{"value": ' + case.doc + b"}" if mode == "wrapped" else case.doc
        status, answer = await post(client, f"/{mode}", doc)
        if (
            status != 400
            or answer["error"] != "invalid_json"
            or answer["position"] is None
            or answer["reason"] not in ("syntax", "number_out_of_range", "too_deep")
        ):
            wrong.append((case.name, status, answer))
            continue
        assert_located(doc, answer)

    assert [] == wrong
    assert 150 <= len(REJECT)
    assert [] == no_errors_logged(caplog)


@pytest.mark.parametrize("mode", ["orjson", "msgspec", "wrapped"])
async def test_every_valid_document_is_200(
    aiohttp_client: ClientFactory, pool: SlabPool, mode: str
) -> None:
    """Every document of the accept corpus answers 200 with what json.loads makes of it."""
    client = await aiohttp_client(json_app(pool))
    wrong: list[str] = []

    for case in ACCEPT:
        doc = b'{"value": ' + case.doc + b"}" if mode == "wrapped" else case.doc
        status, answer = await post(client, f"/{mode}", doc)
        if status != 200 or answer["data"] != expected(case):
            wrong.append(case.name)

    assert [] == wrong


@pytest.mark.parametrize("case", IMPLEMENTATION, ids=repr)
@pytest.mark.parametrize("mode", ["orjson", "msgspec"])
async def test_implementation_defined_cases(
    aiohttp_client: ClientFactory, pool: SlabPool, case: ImplCase, mode: str
) -> None:
    """Where RFC 8259 lets a decoder choose, each answers as the docs table says; a
    refusal is a 400 with a position."""
    client = await aiohttp_client(json_app(pool))

    status, answer = await post(client, f"/{mode}", case.doc)

    verdict = case.orjson if mode == "orjson" else case.msgspec
    if verdict == "accept":
        assert 200 == status
        return
    assert 400 == status
    assert_located(case.doc, answer)
    if verdict == "number_out_of_range":
        assert "out of range" in answer["detail"]


async def test_schema_error_is_400_without_position(
    aiohttp_client: ClientFactory, pool: SlabPool
) -> None:
    """Valid JSON of the wrong shape is a 400 whose detail keeps msgspec's $.path and whose
    position is null (so it is told apart from a syntax error)."""
    client = await aiohttp_client(json_app(pool))

    status, answer = await post(client, "/typed", b'{"records": [1, "two"]}')

    assert (400, None, "schema") == (status, answer["position"], answer["reason"])
    assert "$.records[1]" in answer["detail"]


def truncations() -> st.SearchStrategy[tuple[Case, int]]:
    documents = [case for case in ACCEPT if case.doc.strip() not in (b"0", b"-0")]
    return st.sampled_from(documents).flatmap(
        lambda case: st.tuples(st.just(case), st.integers(0, len(case.doc.rstrip()) - 1))
    )


@pytest.mark.parametrize("mode", MODES)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut=truncations())
async def test_truncated_valid_documents_are_400_inside_the_body(
    aiohttp_client: ClientFactory, pool: SlabPool, mode: str, cut: tuple[Case, int]
) -> None:
    """A valid document cut short anywhere is a 400 with a position inside the body (a
    number cut short can still be a number, so top-level numbers are left out)."""
    case, end = cut
    doc = case.doc[:end]
    client = await aiohttp_client(json_app(pool))

    status, answer = await post(client, f"/{mode}", doc)

    assert 400 == status
    assert answer["position"] is not None, answer
    assert_located(doc, answer)


OPEN_100000 = b'{"records":[],"x":' + b"[" * 100_000
DEEP_1000 = b"[" * 1000 + b"]" * 1000
DEEP_RECORD_990 = b'{"records": [' + b"[" * 989 + b"]" * 989 + b"]}"


@pytest.mark.parametrize(
    ("mode", "doc"),
    [
        ("arenapool", OPEN_100000),  # orjson: past 1024; the other two decode (then 400
        ("arenapool-msgspec", OPEN_100000),  # from the service: not its shape)
        ("arenapool-msgspec", DEEP_1000),
        ("arenapool-msgspec", DEEP_RECORD_990),
    ],
    ids=["orjson-100000_open", "msgspec-100000_open", "msgspec-1000_deep", "msgspec-990_deep"],
)
async def test_example_service_depth_is_400(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture, mode: str, doc: bytes
) -> None:
    """The example service (orjson and typed msgspec modes) answers the issue's depth
    cases with 400 invalid_json and a position, and logs nothing at ERROR."""
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(
        load_example("example_service_app_json").make_app(mode, governor=False)
    )

    status, answer = await post(client, "/ingest", doc)

    assert (400, "invalid_json") == (status, answer["error"])
    assert_located(doc, answer)
    assert [] == no_errors_logged(caplog)
