"""Leak tests: thousands of arena cycles leave object counts and RSS flat.

Each runs in a fresh interpreter (like multidict's tests/test_leaks.py) with
arenapool.testing.check_no_growth: a warm-up of 1,000 cycles, then 10,000 measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

MAX_OBJECT_GROWTH = 50  # a leak of one object per cycle would show 10,000
MAX_RSS_GROWTH = 2 * 1024 * 1024  # a leak of 1 KiB per cycle would show ~10 MiB

SETUP = """
import json, warnings
from arenapool import ObjectPool, SlabPool, ViewEscapedWarning
from arenapool.testing import check_no_growth

pool = SlabPool("64MiB", decay=None)
objects = ObjectPool(lambda: bytearray(4096), maxsize=4)
doc = json.dumps({"items": list(range(50)), "name": "caf\\u00e9", "nested": {"a": [1.5, None]}})
doc = doc.encode()
sizes = [1, 24, 100, 3000, 5000, 70000, 300000]
"""

REPORT = """
report = check_no_growth(cycle, cycles=10_000, warmup=1_000,
                         max_object_growth=None, max_rss_growth=None)
stats = pool.stats()
print(json.dumps({**report.as_dict(), "lent": stats["lent_blocks"],
                  "quarantined": stats["quarantined_blocks"], "open": stats["arenas_open"]}))
"""

ARENA_CYCLE = """
def cycle():
    with pool.arena() as arena:
        for n in sizes:
            arena.alloc(n)[:1] = b"x"
        view = arena.copy(doc)
        arena.json(view)
        arena.json(view, decoder="msgspec")
        arena.borrow(objects)[:1] = b"y"
"""

ESCAPE_CYCLE = """
warnings.simplefilter("ignore", ViewEscapedWarning)

def cycle():
    with pool.arena() as arena:
        kept = arena.copy(doc)[:10]
        arena.alloc(5000)
    assert bytes(kept) == doc[:10]
    del kept
"""


def check(seen: dict[str, int]) -> None:
    assert (0, 0, 0) == (seen["lent"], seen["quarantined"], seen["open"])
    assert seen["object_growth"] <= MAX_OBJECT_GROWTH, seen
    assert seen["rss_growth"] <= MAX_RSS_GROWTH, seen


@pytest.mark.slow
def test_arena_cycles_do_not_leak(run_python: Callable[..., Any]) -> None:
    """10,000 cycles of alloc, copy, JSON and borrow leave objects and RSS flat."""
    check(run_python(SETUP + ARENA_CYCLE + REPORT))


@pytest.mark.slow
def test_escape_cycles_do_not_leak(run_python: Callable[..., Any]) -> None:
    """10,000 escapes, quarantines and returns leave objects and RSS flat."""
    check(run_python(SETUP + ESCAPE_CYCLE + REPORT))
