"""Sizes: parse_size and format_size."""

from __future__ import annotations

import pytest

from arenapool import ArenaPoolError, InvalidSize, format_size, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        ("4096", 4096),
        ("512B", 512),
        ("64KiB", 65536),
        ("64K", 65536),
        ("1.5 MiB", 1572864),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("  8 mib ", 8 * 1024**2),
    ],
)
def test_parse_size_binary(value: int | str, expected: int) -> None:
    """Ints are bytes; KiB/MiB/GiB/TiB and bare K/M/G/T are powers of 1024."""
    assert expected == parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1kB", 1000), ("100MB", 100_000_000), ("2GB", 2_000_000_000), ("1TB", 10**12)],
)
def test_parse_size_decimal(value: str, expected: int) -> None:
    """kB/MB/GB/TB are powers of 1000."""
    assert expected == parse_size(value)


@pytest.mark.parametrize("value", ["12 parsecs", "MiB", "", "1..5KiB", "-1KiB", "0x10"])
def test_parse_size_rejects_non_sizes(value: str) -> None:
    """A string that is not a number with a known unit raises InvalidSize naming it."""
    with pytest.raises(InvalidSize) as info:
        parse_size(value, name="budget")

    assert repr(value) in str(info.value)
    assert "budget" in str(info.value)
    assert value == info.value.value


def test_parse_size_rejects_fractional_bytes() -> None:
    """A size that is not a whole number of bytes is refused."""
    with pytest.raises(InvalidSize, match="whole number of bytes"):
        parse_size("1.5B")


@pytest.mark.parametrize("value", [-1, "-5"])
def test_parse_size_rejects_negative(value: int | str) -> None:
    """Negative sizes raise InvalidSize with the value in the message."""
    with pytest.raises(InvalidSize, match=repr(value)):
        parse_size(value)


@pytest.mark.parametrize("value", [0, "0", "0KiB"])
def test_parse_size_zero(value: int | str) -> None:
    """Zero is refused unless allow_zero=True."""
    with pytest.raises(InvalidSize, match="positive"):
        parse_size(value)

    assert 0 == parse_size(value, allow_zero=True)


@pytest.mark.parametrize("value", [True, False, 1.5, None, b"64KiB"])
def test_parse_size_rejects_other_types(value: object) -> None:
    """Bools, floats, None and bytes are not sizes."""
    with pytest.raises(InvalidSize, match="must be an int or a string"):
        parse_size(value)  # type: ignore[arg-type]


def test_invalid_size_is_a_value_error() -> None:
    """InvalidSize is both an ArenaPoolError and a ValueError."""
    with pytest.raises(ValueError) as info:
        parse_size("lots")

    assert isinstance(info.value, ArenaPoolError)


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12582912, "12.0 MiB"),
        (256 * 1024**2, "256.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**5, "5120.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(nbytes: int, expected: str) -> None:
    """format_size prints IEC units with one decimal (bytes as an integer)."""
    assert expected == format_size(nbytes)


def test_format_parse_round_trip() -> None:
    """What format_size prints, parse_size reads back (for whole-tenth sizes)."""
    assert 12582912 == parse_size(format_size(12582912))
