"""JSON decoding straight from arena memory, and encoding to fresh bytes.

Decoders read any buffer (a ``memoryview`` into an arena included) without making a
``bytes`` or ``str`` copy first. orjson is the default; msgspec is the other backend
(its decoder keeps no work buffer the size of the document, and it decodes into typed
``msgspec.Struct`` classes). Encoding always returns new ``bytes``: a response body must
never be arena memory.

Theory of operation (errors). Every decode failure becomes :class:`InvalidJSON` with a
``reason`` and, except for schema errors, the 0-based *byte* ``position``, 1-based
``line`` and byte ``column`` of the first fault, whichever decoder ran:

- ``"syntax"``: the bytes are not a JSON text (RFC 8259), invalid UTF-8 included.
- ``"number_out_of_range"``: a number the decoder cannot represent (a float past
  ``1.8e308``; orjson also refuses integers that large, msgspec keeps them as ``int``).
- ``"too_deep"``: :class:`JSONTooDeep`, nesting past the decoder's depth limit; its
  ``limit`` names that limit. Never a ``RecursionError``.
- ``"schema"``: a syntactically valid document that does not match ``type=`` (msgspec's
  ``$.path`` message; ``position`` is ``None``).

The decoders do not always say where: orjson checks UTF-8 before parsing and reports it
at character 0; msgspec gives no byte for invalid UTF-8, some truncations, number
overflow and depth, and a typed decoder reports the first schema mismatch before a
syntax error further on. So, on the error path only, this module finds the position
itself: the first invalid UTF-8 byte from a chunked ``utf-8`` decode; a syntax error
from a second pass (msgspec's non-building ``Raw`` skip for typed documents, orjson
otherwise); the point where msgspec's own error starts by bisecting the prefixes of the
document (a decoder that reads left to right fails on a prefix exactly when the prefix
holds the fault). The success path is one call into the decoder, as before.

Depth limits (measured with ``benchmarks/json_depth.py``): orjson refuses more than 1024
nested arrays/objects (1025 fails), at any call depth. msgspec has no depth limit of its
own: it stops with ``RecursionError`` at the interpreter's recursion limit, so on CPython
3.11 it decodes ``sys.getrecursionlimit()`` (1000) minus the Python frames already on the
stack: about 995 levels at a module's top level, about 980 in an aiohttp handler.
The error's ``limit`` is measured after the fact, from the failing call's frame, and can
be a level or two below the depth msgspec actually reached (raising an error deep in the
stack costs stack too).
"""

from __future__ import annotations

import codecs
import re
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import orjson

from ._errors import ArenaPoolError, InvalidJSON, JSONTooDeep

__all__ = ["DECODERS", "ORJSON_MAX_DEPTH", "Decoder", "decode", "encode", "msgspec_decoder"]

Decoder = Literal["orjson", "msgspec"]
DECODERS: tuple[Decoder, ...] = ("orjson", "msgspec")

#: orjson's nesting limit: 1024 levels decode, the 1025th opening bracket fails.
ORJSON_MAX_DEPTH = 1024

_MSGSPEC_BYTE = re.compile(r"\s*\(byte (\d+)\)")
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")
_WHITESPACE = frozenset(b" \t\r\n")
_OPENERS = frozenset(b"[{")
_UTF8_CHUNK = 1 << 16
_DEPTH_CEILING = 1 << 16  # above any recursion limit msgspec meets in practice


def decode(data: Any, *, decoder: str | None = None, type: Any = None) -> Any:
    """Decode a JSON document from ``data`` (bytes-like).

    ``decoder`` is ``"orjson"`` (default) or ``"msgspec"``; ``type`` (a
    ``msgspec.Struct`` subclass or any type msgspec understands) decodes and validates
    into that type and implies msgspec. Errors raise :class:`InvalidJSON` (see the
    module docstring for ``reason`` and positions).
    """
    if type is not None or decoder == "msgspec":
        return _decode_msgspec(data, type)
    if decoder not in (None, "orjson"):
        msg = f"unknown JSON decoder {decoder!r}; use one of {', '.join(DECODERS)}"
        raise ArenaPoolError(msg, decoder=decoder)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _orjson_error(_bytes_view(data), exc) from None


