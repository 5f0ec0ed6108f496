"""A cache of pymalloc's arenas: hot arenas stay hot, idle ones go back off the request path.

Theory of operation
-------------------
CPython allocates objects of up to 512 bytes with pymalloc, from 1 MiB *arenas*
(anonymous mappings). pymalloc unmaps an arena as soon as its last object dies (it keeps
at most one empty arena). A request that decodes a large JSON document makes millions of
small objects and drops them when it ends: their arenas are mapped, faulted in page by
page (the kernel zeroes every page), and unmapped again, on every such request.
``benchmarks/arena_cache.py`` (2026-12-03, fresh interpreters, medians of 5 runs): a
4 MiB document decoded by orjson took 6,814 minor faults and 35.2 ms of CPU; with this
cache 3,022 faults and 0.82x the CPU; with the cache and the governor's held heap (which
keeps orjson's work buffer off fresh mappings) none and 0.54x.

:func:`install` puts a cache in front of pymalloc's arena allocator, through CPython's
public hook for it (``PyObject_SetArenaAllocator``). An arena pymalloc frees goes on a
stack with the time it came, up to ``limit`` bytes of them; the next arena pymalloc
needs comes off the top (the one freed last, its pages still resident). Past the limit,
freed arenas are unmapped as before. Nothing is given back on pymalloc's path (which is
the request path): :func:`release` unmaps the arenas idle longest, and arenapool's
governor calls it off the event loop, for arenas idle longer than
``GovernorConfig.arena_cache_decay`` while the server is busy and for all of them when
it goes idle, so RSS comes down after a burst as it did without the cache.

Cost: between requests the cached arenas stay resident, so under load the process holds
about its recent peak of small objects, up to ``limit``, where pymalloc alone would give
the difference back and fault it in again on the next large request.

The allocator is written in C (``_arenacache_c.c``): it runs inside pymalloc, where no
Python code may run. Pure-Python installs and ``ARENAPOOL_NO_EXTENSIONS=1`` have no
cache; :func:`status` says why. The cache is process-wide and, once installed, stays in
place (a limit of 0 turns it into a pass-through).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Final

from ._ext import NO_EXTENSIONS, c_module
from ._pymalloc import ARENA_SIZE

__all__ = ["ArenaCacheStats", "install", "release", "stats", "status"]

#: The most bytes the cache can hold (the C stack's size: 4,096 arenas of 1 MiB).
MAX_LIMIT: Final = 4096 * ARENA_SIZE
#: Arenas :func:`release` unmaps per call into C: the GIL is let go between batches, so
#: a large release does not hold the event loop for its whole length.
BATCH: Final = 8


@dataclass(frozen=True)
class ArenaCacheStats:
    """The cache's state and counters (all zero before :func:`install`).

    ``hits``: arenas pymalloc took from the cache, each one an arena it did not have to
    map and fault in; ``misses``: arenas it had to get from the allocator underneath;
    ``kept``: arenas it freed into the cache; ``overflow``: freed past a full cache (and
    unmapped at once); ``released``: arenas :func:`release` gave back.
    """

    available: bool
    reason: str | None
    installed: bool
    limit: int
    cached_arenas: int
    cached_bytes: int
    hits: int
    misses: int
    kept: int
    overflow: int
    released: int

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _compiled() -> ModuleType | None:
    return c_module("arenapool._arenacache_c")


def status() -> str | None:
    """Why this process cannot cache pymalloc's arenas, or ``None`` when it can."""
    if sys.implementation.name != "cpython":
        return f"needs CPython (this is {sys.implementation.name})"
    if sys.getallocatedblocks() <= 0:
        return "pymalloc is not in use (PYTHONMALLOC?)"
    if _compiled() is None:
        why = "ARENAPOOL_NO_EXTENSIONS is set" if NO_EXTENSIONS else "it was not built"
        return f"needs the compiled arenapool._arenacache_c ({why})"
    return None


def install(limit: int) -> bool:
    """Cache up to ``limit`` bytes of the arenas pymalloc frees (rounded down to whole
    1 MiB arenas), installing the cache the first time; later calls change the limit,
    giving back at once what a lower one leaves over (longest idle first).

    Returns False, changing nothing, where :func:`status` says the cache cannot run.
    Raises ``ValueError`` for a limit below 0 or above :data:`MAX_LIMIT`.
    """
    if not 0 <= limit <= MAX_LIMIT:
        msg = f"limit must be 0 to {MAX_LIMIT} bytes, got {limit}"
        raise ValueError(msg)
    module = _compiled()
    if module is None or status() is not None:
        return False
    module.install(limit // ARENA_SIZE)
    return True


def release(*, older_than: float = 0.0, keep: int = 0) -> int:
    """Give cached arenas idle for at least ``older_than`` seconds back to the OS,
    longest idle first, keeping the ``keep`` bytes of them freed last whatever their
    age. Returns the bytes given back (0 where there is no cache). Safe from any
    thread; it holds the GIL for at most :data:`BATCH` unmaps at a time."""
    module = _compiled()
    if module is None:
        return 0
    if older_than < 0 or keep < 0:
        msg = f"older_than and keep must not be negative, got {older_than!r} and {keep!r}"
        raise ValueError(msg)
    keep_arenas = -(-keep // ARENA_SIZE)
    total = 0
    while True:  # each call into C holds the GIL, which is all the cache needs
        n = int(module.release(float(older_than), keep_arenas, BATCH))
        total += n
        if n < BATCH:
            return total * ARENA_SIZE
        time.sleep(0)  # lets the GIL go: other threads run between batches


def stats() -> ArenaCacheStats:
    """The cache's state and counters now."""
    reason = status()
    module = _compiled()
    if module is None:
        return ArenaCacheStats(False, reason, False, 0, 0, 0, 0, 0, 0, 0, 0)
    installed, limit, cached, cached_bytes, hits, misses, kept, overflow, released = module.stats()
    return ArenaCacheStats(
        reason is None,
        reason,
        bool(installed),
        int(limit) * ARENA_SIZE,
        int(cached),
        int(cached_bytes),
        int(hits),
        int(misses),
        int(kept),
        int(overflow),
        int(released),
    )
