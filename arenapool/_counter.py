"""Event counters that need no lock: ``next(c)`` counts one, :func:`peek` reads one.

A counter is an iterator over a very long ``range``: ``next()`` on it is one C call,
atomic under the GIL, so threads can count without a lock; and the iterator's
``__length_hint__`` (read through :func:`operator.length_hint`) says exactly how many
values are left, so the next value is ``_END - length_hint``. Nothing is parsed.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Final

__all__ = ["counter", "peek"]

#: Far beyond any count a process reaches, and still a C long (the fast range iterator).
_END: Final = 2**62


def counter(start: int = 0) -> Iterator[int]:
    """A counter whose first ``next()`` returns ``start``."""
    return iter(range(start, _END))


def peek(count: Iterator[int]) -> int:
    """The value the next ``next(count)`` would return, without taking it."""
    return _END - operator.length_hint(count)