def encode(obj: Any, *, option: int = 0) -> bytes:
    """Encode ``obj`` to new ``bytes`` with orjson (msgspec Structs are supported)."""
    return orjson.dumps(obj, default=_default, option=option)


def _default(obj: Any) -> Any:
    msgspec = _msgspec()
    if msgspec is not None and isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj)
    msg = f"Type is not JSON serializable: {type(obj).__name__}"
    raise TypeError(msg)


# -- orjson -----------------------------------------------------------------------------


def _orjson_error(view: memoryview, exc: orjson.JSONDecodeError) -> InvalidJSON:
    """Turn orjson's error into InvalidJSON at the first fault's byte."""
    detail = exc.msg
    if detail.startswith("str is not valid UTF-8"):
        # orjson validates UTF-8 before it parses, and says "char 0": find the byte,
        # then let a syntax error before it win (the first fault is reported).
        bad = _first_invalid_utf8(view)
        if bad is None:  # only a str's lone surrogates get here without a bad byte
            return _invalid(detail, 0, view)
        earlier = _orjson_fault(view[:bad])
        if earlier is not None and earlier[0] < bad:
            return _classified(earlier[1], earlier[0], view, "orjson")
        return _invalid(_bad_byte(view, bad), bad, view)
    return _classified(detail, _char_to_byte(view, exc.pos), view, "orjson")


def _orjson_fault(view: memoryview) -> tuple[int, str] | None:
    """(byte position, message) of orjson's error on ``view``, or None if it decodes."""
    try:
        orjson.loads(view)
    except orjson.JSONDecodeError as exc:
        return _char_to_byte(view, exc.pos), exc.msg
    return None


def _classified(detail: str, position: int, view: memoryview, decoder: str) -> InvalidJSON:
    if detail.startswith("depth limit exceeded"):
        # orjson names the byte after the bracket that went one level too deep
        bracket = position - 1
        while bracket > 0 and view[bracket] in _WHITESPACE:
            bracket -= 1
        if 0 <= bracket < len(view) and view[bracket] in _OPENERS:
            position = bracket
        return _too_deep(view, position, ORJSON_MAX_DEPTH, decoder)
    if detail.startswith("number is infinity"):
        return _invalid(detail, position, view, reason="number_out_of_range")
    return _invalid(detail, position, view)


def _char_to_byte(view: memoryview, pos: int) -> int:
    # orjson counts characters; clients want the byte offset into what they sent.
    if not pos:
        return 0
    raw = bytes(view[: 4 * pos + 4])  # a UTF-8 character is at most 4 bytes
    text = raw.decode("utf-8", errors="surrogateescape")
    return len(text[:pos].encode("utf-8", errors="surrogateescape"))


# -- msgspec ----------------------------------------------------------------------------


def _decode_msgspec(data: Any, type: Any) -> Any:
    msgspec = _msgspec()
    if msgspec is None:
        msg = "the msgspec decoder needs msgspec: pip install 'arenapool[msgspec]'"
        raise ArenaPoolError(msg)
    dec = msgspec_decoder(type if type is not None else Any)
    try:
        return dec.decode(data)
    except msgspec.ValidationError as exc:
        schema_error: str | None = str(exc)
    except msgspec.DecodeError as exc:
        raise _msgspec_decode_error(_bytes_view(data), str(exc)) from None
    except RecursionError:
        schema_error = None
    # Outside the except clauses on purpose: while an exception is being handled, an
    # error raised deep inside msgspec is chained to it, which costs one more level of
    # recursion and would put the depth probes one level off.
    if schema_error is None:
        raise _msgspec_too_deep(_bytes_view(data), dec, _same_kind(data)) from None
    raise _msgspec_validation_error(_bytes_view(data), dec, type, schema_error) from None


