"""Decay and trim give memory back to the OS: asserted on RSS, in a fresh process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

MiB = 1024 * 1024
BURST = 64 * MiB

# Lends a burst of 64 x 1 MiB blocks, writes every page, gives them back, then runs
# ACTION and reports the RSS of this process at each stage (psutil, measured here).
SNIPPET = """
import ctypes, json, time
import psutil
from arenapool import SlabPool

MiB = 1024 * 1024
process = psutil.Process()
rss = lambda: process.memory_info().rss
pool = SlabPool("128MiB", decay={decay}, retain=None)  # decay alone returns memory
base = rss()
blocks = [pool.lend(MiB) for _ in range(64)]
for block in blocks:
    probe = ctypes.c_char.from_buffer(block.view)
    ctypes.memset(ctypes.addressof(probe), 1, MiB)
    del probe
peak = rss()
pool.give_back(blocks)
del blocks
held = rss()
started = time.monotonic()
{action}
after = rss()
print(json.dumps({{
    "base": base, "peak": peak, "held": held, "after": after,
    "elapsed": time.monotonic() - started, "returned": returned,
    "mapped": pool.stats()["mapped_bytes"],
}}))
"""

POLL = """
deadline = time.monotonic() + 20
while rss() > base + 16 * MiB and time.monotonic() < deadline:
    time.sleep(0.05)
returned = pool.stats()["returned_bytes"]
"""

TRIM = """
returned = pool.trim()
"""


@pytest.mark.slow
def test_decay_returns_a_burst_to_the_os(run_python: Callable[..., Any]) -> None:
    """After a 64 MiB burst, RSS stays up while warm, then drops once decay passes."""
    seen = run_python(SNIPPET.format(decay=1.0, action=POLL))

    assert seen["peak"] - seen["base"] >= BURST * 0.9
    assert seen["held"] - seen["base"] >= BURST * 0.9  # kept warm right after the burst
    assert seen["peak"] - seen["after"] >= BURST * 0.75
    assert (BURST, 0) == (seen["returned"], seen["mapped"])


def test_trim_returns_memory_at_once(run_python: Callable[..., Any]) -> None:
    """trim() on a pool without decay returns the idle burst and RSS drops at once."""
    seen = run_python(SNIPPET.format(decay=None, action=TRIM))

    assert seen["held"] - seen["base"] >= BURST * 0.9
    assert seen["held"] - seen["after"] >= BURST * 0.75
    assert (BURST, 0) == (seen["returned"], seen["mapped"])
