"""JSON: decoding from views with orjson and msgspec, byte-accurate errors, encoding."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from arenapool import ArenaPoolError, InvalidJSON, JSONTooDeep
from arenapool._json import DECODERS, ORJSON_MAX_DEPTH, decode, encode

DOC = b'{"user": {"id": 7, "tags": ["a", "\xc3\xa9"]}, "ok": true, "n": 1.5}'
DECODED = {"user": {"id": 7, "tags": ["a", "é"]}, "ok": True, "n": 1.5}


class User(msgspec.Struct):
    id: int
    name: str


class Ingest(msgspec.Struct):
    records: list[int]


class Measure(msgspec.Struct):
    value: float


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_from_memoryview(decoder: str) -> None:
    """Both decoders read a memoryview directly."""
    assert DECODED == decode(memoryview(DOC), decoder=decoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_from_a_slice_of_a_larger_buffer(decoder: str) -> None:
    """A view into the middle of a writable buffer decodes only its own bytes."""
    buffer = bytearray(b"xxxx" + DOC + b"yyyy")
    view = memoryview(buffer)[4 : 4 + len(DOC)]

    assert DECODED == decode(view, decoder=decoder)


def test_default_decoder_is_orjson() -> None:
    """decode() without a decoder uses orjson (its error wording shows it)."""
    with pytest.raises(InvalidJSON, match="expected a JSON value"):
        decode(b'{"a": }')


@pytest.mark.parametrize("decoder", DECODERS)
def test_malformed_json_reports_byte_position(decoder: str) -> None:
    """A syntax error gives the 0-based byte offset, 1-based line and column."""
    with pytest.raises(InvalidJSON) as info:
        decode(b'{"a": 1,\n "b": }', decoder=decoder)

    err = info.value
    assert (15, 2, 7) == (err.position, err.line, err.column)
    assert "at byte 15 (line 2, column 7)" in str(err)


@pytest.mark.parametrize("decoder", DECODERS)
def test_position_counts_bytes_not_characters(decoder: str) -> None:
    """After multi-byte UTF-8 text the position is still a byte offset."""
    doc = b'{"name": "caf\xc3\xa9 \xe2\x82\xac", "x": }'

    with pytest.raises(InvalidJSON) as info:
        decode(memoryview(doc), decoder=decoder)

    assert (doc.index(b"}"), 1) == (info.value.position, info.value.line)


@pytest.mark.parametrize("decoder", DECODERS)
def test_str_input_errors_are_invalid_json(decoder: str) -> None:
    """Decoders accept str too; an error in one is InvalidJSON at its UTF-8 byte offset."""
    with pytest.raises(InvalidJSON) as info:
        decode('{"\u00e9": }', decoder=decoder)

    assert 7 == info.value.position


@pytest.mark.parametrize("decoder", DECODERS)
def test_empty_document_is_invalid(decoder: str) -> None:
    """An empty body is malformed JSON at byte 0."""
    with pytest.raises(InvalidJSON) as info:
        decode(b"", decoder=decoder)

    assert (0, 1, 1) == (info.value.position, info.value.line, info.value.column)


def test_invalid_json_is_a_value_error_with_400_hint() -> None:
    """InvalidJSON is a ValueError; the middleware answers it with 400."""
    with pytest.raises(ValueError) as info:
        decode(b"[1,")

    assert isinstance(info.value, InvalidJSON)
    assert 400 == info.value.status_hint
    assert "send a valid JSON document" in str(info.value)


def test_typed_decoding_into_a_struct() -> None:
    """type= decodes and validates into a msgspec Struct."""
    user = decode(memoryview(b'{"id": 1, "name": "ada"}'), type=User)

    assert User(id=1, name="ada") == user


def test_typed_decoding_validation_error() -> None:
    """A document of the wrong shape raises InvalidJSON naming the type, without position."""
    with pytest.raises(InvalidJSON, match="does not match User") as info:
        decode(b'{"id": "one", "name": "ada"}', type=User)

    assert (None, None, None) == (info.value.position, info.value.line, info.value.column)
    assert "$.id" in info.value.detail


def test_unknown_decoder() -> None:
    """An unknown decoder name raises ArenaPoolError listing the known ones."""
    with pytest.raises(ArenaPoolError, match="orjson, msgspec"):
        decode(b"{}", decoder="simplejson")


def test_encode_returns_fresh_bytes() -> None:
    """encode() returns new bytes (never a view)."""
    body = encode({"a": [1, 2], "b": "é"})

    assert bytes is type(body)
    assert b'{"a":[1,2],"b":"\xc3\xa9"}' == body


def test_encode_struct() -> None:
    """msgspec Structs encode like dicts."""
    assert b'{"id":1,"name":"ada"}' == encode(User(id=1, name="ada"))


def test_encode_rejects_unknown_types() -> None:
    """An object JSON cannot represent raises TypeError."""
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()})


# -- depth (issue 12, defect 1) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("opener", "closer"), [(b"[", b"]"), (b'{"a":', b"}")], ids=["arrays", "objects"]
)
def test_orjson_decodes_1024_levels_and_refuses_1025(opener: bytes, closer: bytes) -> None:
    """orjson's limit is 1024 levels: the 1025th opening bracket is JSONTooDeep at its byte."""
    assert decode(opener * 1024 + b"0" + closer * 1024) is not None

    doc = opener * 1025 + b"0" + closer * 1025
    with pytest.raises(JSONTooDeep) as info:
        decode(doc)

    err = info.value
    assert (ORJSON_MAX_DEPTH, "orjson", "too_deep") == (err.limit, err.decoder, err.reason)
    assert len(opener) * 1024 == err.position  # where the 1025th opener starts
    assert "limit of 1024 levels" in str(err)