def _msgspec_decode_error(view: memoryview, text: str) -> InvalidJSON:
    """msgspec's syntax error, at its byte when it names one, else located."""
    detail = text.removeprefix("JSON is malformed: ")
    found = _MSGSPEC_BYTE.search(detail)
    bad = _first_invalid_utf8(view)
    if found is not None:
        position = int(found.group(1))
        detail = detail[: found.start()] + detail[found.end() :]
        if detail == "trailing characters":  # msgspec names the byte after the first one
            position -= 1
        if bad is not None and bad < position:  # skipped strings are not UTF-8 checked
            return _invalid(_bad_byte(view, bad), bad, view)
        return _invalid(detail, position, view)
    if bad is not None:  # "Invalid UTF-8 encoded string", no byte: find it
        return _invalid(_bad_byte(view, bad), bad, view)
    # "Input data was truncated" is also said of a lone "\ud800" mid-document: ask orjson.
    fault = _orjson_fault(view)
    if fault is not None and fault[0] < len(view):
        return _classified(fault[1], fault[0], view, "msgspec")
    return _invalid(detail, len(view), view)


def _msgspec_validation_error(view: memoryview, dec: Any, type: Any, text: str) -> InvalidJSON:
    """A schema error, unless the document is not valid JSON: then that syntax error.

    A typed decoder stops at the first value that does not match, before it reaches a
    syntax error further on. msgspec's ``Raw`` skip checks the syntax without building
    objects (it does not check UTF-8 inside strings, so that is checked too).
    """
    msgspec = _msgspec()
    raw = msgspec_decoder(msgspec.Raw)
    try:
        raw.decode(view)
    except msgspec.DecodeError as exc:
        return _msgspec_decode_error(view, str(exc))
    except RecursionError:
        too_deep = True
    else:
        too_deep = False
    if too_deep:  # outside the except clause: see _decode_msgspec
        return _msgspec_too_deep(view, raw, view)
    bad = _first_invalid_utf8(view)
    if bad is not None:
        return _invalid(_bad_byte(view, bad), bad, view)
    if text.startswith("Number out of range"):
        position = _number_position(view, dec, text)
        return _invalid(text, position, view, reason="number_out_of_range")
    name = getattr(type, "__name__", None) or (repr(type) if type is not None else "any")
    msg = f"JSON does not match {name}: {text}; send a document of that shape"
    err = InvalidJSON(msg, position=None, line=None, column=None, detail=text)
    err.reason = "schema"
    return err


def _number_position(view: memoryview, dec: Any, text: str) -> int:
    """Where the out-of-range number msgspec refused starts."""
    fault = _orjson_fault(view)  # orjson refuses the same floats, and names the char
    if fault is not None and fault[1].startswith("number is infinity"):
        end = _number_end(view, fault[0])
        if any(c in b".eE" for c in bytes(view[fault[0] : end])):
            return fault[0]
    # An integer past 1.8e308 came first (orjson refuses it, msgspec keeps it): ask
    # msgspec itself for the shortest prefix it refuses the same way, then step back.
    msgspec = _msgspec()

    def refused(prefix: memoryview) -> bool:
        try:
            dec.decode(prefix)
        except msgspec.ValidationError as exc:
            return str(exc) == text
        except (msgspec.DecodeError, RecursionError):
            return False
        return False

    end = _shortest_prefix(view, refused)
    start = end
    while start > 0 and view[start - 1] in _NUMBER_CHARS:
        start -= 1
    return start


def _number_end(view: memoryview, start: int) -> int:
    end = start
    while end < len(view) and view[end] in _NUMBER_CHARS:
        end += 1
    return end


