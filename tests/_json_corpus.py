"""A JSON conformance corpus, generated here (no public suite's files are copied).

Three kinds, named like the public suites name theirs:

- ``ACCEPT`` (``y_``): RFC 8259 JSON texts every decoder must accept; each decodes to
  what the standard library's ``json.loads`` gives.
- ``REJECT`` (``n_``): texts that are not JSON: every decoder refuses them, with the
  byte position, line and column of the fault.
- ``IMPLEMENTATION`` (``i_``): texts where RFC 8259 lets a decoder choose (number range,
  lone surrogate escapes, a BOM, nesting depth); each entry records what orjson and
  msgspec do, which the docs table repeats.

Cases are built from the categories such suites cover: structure, literals, numbers,
strings and escapes, UTF-8, whitespace, trailing content, depth. A few families are
generated (every control byte in a string, every invalid escape letter, truncations of
valid documents) so that the reject list is large without being hand-typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["accept", "syntax", "number_out_of_range", "too_deep"]


@dataclass(frozen=True)
class Case:
    name: str
    doc: bytes

    def __repr__(self) -> str:  # pytest ids
        return self.name


@dataclass(frozen=True)
class ImplCase(Case):
    orjson: Verdict
    msgspec: Verdict


def _cases(prefix: str, items: dict[str, bytes]) -> list[Case]:
    return [Case(f"{prefix}_{name}", doc) for name, doc in items.items()]


ACCEPT: list[Case] = _cases(
    "y",
    {
        "empty_array": b"[]",
        "empty_object": b"{}",
        "array_whitespace": b" [ 1 , 2 ] ",
        "all_whitespace_kinds": b"\t\n\r [\t1\n,\r2 ]\n",
        "nested_mixed": b'{"a": [1, {"b": [true, false, null]}, "c"], "d": {}}',
        "top_zero": b"0",
        "top_negative_zero": b"-0",
        "top_string": b'"top"',
        "top_true": b"true",
        "top_false": b"false",
        "top_null": b"null",
        "int": b"[123]",
        "negative_int": b"[-123]",
        "fraction": b"[1.5]",
        "exponent": b"[1e10]",
        "exponent_capital": b"[1E10]",
        "exponent_plus": b"[1e+2]",
        "exponent_minus": b"[1e-2]",
        "fraction_exponent": b"[-1.25E-3]",
        "zero_fraction": b"[0.0]",
        "zero_exponent": b"[0e0]",
        "int_past_64_bits": b"[18446744073709551616]",
        "small_underflow": b"[1e-400]",
        "long_fraction": b"[0." + b"1" * 200 + b"]",
        "max_double": b"[1.7976931348623157e308]",
        "empty_string": b'[""]',
        "empty_key": b'{"": 1}',
        "duplicate_keys": b'{"a": 1, "a": 2}',
        "escapes_simple": b'["\\" \\\\ \\/ \\b \\f \\n \\r \\t"]',
        "escape_unicode": b'["\\u00e9"]',
        "escape_unicode_upper_hex": b'["\\u00E9"]',
        "escape_null": b'["\\u0000"]',
        "escape_surrogate_pair": b'["\\ud83d\\ude00"]',
        "escape_noncharacter": b'["\\uffff"]',
        "raw_utf8_two_byte": '["\u00e9"]'.encode(),
        "raw_utf8_three_byte": '["\u20ac"]'.encode(),
        "raw_utf8_four_byte": '["\U0001f600"]'.encode(),
        "raw_del_byte": b'["a\x7fb"]',
        "raw_u2028": '["\u2028"]'.encode(),
        "key_with_escapes": b'{"\\n\\u0041": 1}',
        "objects_nested_100": b'{"a":' * 100 + b"1" + b"}" * 100,
        "long_array": b"[" + b",".join(b"%d" % i for i in range(1000)) + b"]",
        "long_string": b'["' + b"x" * 100_000 + b'"]',
        "trailing_newline": b"[1]\n",
    },
)


def _generated_rejects() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for byte in range(0x20):  # every control byte raw inside a string
        out[f"string_control_{byte:02x}"] = b'["a' + bytes([byte]) + b'b"]'
    for letter in b"acdeghijklmopqsvwxyzABFNRTU0'?":  # escapes JSON does not define
        out[f"string_escape_{chr(letter)}"] = b'["\\' + bytes([letter]) + b'"]'
    for byte in (0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xF8, 0xFC, 0xFE, 0xFF):
        out[f"utf8_byte_{byte:02x}_in_string"] = b'["' + bytes([byte]) + b'"]'
    for byte in (0x00, 0x0B, 0x0C, 0x1F, 0x7F, 0x80, 0xA0, 0xFF):  # not JSON whitespace
        out[f"bad_whitespace_{byte:02x}"] = b"[" + bytes([byte]) + b"1]"
    for word in (b"tru", b"fals", b"nul", b"True", b"FALSE", b"Null", b"nil", b"undefined"):
        out[f"literal_{word.decode()}"] = b"[" + word + b"]"
    return out


REJECT: list[Case] = _cases(
    "n",
    {
        # structure
        "empty": b"",
        "only_whitespace": b" \n\t ",
        "unclosed_array": b"[1",
        "unclosed_array_comma": b"[1,",
        "unclosed_object": b'{"a": 1',
        "unclosed_object_key": b'{"a"',
        "unclosed_object_colon": b'{"a":',
        "trailing_comma_array": b"[1,]",
        "trailing_comma_object": b'{"a": 1,}',
        "leading_comma_array": b"[,1]",
        "double_comma": b"[1,,2]",
        "only_comma": b"[,]",
        "object_comma_only": b"{,}",
        "missing_comma_array": b"[1 2]",
        "missing_comma_object": b'{"a": 1 "b": 2}',
        "missing_colon": b'{"a" 1}',
        "missing_value": b'{"a":}',
        "double_colon": b'{"a"::1}',
        "unquoted_key": b"{a: 1}",
        "single_quoted_key": b"{'a': 1}",
        "number_key": b"{1: 1}",
        "array_as_key": b"{[]: 1}",
        "close_only_array": b"]",
        "close_only_object": b"}",
        "mismatched_close_array": b"[1}",
        "mismatched_close_object": b'{"a": 1]',
        "extra_close": b"[1]]",
        "colon_in_array": b"[1: 2]",
        "comma_instead_of_colon": b'{"a", 1}',
        # trailing content
        "trailing_garbage": b"[1]x",
        "trailing_after_spaces": b"[1]   x",
        "trailing_second_value": b"1 2",
        "two_objects": b"{} {}",
        "two_arrays": b"[][]",
        "two_strings": b'"a" "b"',
        "trailing_nul": b"[1]\x00",
        "trailing_comment": b"[1] // comment",
        "leading_comment": b"/* c */ [1]",
        "trailing_comma_top": b"1,",
        # literals
        "nan": b"[NaN]",
        "infinity": b"[Infinity]",
        "minus_infinity": b"[-Infinity]",
        "truex": b"[truex]",
        "nulll": b"[nulll]",
        # numbers
        "leading_zero": b"[01]",
        "minus_leading_zero": b"[-01]",
        "plus_sign": b"[+1]",
        "leading_dot": b"[.1]",
        "minus_leading_dot": b"[-.5]",
        "trailing_dot": b"[1.]",
        "dot_exponent": b"[1.e1]",
        "exponent_no_digits": b"[1e]",
        "exponent_sign_no_digits": b"[1e+]",
        "exponent_minus_no_digits": b"[1E-]",
        "only_minus": b"[-]",
        "double_minus": b"[--1]",
        "hex": b"[0x1F]",
        "underscore": b"[1_000]",
        "two_dots": b"[1.5.2]",
        "fraction_exponent_fraction": b"[1e1.5]",
        "digit_space_digit": b"[1 000]",
        "arabic_digit": "[\u0663]".encode(),
        "fullwidth_digit": "[\uff11]".encode(),
        "number_then_letter": b"[1f]",
        "top_leading_zero": b"00",
        # strings
        "unterminated_string": b'["abc',
        "unterminated_top_string": b'"abc',
        "unterminated_escape": b'["\\',
        "single_quoted_string": b"['a']",
        "escape_x": b'["\\x41"]',
        "unicode_escape_short": b'["\\u12"]',
        "unicode_escape_short_at_end": b'"\\u12"',
        "unicode_escape_not_hex": b'["\\uZZZZ"]',
        "unicode_escape_capital_u": b'["\\U0041"]',
        "raw_tab": b'["a\tb"]',
        "raw_newline": b'["a\nb"]',
        "key_unterminated": b'{"abc: 1}',
        "escaped_quote_unterminated": b'["\\"]',
        # UTF-8 outside and inside strings
        "utf8_invalid_top": b"\xff",
        "utf8_truncated_two_byte": b'["\xc3"]',
        "utf8_truncated_three_byte": b'["\xe2\x82"]',
        "utf8_truncated_four_byte": b'["\xf0\x9f\x98"]',
        "utf8_overlong_slash": b'["\xc0\xaf"]',
        "utf8_overlong_three": b'["\xe0\x80\xaf"]',
        "utf8_surrogate_d800": b'["\xed\xa0\x80"]',
        "utf8_surrogate_dfff": b'["\xed\xbf\xbf"]',
        "utf8_past_10ffff": b'["\xf4\x90\x80\x80"]',
        "utf8_five_byte": b'["\xf8\x88\x80\x80\x80"]',
        "utf8_lone_continuation": b'["a\x80b"]',
        "utf8_in_key": b'{"\xff": 1}',
        "utf8_after_valid_content": b'[1, 2, "ok", "\xc3\x28"]',
        "utf8_second_line": b'[1,\n "\xff"]',
        "utf16le_document": "[1]".encode("utf-16-le"),
        "utf16_with_bom": "[1]".encode("utf-16"),
        "utf32_document": "[1]".encode("utf-32-le"),
        # syntax error before an invalid UTF-8 byte: the first fault is reported
        "syntax_before_bad_utf8": b'[1,]  "\xff"',
        # nesting that never closes, or closes wrongly
        "deep_unclosed_arrays": b"[" * 100,
        "deep_unclosed_objects": b'{"a":' * 100,
        "deep_mismatched": b"[" * 50 + b"}" * 50,
        **_generated_rejects(),
    },
)

#: Where RFC 8259 lets a decoder choose; what each one does.
IMPLEMENTATION: list[ImplCase] = [
    ImplCase("i_number_huge_exponent", b"[1e400]", "number_out_of_range", "number_out_of_range"),
    ImplCase(
        "i_number_neg_huge_exponent", b"[-1e400]", "number_out_of_range", "number_out_of_range"
    ),
    ImplCase(
        "i_number_huge_fraction",
        b"[1" + b"0" * 400 + b".0]",
        "number_out_of_range",
        "number_out_of_range",
    ),
    # orjson parses integers as doubles past 64 bits; msgspec keeps them as int
    ImplCase("i_number_huge_int", b"[1" + b"0" * 400 + b"]", "number_out_of_range", "accept"),
    ImplCase(
        "i_number_int_then_huge_float",
        b"[1" + b"0" * 400 + b", 1e400]",
        "number_out_of_range",
        "number_out_of_range",
    ),
    ImplCase("i_string_lone_high_surrogate", b'["\\ud800"]', "syntax", "syntax"),
    ImplCase("i_string_lone_low_surrogate", b'["\\udc00"]', "syntax", "syntax"),
    ImplCase("i_string_two_high_surrogates", b'["\\ud800\\ud800"]', "syntax", "syntax"),
    ImplCase("i_string_lone_surrogate_mid", b'["\\ud800", 1]', "syntax", "syntax"),
    ImplCase("i_bom_then_document", b"\xef\xbb\xbf[1]", "syntax", "syntax"),
]

#: Nesting, as a request handler sees it: orjson's limit is 1024 at any call depth;
#: msgspec's is the interpreter's recursion limit less the stack in use (about 980
#: levels in an aiohttp handler on CPython 3.11), so 990 is past it there.
DEPTH: list[ImplCase] = [
    ImplCase("i_nested_500", b"[" * 500 + b"]" * 500, "accept", "accept"),
    ImplCase("i_nested_990", b"[" * 990 + b"]" * 990, "accept", "too_deep"),
    ImplCase("i_nested_1024", b"[" * 1024 + b"]" * 1024, "accept", "too_deep"),
    ImplCase("i_nested_1025", b"[" * 1025 + b"]" * 1025, "too_deep", "too_deep"),
    ImplCase("i_nested_1000", b"[" * 1000 + b"]" * 1000, "accept", "too_deep"),
    ImplCase("i_objects_1025", b'{"a":' * 1025 + b"1" + b"}" * 1025, "too_deep", "too_deep"),
    ImplCase(
        "i_nested_100000_unclosed",
        b'{"records":[],"x":' + b"[" * 100_000,
        "too_deep",
        "too_deep",
    ),
]


def expected(case: Case) -> Any:
    """What ``json.loads`` makes of an accepted case (the reference decoding)."""
    return json.loads(case.doc)