def test_msgspec_limit_is_where_it_stops() -> None:
    """msgspec's reported limit L is measured after the fact, within two levels: L
    levels decode from the same call site and L+3 do not."""
    with pytest.raises(JSONTooDeep) as info:
        decode(b"[" * 5000 + b"]" * 5000, decoder="msgspec")
    limit = info.value.limit

    assert 900 < limit < 1000
    assert decode(b"[" * limit + b"]" * limit, decoder="msgspec")
    with pytest.raises(JSONTooDeep):
        decode(b"[" * (limit + 3) + b"]" * (limit + 3), decoder="msgspec")


@pytest.mark.parametrize("kind", [bytes, memoryview])
def test_msgspec_depth_error_points_at_the_bracket(kind: Any) -> None:
    """The position is the opening bracket one level past the limit, with line and column."""
    doc = b'{"records": [],\n "x": ' + b"[ " * 3000
    with pytest.raises(JSONTooDeep) as info:
        decode(kind(doc), decoder="msgspec")

    err = info.value
    assert b"[" == doc[err.position : err.position + 1]
    assert (2, err.position - doc.index(b"\n")) == (err.line, err.column)
    start = doc.index(b"[ ")
    depth = 1 + (err.position - start) // 2 + 1  # the object, then arrays
    assert 0 <= depth - (err.limit + 1) <= 2


@pytest.mark.parametrize("decoder", ["orjson", "msgspec", "typed"])
def test_unclosed_100000_brackets_is_too_deep_not_recursion(decoder: str) -> None:
    """The issue's case: 100,000 '[' after a valid field is JSONTooDeep (a 400), never a
    RecursionError, whichever decoder runs."""
    doc = b'{"records":[],"x":' + b"[" * 100_000
    kwargs: dict[str, Any] = {"type": Ingest} if decoder == "typed" else {"decoder": decoder}

    with pytest.raises(JSONTooDeep) as info:
        decode(doc, **kwargs)

    assert 400 == info.value.status_hint
    assert b"[" == doc[info.value.position : info.value.position + 1]


def test_typed_schema_error_before_a_deep_document_is_too_deep() -> None:
    """A schema mismatch early in a document nested past the limit reports the depth: the
    rest of the document could not be checked."""
    doc = b'{"records": "no", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    with pytest.raises(JSONTooDeep):
        decode(doc, type=Ingest)


def test_too_deep_is_invalid_json() -> None:
    """JSONTooDeep is an InvalidJSON (so a ValueError) answered with 400."""
    assert issubclass(JSONTooDeep, InvalidJSON)
    assert issubclass(JSONTooDeep, ValueError)
    assert 400 == JSONTooDeep.status_hint


# -- positions from msgspec (issue 12, defect 7) -------------------------------------------


def test_msgspec_number_overflow_has_a_position() -> None:
    """An out-of-range float gives reason number_out_of_range at the number's first byte."""
    doc = b'{"a": [1, 2],\n "b": -1e400}'
    with pytest.raises(InvalidJSON) as info:
        decode(doc, decoder="msgspec")

    err = info.value
    assert ("number_out_of_range", doc.index(b"-1e400"), 2, 7) == (
        err.reason,
        err.position,
        err.line,
        err.column,
    )