def _msgspec_too_deep(view: memoryview, dec: Any, failed: Any) -> JSONTooDeep:
    """msgspec gave up with ``RecursionError`` on ``failed``: its limit there, and where.

    The limit is measured with plain arrays of the same kind as ``failed`` (msgspec does
    not go equally deep into ``bytes`` and a ``memoryview``), two frames below the call
    that failed (on CPython 3.11 a Python frame costs msgspec one level). The position:
    bisecting prefixes finds the region fast but can stop a level or two early (raising
    the "truncated" error at the bottom of a prefix costs stack too), so the last levels
    are walked to the first bracket past the limit.
    """
    kind: Callable[[bytes], Any] = memoryview if isinstance(failed, memoryview) else bytes
    limit = _array_depth(kind) + _FRAMES_BELOW_CALL * _frame_cost()
    raw = msgspec_decoder(_msgspec().Raw)
    start = _recursion_point(view, raw) if _recurses(view, raw) else _recursion_point(failed, dec)
    position = _deeper(view, start, limit + 1 - _depth_at(view, start))
    return _too_deep(view, position, limit, "msgspec")


_FRAMES_BELOW_CALL = 2  # the caller of _msgspec_too_deep -> _msgspec_too_deep -> the probe


def _recurses(data: Any, dec: Any) -> bool:
    try:
        dec.decode(data)
    except RecursionError:
        return True
    except ValueError:  # msgspec's DecodeError and ValidationError
        return False
    return False


def _recursion_point(data: Any, dec: Any) -> int:
    """The bracket where ``dec``, called from this frame, recurses too deep in ``data``.

    The shortest prefix that recurses too deep ends with it (a decoder reading left to
    right fails on a prefix exactly when the prefix holds the bracket): a bisection,
    log2(len) decodes.
    """
    msgspec = _msgspec()
    low, high = 0, len(data)  # data[:low] does not recurse too deep, data[:high] does
    while high - low > 1:
        middle = (low + high) // 2
        try:
            dec.decode(data[:middle])
        except RecursionError:
            high = middle
        except (msgspec.DecodeError, msgspec.ValidationError):
            low = middle
        else:
            low = middle
    return max(high - 1, 0)


def _array_depth(kind: Callable[[bytes], Any] = bytes) -> int:
    """The deepest plain array msgspec decodes when called from this frame."""
    probe = msgspec_decoder(Any)
    low, high = 0, max(sys.getrecursionlimit(), _DEPTH_CEILING) + 1  # low decodes, high not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            probe.decode(kind(b"[" * middle + b"]" * middle))
        except RecursionError:
            high = middle
        else:
            low = middle
    return low


def _array_depth_below(frames: int) -> int:
    return _array_depth_below(frames - 1) if frames else _array_depth()


@lru_cache(maxsize=1)
def _frame_cost() -> int:
    """Levels of msgspec depth one Python frame costs: 1 on CPython 3.11, else maybe 0."""
    return max(0, _array_depth_below(1) - _array_depth_below(2))


# JSON strings, for skipping them (the text scanned here has been parsed: they close).
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"')
# One step of a scan that knows only strings and brackets: skip everything else.
_SKIP = re.compile(rb'(?:[^"\[\]{}]+|"[^"\\]*(?:\\[\s\S][^"\\]*)*")*')


def _depth_at(view: memoryview, position: int) -> int:
    """How many arrays/objects are open just after the byte at ``position``."""
    text = _STRING.sub(b"", bytes(view[: position + 1]))
    return text.count(b"[") + text.count(b"{") - text.count(b"]") - text.count(b"}")


def _deeper(view: memoryview, start: int, levels: int) -> int:
    """The first bracket ``levels`` deeper than the opening bracket at ``start``."""
    if levels <= 0:
        return start
    data = bytes(view)
    depth = 0
    pos = start + 1
    while True:
        found = _SKIP.match(data, pos)
        pos = found.end() if found is not None else pos
        if pos >= len(data) or data[pos] == ord('"'):  # the end, or a string never closed
            return start
        if data[pos] in b"[{":
            depth += 1
            if depth == levels:
                return pos
        else:
            depth -= 1
        pos += 1


