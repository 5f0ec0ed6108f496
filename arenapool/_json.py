"""JSON decoding straight from arena memory, and encoding to fresh bytes.

Decoders read any buffer (a ``memoryview`` into an arena included) without making a
``bytes`` or ``str`` copy first. orjson is the default; msgspec is the other backend
(its decoder keeps no work buffer the size of the document, and it decodes into typed
``msgspec.Struct`` classes). Every decode error becomes :class:`InvalidJSON` with the
0-based *byte* position, line and column.

Encoding always returns new ``bytes``: a response body must never be arena memory.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

import orjson

from ._errors import ArenaPoolError, InvalidJSON

__all__ = ["DECODERS", "Decoder", "decode", "encode"]

Decoder = Literal["orjson", "msgspec"]
DECODERS: tuple[Decoder, ...] = ("orjson", "msgspec")

_MSGSPEC_BYTE = re.compile(r"\(byte (\d+)\)")


def decode(data: Any, *, decoder: str | None = None, type: Any = None) -> Any:
    """Decode a JSON document from ``data`` (bytes-like).

    ``decoder`` is ``"orjson"`` (default) or ``"msgspec"``; ``type`` (a
    ``msgspec.Struct`` subclass or any type msgspec understands) decodes and validates
    into that type and implies msgspec.
    """
    if type is not None or decoder == "msgspec":
        return _decode_msgspec(data, type)
    if decoder not in (None, "orjson"):
        msg = f"unknown JSON decoder {decoder!r}; use one of {', '.join(DECODERS)}"
        raise ArenaPoolError(msg, decoder=decoder)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _orjson_error(data, exc) from None


def encode(obj: Any, *, option: int = 0) -> bytes:
    """Encode ``obj`` to new ``bytes`` with orjson (msgspec Structs are supported)."""
    return orjson.dumps(obj, default=_default, option=option)


def _default(obj: Any) -> Any:
    msgspec = _msgspec()
    if msgspec is not None and isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj)
    msg = f"Type is not JSON serializable: {type(obj).__name__}"
    raise TypeError(msg)


def _orjson_error(data: Any, exc: orjson.JSONDecodeError) -> InvalidJSON:
    # orjson counts characters; clients want the byte offset into what they sent.
    data = _buffer(data)
    raw = bytes(data[: _char_limit(exc.pos)]) if exc.pos else b""
    text = raw.decode("utf-8", errors="surrogateescape")
    byte_pos = len(text[: exc.pos].encode("utf-8", errors="surrogateescape"))
    detail = exc.msg
    return _invalid(detail, byte_pos, data)


def _char_limit(pos: int) -> int:
    # A UTF-8 character is at most 4 bytes: the first 4*pos bytes hold pos characters.
    return 4 * pos + 4


def _decode_msgspec(data: Any, type: Any) -> Any:
    msgspec = _msgspec()
    if msgspec is None:
        msg = "the msgspec decoder needs msgspec: pip install 'arenapool[msgspec]'"
        raise ArenaPoolError(msg)
    dec = _msgspec_decoder(type if type is not None else Any)
    try:
        return dec.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidJSON(
            f"JSON does not match {getattr(type, '__name__', type)}: {exc}",
            position=None,
            line=None,
            column=None,
            detail=str(exc),
        ) from None
    except msgspec.DecodeError as exc:
        text = str(exc)
        found = _MSGSPEC_BYTE.search(text)
        position = int(found.group(1)) if found else len(memoryview(_buffer(data)).cast("B"))
        raise _invalid(text.removeprefix("JSON is malformed: "), position, data) from None


def _invalid(detail: str, position: int, data: Any) -> InvalidJSON:
    view = memoryview(_buffer(data))
    prefix = bytes(view[:position]) if view.ndim == 1 else b""
    line = prefix.count(b"\n") + 1
    column = position - (prefix.rfind(b"\n") + 1) + 1
    msg = (
        f"malformed JSON at byte {position} (line {line}, column {column}): {detail}; "
        "send a valid JSON document"
    )
    return InvalidJSON(msg, position=position, line=line, column=column, detail=detail)


def _buffer(data: Any) -> Any:
    """Both decoders also take ``str``; error positions are counted in its UTF-8 bytes."""
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data


@lru_cache(maxsize=1)
def _msgspec() -> Any:
    try:
        import msgspec  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return msgspec


@lru_cache(maxsize=256)
def _msgspec_decoder(type: Any) -> Any:
    return _msgspec().json.Decoder(type)
