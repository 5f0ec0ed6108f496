"""JSON: decoding from views with orjson and msgspec, byte-accurate errors, encoding."""

from __future__ import annotations

import msgspec
import pytest

from arenapool import ArenaPoolError, InvalidJSON
from arenapool._json import DECODERS, decode, encode

DOC = b'{"user": {"id": 7, "tags": ["a", "\xc3\xa9"]}, "ok": true, "n": 1.5}'
DECODED = {"user": {"id": 7, "tags": ["a", "é"]}, "ok": True, "n": 1.5}


class User(msgspec.Struct):
    id: int
    name: str


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