def _shortest_prefix(view: memoryview, fails: Callable[[memoryview], bool]) -> int:
    """The length of the shortest prefix of ``view`` on which ``fails`` is true.

    ``fails(view)`` is true and, for a decoder reading left to right, stays true for
    every longer prefix once the fault is inside: a bisection, log2(len) decodes.
    """
    low, high = 0, len(view)  # fails(view[:low]) is false, fails(view[:high]) is true
    while high - low > 1:
        middle = (low + high) // 2
        if fails(view[:middle]):
            high = middle
        else:
            low = middle
    return high


# -- shared -----------------------------------------------------------------------------


def _first_invalid_utf8(view: memoryview) -> int | None:
    """Byte offset of the first byte that is not valid UTF-8, or None (in 64 KiB steps)."""
    decode = codecs.utf_8_decode
    offset = 0
    total = len(view)
    while offset < total:
        chunk = view[offset : offset + _UTF8_CHUNK]
        final = offset + len(chunk) >= total
        try:
            _, used = decode(chunk, "strict", final)
        except UnicodeDecodeError as exc:
            return offset + exc.start
        if not used and not final:  # a sequence longer than the rest: take more
            chunk = view[offset : offset + _UTF8_CHUNK + 4]
            try:
                _, used = decode(chunk, "strict", offset + len(chunk) >= total)
            except UnicodeDecodeError as exc:
                return offset + exc.start
        offset += used if used else len(chunk)
    return None


def _too_deep(view: memoryview, position: int, limit: int, decoder: str) -> JSONTooDeep:
    line, column = _line_column(view, position)
    detail = f"nesting deeper than {decoder}'s limit of {limit} levels"
    msg = (
        f"JSON nests too deep at byte {position} (line {line}, column {column}): "
        f"{detail}; send a document at most {limit} arrays/objects deep"
    )
    return JSONTooDeep(
        msg,
        position=position,
        line=line,
        column=column,
        detail=detail,
        limit=limit,
        decoder=decoder,
    )


def _invalid(
    detail: str, position: int, view: memoryview, *, reason: str = "syntax"
) -> InvalidJSON:
    line, column = _line_column(view, position)
    if reason == "syntax":
        what, hint = "malformed JSON", "send a valid JSON document"
    else:
        what, hint = "JSON number out of range", "send numbers within +-1.8e308"
    msg = f"{what} at byte {position} (line {line}, column {column}): {detail}; {hint}"
    err = InvalidJSON(msg, position=position, line=line, column=column, detail=detail)
    err.reason = reason
    return err


def _bad_byte(view: memoryview, position: int) -> str:
    return f"invalid UTF-8 byte 0x{view[position]:02x}"


def _line_column(view: memoryview, position: int) -> tuple[int, int]:
    prefix = bytes(view[:position])
    return prefix.count(b"\n") + 1, position - (prefix.rfind(b"\n") + 1) + 1


def _same_kind(data: Any) -> Any:
    """``data`` as msgspec saw it, sliceable by byte (a ``str`` as its UTF-8 bytes)."""
    if isinstance(data, (bytes, bytearray)):
        return data
    return _bytes_view(data)


def _bytes_view(data: Any) -> memoryview:
    """A flat byte view of ``data``; a ``str`` is counted in its UTF-8 bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


@lru_cache(maxsize=1)
def _msgspec() -> Any:
    try:
        import msgspec  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return msgspec


@lru_cache(maxsize=256)
def msgspec_decoder(type: Any) -> Any:
    """The ``msgspec.json.Decoder`` for ``type`` (``Any``: untyped), made once.

    Raises ``AttributeError`` without msgspec, ``TypeError`` for an unhashable type:
    :func:`decode` says what to do about either.
    """
    return _msgspec().json.Decoder(type)
