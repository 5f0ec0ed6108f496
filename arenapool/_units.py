"""Sizes: parsing ``"64KiB"``-style strings and printing IEC units.

Every public size argument accepts an ``int`` (bytes) or a string with an optional
unit. Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (kB, MB, GB,
TB) are powers of 1000; bare ``K``/``M``/``G``/``T`` are read as binary, which is what
people mean when they write ``"64K"`` next to a memory budget.
"""

from __future__ import annotations

import re

from ._errors import InvalidSize

__all__ = ["format_size", "parse_size"]

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, *, name: str = "size", allow_zero: bool = False) -> int:
    """Return ``value`` as a number of bytes.

    ``value`` is an ``int`` or a string such as ``"64KiB"``, ``"1.5 MiB"`` or ``"100MB"``.
    Raises :class:`~arenapool.InvalidSize` (a ``ValueError``) for negative sizes, zero
    (unless ``allow_zero``), unknown units and non-integral byte counts.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        msg = f"{name} must be an int or a string like '64KiB', got {value!r}"
        raise InvalidSize(msg, value=value)
    if isinstance(value, int):
        nbytes = value
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            msg = (
                f"{name}={value!r} is not a size; use bytes as an int or a number with a unit "
                "(B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB)"
            )
            raise InvalidSize(msg, value=value)
        exact = float(match.group(1)) * _UNITS[unit]
        nbytes = int(exact)
        if nbytes != exact:
            msg = f"{name}={value!r} is not a whole number of bytes ({exact!r})"
            raise InvalidSize(msg, value=value)
    if nbytes < 0 or (nbytes == 0 and not allow_zero):
        lowest = "zero or more" if allow_zero else "positive"
        msg = f"{name} must be {lowest}, got {value!r}"
        raise InvalidSize(msg, value=value)
    return nbytes


def format_size(nbytes: float) -> str:
    """Format a byte count with IEC units: ``format_size(12582912) == '12.0 MiB'``."""
    sign = "-" if nbytes < 0 else ""
    amount = float(abs(nbytes))
    if amount < 1024:
        return f"{sign}{int(amount)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024.0
        if amount < 1024 or unit == "TiB":
            return f"{sign}{amount:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