def test_msgspec_huge_int_before_an_overflowing_float() -> None:
    """msgspec keeps a 400-digit integer as int; the float after it is the one refused."""
    doc = b"[1" + b"0" * 400 + b", 1e400]"
    with pytest.raises(InvalidJSON) as info:
        decode(doc, decoder="msgspec")

    assert doc.index(b"1e400") == info.value.position


@pytest.mark.parametrize("decoder", DECODERS)
def test_invalid_utf8_position_is_the_byte(decoder: str) -> None:
    """Invalid UTF-8 is reported at its own byte (orjson alone would say 0, msgspec nothing)."""
    doc = b'["ok",\n "caf\xc3"]'
    with pytest.raises(InvalidJSON) as info:
        decode(doc, decoder=decoder)

    assert (doc.index(b"\xc3"), 2, 6) == (info.value.position, info.value.line, info.value.column)


@pytest.mark.parametrize("decoder", DECODERS)
def test_syntax_error_before_invalid_utf8_wins(decoder: str) -> None:
    """The first fault is reported: a trailing comma before a bad byte."""
    with pytest.raises(InvalidJSON) as info:
        decode(b'[1,]  "\xff"', decoder=decoder)

    assert info.value.position in (2, 3)  # the comma (orjson) or the bracket (msgspec)


@pytest.mark.parametrize("decoder", DECODERS)
def test_trailing_content_points_at_its_first_byte(decoder: str) -> None:
    """Content after the document is reported at its first byte with both decoders."""
    with pytest.raises(InvalidJSON) as info:
        decode(b"[1]   x", decoder=decoder)

    assert 6 == info.value.position


def test_typed_syntax_error_after_a_schema_error() -> None:
    """msgspec's typed decoder meets the wrong type first; the answer is the syntax error
    further on, with its position, not a schema error."""
    doc = b'{"records": "not a list",\n "x": [1,]}'
    with pytest.raises(InvalidJSON) as info:
        decode(doc, type=Ingest)

    err = info.value
    assert ("syntax", doc.index(b"]"), 2) == (err.reason, err.position, err.line)


def test_typed_invalid_utf8_after_a_schema_error() -> None:
    """Invalid UTF-8 behind a schema error is a syntax error at its byte."""
    doc = b'{"records": "x", "note": "\xff"}'
    with pytest.raises(InvalidJSON) as info:
        decode(doc, type=Ingest)

    assert ("syntax", doc.index(b"\xff")) == (info.value.reason, info.value.position)


def test_schema_error_on_valid_json_has_reason_schema() -> None:
    """Valid JSON of the wrong shape stays a schema error: reason schema, msgspec's
    $.path message, no position."""
    with pytest.raises(InvalidJSON) as info:
        decode(b'{"records": [1, "two"]}', type=Ingest)

    err = info.value
    assert ("schema", None) == (err.reason, err.position)
    assert "$.records[1]" in err.detail


def test_typed_number_overflow_in_a_float_field() -> None:
    """A typed float field given 1e400 is number_out_of_range at the number."""
    doc = b'{"value": 1e400}'
    with pytest.raises(InvalidJSON) as info:
        decode(doc, type=Measure)

    assert ("number_out_of_range", doc.index(b"1e400")) == (info.value.reason, info.value.position)


@pytest.mark.parametrize("decoder", DECODERS)
def test_syntax_errors_have_reason_syntax(decoder: str) -> None:
    """Plain syntax errors carry reason syntax."""
    with pytest.raises(InvalidJSON) as info:
        decode(b"[1 2]", decoder=decoder)

    assert ("syntax", 3) == (info.value.reason, info.value.position)


@pytest.mark.parametrize("decoder", [*DECODERS, "typed"])
@pytest.mark.parametrize("before", [70_000, 65_535, 65_534])
def test_invalid_utf8_far_into_the_document(decoder: str, before: int) -> None:
    """The UTF-8 check works in 64 KiB steps: a bad byte past the first step, or a
    multi-byte character split across two steps before it, is still found at its byte."""
    doc = b'{"records": "' + b"a" * (before - 13) + "\u00e9".encode() + b'\xc3("}'
    kwargs: dict[str, Any] = {"type": Ingest} if decoder == "typed" else {"decoder": decoder}

    with pytest.raises(InvalidJSON) as info:
        decode(doc, **kwargs)

    assert ("syntax", doc.index(b"\xc3(")) == (info.value.reason, info.value.position)
