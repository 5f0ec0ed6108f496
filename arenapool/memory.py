"""Memory readings for a long-running server: ``from arenapool.memory import snapshot``.

- :func:`snapshot`: one reading; ``.breakdown`` is RSS in named parts that add up to it
  (see ``arenapool._breakdown`` for each part's source and cost).
- :class:`MemoryMonitor`: the breakdown sampled in a background thread into a bounded
  history, and a :class:`Verdict` on its trend (:func:`classify`).
- :class:`Census`: heap censuses by type in a forked child, with leak suspects.
- :class:`Tracer`: tracemalloc for a bounded window, then off again.
- :func:`heap_resident` reads how much of glibc's main heap is resident, page by page
  (glibc's own free count goes on counting the pages a trim gave back).
- :func:`malloc_trim` gives glibc's free heap back; :func:`release_pymalloc` the pages
  of pymalloc's empty pools, which CPython itself never gives back while their arena
  holds one live object (:func:`pymalloc_status` says whether this process can).
- :func:`cache_pymalloc_arenas` keeps the arenas pymalloc frees for it to take again
  (a large decode then does not fault its small objects' pages in afresh on every
  request); :func:`release_pymalloc_arenas` gives the cached ones back and
  :func:`pymalloc_arena_cache` reads the cache. The governor does all three for you
  (``GovernorConfig.arena_cache``).
- :func:`cache_large_blocks` serves ``PyMem_Malloc``'s large blocks (a JSON decoder's
  work buffer) from a region of arenapool's own whose freed pages stay warm up to a
  bound; :func:`release_large_blocks` gives its free pages back and
  :func:`large_block_cache` reads it. The governor does this too
  (``GovernorConfig.block_cache``).
- :func:`libc_single_threaded` says whether glibc still runs this process as
  single-threaded (a process that ever started a thread pays a lock on every
  ``malloc`` and ``free``; arenapool starts none while it serves on an event loop).
- :func:`freeze_startup_objects` moves what a server holds from start-up out of the
  cyclic collector's sight (``gc.freeze()``, once), so full collections walk only what
  requests made. The governor does this at its start (``GovernorConfig.freeze_gc``),
  and spaces full collections out again with :func:`space_full_collections`
  (``GovernorConfig.gc_full_every``). :func:`space_young_collections` lets the trees
  requests decode come and go between two young collections
  (``GovernorConfig.gc_young_every``).

See ``arenapool._memory`` for what each figure of a reading means.
"""

from __future__ import annotations

from ._arenacache import ArenaCacheStats
from ._arenacache import install as cache_pymalloc_arenas
from ._arenacache import release as release_pymalloc_arenas
from ._arenacache import stats as pymalloc_arena_cache
from ._blockcache import BlockCacheStats
from ._blockcache import install as cache_large_blocks
from ._blockcache import release as release_large_blocks
from ._blockcache import stats as large_block_cache
from ._breakdown import PARTS, Breakdown, read_breakdown, read_buckets
from ._census import Census
from ._history import History
from ._memory import (
    HeapInfo,
    MemorySnapshot,
    cgroup_memory_limit,
    current_rss,
    freeze_startup_objects,
    heap_info,
    heap_resident,
    hold_heap,
    libc_single_threaded,
    malloc_trim,
    malloc_trim_available,
    set_mmap_threshold,
    snapshot,
    space_full_collections,
    space_young_collections,
)
from ._monitor import MemoryMonitor
from ._pymalloc import PoolRelease, PymallocStatus
from ._pymalloc import release_free_pools as release_pymalloc
from ._pymalloc import status as pymalloc_status
from ._trace import Tracer
from ._verdict import Verdict, classify

__all__ = [
    "PARTS",
    "ArenaCacheStats",
    "BlockCacheStats",
    "Breakdown",
    "Census",
    "HeapInfo",
    "History",
    "MemoryMonitor",
    "MemorySnapshot",
    "PoolRelease",
    "PymallocStatus",
    "Tracer",
    "Verdict",
    "cache_large_blocks",
    "cache_pymalloc_arenas",
    "cgroup_memory_limit",
    "classify",
    "current_rss",
    "freeze_startup_objects",
    "heap_info",
    "heap_resident",
    "hold_heap",
    "large_block_cache",
    "libc_single_threaded",
    "malloc_trim",
    "malloc_trim_available",
    "pymalloc_arena_cache",
    "pymalloc_status",
    "read_breakdown",
    "read_buckets",
    "release_large_blocks",
    "release_pymalloc",
    "release_pymalloc_arenas",
    "set_mmap_threshold",
    "snapshot",
    "space_full_collections",
    "space_young_collections",
]
