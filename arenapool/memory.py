"""Memory readings for a long-running server: ``from arenapool.memory import snapshot``.

See ``arenapool._memory`` for what each figure means and where it comes from.
"""

from __future__ import annotations

from ._memory import (
    HeapInfo,
    MemorySnapshot,
    cgroup_memory_limit,
    current_rss,
    heap_info,
    malloc_trim,
    malloc_trim_available,
    set_mmap_threshold,
    snapshot,
)

__all__ = [
    "HeapInfo",
    "MemorySnapshot",
    "cgroup_memory_limit",
    "current_rss",
    "heap_info",
    "malloc_trim",
    "malloc_trim_available",
    "set_mmap_threshold",
    "snapshot",
]
