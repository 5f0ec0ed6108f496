"""Readings of process memory: RSS, the C heap, the Python allocator, slabs and pools.

Theory of operation
-------------------
A reading (:func:`snapshot`) is a frozen :class:`MemorySnapshot` built from sources
that are each cheap to ask and each say something the others cannot:

- **RSS** (``/proc/self/statm`` on Linux, which psutil reads too; psutil elsewhere) is
  what the OS charges the process for, and what an OOM killer or a cgroup limit acts
  on. The peak comes from ``getrusage(RUSAGE_SELF).ru_maxrss``.
- **The C heap** comes from glibc's ``mallinfo2()`` (glibc 2.33+), read through
  ctypes: ``in use = uordblks + hblkhd`` (live chunks plus mmapped blocks),
  ``free = fordblks`` (free chunks by glibc's count, including those whose pages
  ``malloc_trim`` gave back), ``mmapped = hblkhd``, ``arena`` the non-mmapped bytes
  obtained from the OS; and from the kernel, ``heap_resident``: the main heap's
  resident pages (``mincore``), the figure a trim's yield is read from. Elsewhere
  (musl, macOS, Windows, glibc < 2.33) these are ``None``: a missing figure is never
  guessed.
- **pymalloc** exposes a block count (``sys.getallocatedblocks()``) and the gc its
  generation counters; neither is in bytes, so neither enters the arithmetic.
- **Slab and object pools** report their own stats (``SlabPool.stats()``,
  ``ObjectPool.stats()``), found through the weak registries in ``_registry``.

- **The breakdown** (:mod:`arenapool._breakdown`): RSS in named parts that sum to it
  exactly (code and libraries, pymalloc in use and free, the C heap in use and free
  but held, slabs lent and idle, stacks, other anonymous memory, ``unexplained``), from
  one walk of ``/proc/self/smaps`` split by the allocators' own counters. It costs a
  millisecond or more (the kernel walks the page tables), so ``snapshot(breakdown=False)``
  skips it for readings taken often on an event loop; with it, ``rss`` is the sum the
  parts add up to (the page tables at the walk), without it ``/proc/self/statm``'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from . import _registry
from ._container import _PAGE_SIZE, current_rss, parse_proc_cgroup
from ._units import format_size

if TYPE_CHECKING:
    from ._objectpool import ObjectPool
    from ._slabpool import SlabPool

try:
    from resource import RUSAGE_SELF, getrusage
except ImportError:  # pragma: no cover - Windows has no resource module
    _getrusage: Callable[[int], Any] | None = None
else:
    _getrusage = getrusage

__all__ = [
    "HeapInfo",
    "MemorySnapshot",
    "RoutesSource",
    "cgroup_memory_limit",
    "current_rss",
    "freeze_startup_objects",
    "heap_info",
    "heap_resident",
    "hold_heap",
    "libc_single_threaded",
    "malloc_trim",
    "malloc_trim_available",
    "set_mmap_threshold",
    "snapshot",
]

#: Per-route accounting the aiohttp adapter keeps: ``{route: {"requests": n, ...}}``.
RoutesSource = Callable[[], Mapping[str, Mapping[str, int]]]

#: cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7FFFFFFFFFFFF000 on
#: 4 KiB pages); anything this large is no limit on any real machine.
_CGROUP_UNLIMITED: Final = 1 << 60


# -- glibc -------------------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (malloc.h, 2.33+): ten size_t fields in this order.
    _fields_ = [
        ("arena", ctypes.c_size_t),
        ("ordblks", ctypes.c_size_t),
        ("smblks", ctypes.c_size_t),
        ("hblks", ctypes.c_size_t),
        ("hblkhd", ctypes.c_size_t),
        ("usmblks", ctypes.c_size_t),
        ("fsmblks", ctypes.c_size_t),
        ("uordblks", ctypes.c_size_t),
        ("fordblks", ctypes.c_size_t),
        ("keepcost", ctypes.c_size_t),
    ]


def _bind_mallinfo2(lib: ctypes.CDLL) -> Callable[[], _Mallinfo2] | None:
    """``lib``'s ``mallinfo2`` typed to return the struct, or ``None`` before glibc 2.33.

    Shared with ``_breakdown`` (which imports it from here), so the struct is declared
    once and a serving process, which reads the heap every tick but never the smaps
    breakdown, does not load ``_breakdown`` for it.
    """
    fn = getattr(lib, "mallinfo2", None)
    if fn is not None:
        fn.argtypes = []
        fn.restype = _Mallinfo2
    return fn


@dataclass(frozen=True)
class _Libc:
    mallinfo2: Callable[[], _Mallinfo2] | None
    malloc_trim: Callable[[int], int] | None
    mallopt: Callable[[int, int], int] | None = None
    mincore: Callable[[int, int, Any], int] | None = None
    sbrk: Callable[[int], int | None] | None = None
    single_threaded: ctypes.c_char | None = None


@lru_cache(maxsize=1)
def _libc() -> _Libc:
    """The glibc functions we use, or ``None`` for each one this libc lacks."""
    if not sys.platform.startswith("linux"):
        return _Libc(None, None)
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        return _Libc(None, None)
    if not hasattr(lib, "gnu_get_libc_version"):  # musl and friends: not glibc
        return _Libc(None, None)
    mallinfo2 = _bind_mallinfo2(lib)
    trim = getattr(lib, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    mallopt = getattr(lib, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
    mincore = lib.mincore
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    mincore.restype = ctypes.c_int
    sbrk = lib.sbrk
    sbrk.argtypes = [ctypes.c_ssize_t]
    sbrk.restype = ctypes.c_void_p
    try:  # glibc 2.32+: its own view of whether this process ever started a thread
        single = ctypes.c_char.in_dll(lib, "__libc_single_threaded")
    except ValueError:  # pragma: no cover - an older glibc
        single = None
    return _Libc(mallinfo2, trim, mallopt, mincore, sbrk, single)


def libc_single_threaded() -> bool | None:
    """Whether glibc still runs this process as single-threaded (``None``: not glibc
    2.32 or later).

    Once a process has started a thread, glibc's ``__libc_single_threaded`` goes false
    and stays false, even after the thread ends; from then on ``malloc`` and ``free``
    take their arena's lock on every call that misses the thread cache. arenapool
    starts no thread of its own while a server runs on its event loop (the pools'
    maintenance ticks on the loop and the governor trims there; see
    ``arenapool._ticks``), so a server's readings show what the application's own code
    and libraries did. ``Governor.stats()["threads"]`` reports it.
    """
    flag = _libc().single_threaded
    if flag is None:
        return None
    return flag.value != b"\x00"


def resident_pages(addr: int, length: int) -> bytes | None:
    """``mincore(2)`` over the pages that ``[addr, addr + length)`` touches: one byte per
    page, its low bit set if the page is resident; ``None`` where it cannot be read.

    Shared with ``_breakdown`` (the slabs' and the large-block region's residency), which
    imports it from here.
    """
    fn = _libc().mincore
    if fn is None or length <= 0:
        return None
    start = addr - addr % _PAGE_SIZE
    npages = -(-(addr + length - start) // _PAGE_SIZE)
    vec = ctypes.create_string_buffer(npages)
    if fn(start, npages * _PAGE_SIZE, vec) != 0:
        return None
    return vec.raw


#: where glibc's main heap (the ``brk`` area, ``[heap]`` in ``/proc/self/maps``) begins:
#: fixed for the life of the process once the heap exists; found on first use
_heap_start: int | None = None


def _main_heap() -> tuple[int, int] | None:
    """``(start, end)`` of glibc's main heap now, or ``None`` (not glibc, or no heap yet)."""
    global _heap_start  # found once per process, by design
    sbrk = _libc().sbrk
    if sbrk is None:
        return None
    if _heap_start is None:
        try:
            with open("/proc/self/maps", "rb") as maps:
                for line in maps:
                    if line.rstrip().endswith(b"[heap]"):
                        _heap_start = int(line.split(b"-", 1)[0], 16)
                        break
        except OSError:  # pragma: no cover - a Linux without /proc
            return None
        if _heap_start is None:
            return None
    end = sbrk(0)
    if not end or end <= _heap_start:
        return None
    return _heap_start, end


def heap_resident() -> int | None:
    """Bytes of glibc's main heap that are resident now, page by page (``mincore``).

    ``mallinfo2``'s free bytes (``heap_free``) count a free chunk whether or not its
    pages are still there: ``malloc_trim`` gives pages back with ``MADV_DONTNEED`` and
    glibc goes on counting them free. This counts what the OS holds for the heap,
    exactly, so a trim's yield and what the traffic faults in again after it can be
    read from the heap itself rather than from RSS, which the slabs, pymalloc and
    every buffer move too. Only the main heap (the ``brk`` area, where the event loop's
    thread allocates); other threads' arenas are not read. About 70 us for a 30 MiB
    heap here (a ``sbrk(0)`` and a ``mincore`` of one byte per page); ``None`` off
    glibc, or before the process has a heap.
    """
    heap = _main_heap()
    if heap is None:
        return None
    start, end = heap
    pages = resident_pages(start, end - start)
    if pages is None:
        return None
    # (the low bit of each byte says resident; the others are reserved: masked off)
    return pages.translate(_LOW_BIT).count(1) * _PAGE_SIZE


#: a byte to its low bit (``bytes.translate`` table for ``mincore``'s vector)
_LOW_BIT: Final = bytes(i & 1 for i in range(256))


@dataclass(frozen=True)
class HeapInfo:
    """The C heap as glibc's ``mallinfo2()`` reports it, in bytes."""

    arena: int
    """Non-mmapped bytes obtained from the OS (sbrk and per-thread arena heaps)."""
    in_use: int
    """Live allocations: ``uordblks + hblkhd``."""
    free: int
    """Free chunks by glibc's count (``fordblks``); ``malloc_trim`` may return their pages,
    and they stay counted here after it did (:func:`heap_resident` counts the pages)."""
    mmapped: int
    """Blocks malloc served with their own mmap (``hblkhd``); part of ``in_use``."""
    releasable: int
    """Free bytes at the top of the main heap (``keepcost``)."""


def heap_info() -> HeapInfo | None:
    """Read the C heap through glibc's ``mallinfo2()``; ``None`` where it does not exist.

    ``mallinfo2`` sums over every malloc arena and walks the free lists, so its cost
    grows with fragmentation (see ``benchmarks/snapshot_cost.py``).
    """
    fn = _libc().mallinfo2
    if fn is None:
        return None
    info = fn()
    return HeapInfo(
        arena=info.arena,
        in_use=info.uordblks + info.hblkhd,
        free=info.fordblks,
        mmapped=info.hblkhd,
        releasable=info.keepcost,
    )


def malloc_trim_available() -> bool:
    """True when this process can call glibc's ``malloc_trim``."""
    return _libc().malloc_trim is not None


def malloc_trim(pad: int = 0) -> bool:
    """Ask glibc to give free heap memory back to the OS; True if it released any.

    ``pad`` bytes are left untrimmed at the top of the heap. Since glibc 2.8 this also
    ``madvise``s away whole free pages in the middle of every arena, which is what
    returns memory after a burst. Takes milliseconds to return tens of MiB (22 ms
    for a 200 MiB burst here), holding the arena locks; the
    governor calls it on the event loop (``GovernorConfig.trim_in_thread``). A no-op
    returning False where glibc's ``malloc_trim`` does not exist.
    """
    fn = _libc().malloc_trim
    if fn is None:
        return False
    return bool(fn(pad))


#: glibc's mallopt() parameter number for the mmap threshold (malloc.h)
_M_MMAP_THRESHOLD: Final = -3
#: glibc refuses thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
MAX_MMAP_THRESHOLD: Final = 32 * 1024 * 1024
#: glibc's mallopt() parameter number for the most mappings malloc makes (malloc.h)
_M_MMAP_MAX: Final = -4
#: glibc's default for it (DEFAULT_MMAP_MAX in malloc.c)
DEFAULT_MMAP_MAX: Final = 65536


def set_mmap_threshold(nbytes: int) -> bool:
    """Pin glibc's mmap threshold at ``nbytes``; True if glibc took it.

    glibc serves allocations at or above the threshold with a mapping of their own,
    unmapped on free. The threshold starts at 128 KiB but is *dynamic*: each time a
    mapped block is freed, glibc raises it to that block's size (up to 32 MiB), so
    after the first large request every later large buffer (a body, orjson's work
    buffer, a long list) comes from the main heap, where free space stays resident
    until ``malloc_trim``. Setting the threshold explicitly (as ``mallopt`` and the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable do) turns the raising off and
    fixes the trim threshold too. It also lets malloc map again if :func:`hold_heap`
    had stopped it (glibc's default of 65,536 mappings). Process-wide; a no-op
    returning False off glibc.
    """
    fn = _libc().mallopt
    if fn is None:
        return False
    if not 0 <= nbytes <= MAX_MMAP_THRESHOLD:
        msg = f"mmap threshold must be 0 to 32 MiB, got {nbytes!r}"
        raise ValueError(msg)
    return bool(fn(_M_MMAP_THRESHOLD, nbytes)) and bool(fn(_M_MMAP_MAX, DEFAULT_MMAP_MAX))


#: glibc's mallopt() parameter number for the trim threshold (malloc.h)
_M_TRIM_THRESHOLD: Final = -1
#: the trim threshold :func:`hold_heap` pins: where glibc's own dynamic one ends up at
#: most (twice the largest mmap threshold)
HOLD_TRIM_THRESHOLD: Final = 2 * MAX_MMAP_THRESHOLD


def hold_heap() -> bool:
    """Keep ``free()`` from giving the C heap back to the OS; True if glibc took it.

    Pins glibc's thresholds where its dynamic ones end up at most: the mmap threshold
    at 32 MiB and the trim threshold at 64 MiB; and stops malloc from mapping blocks of
    their own at all (``M_MMAP_MAX`` 0), so a buffer above 32 MiB comes from the heap
    too: orjson's work buffer for a document over about 2.7 MiB is that large (12 times
    the document, of which it touches a fraction), and mapped afresh on every request
    it faulted in about 2,000 pages for a 4 MiB body. Left dynamic, the thresholds move
    with the
    traffic: a buffer just above the mmap threshold gets a fresh mapping that faults
    in page by page, and a free that leaves more than the trim threshold free at the
    top of the heap shrinks it, so the next request grows it again and faults its
    pages back in. Measured on 1 MiB bodies at 32 connections, that made arenapool's
    page faults swing between about 13 and 130 per request from one run to the next
    (``orjson.loads`` of such a document allocates about 12 MiB more than the result
    it returns: tracemalloc's peak during the call). Held, large buffers come
    from the heap, warm, and free memory goes back only through ``malloc_trim``: the
    governor's trims, off the request path (``malloc_trim`` gives back free pages
    anywhere in the heap, not only at its top). Where the heap cannot grow, glibc
    still maps (its fallback for a failed ``brk``, and for threads' arenas a block
    larger than their 64 MiB heaps). Process-wide; a no-op returning False off glibc.
    """
    fn = _libc().mallopt
    if fn is None:
        return False
    return (
        set_mmap_threshold(MAX_MMAP_THRESHOLD)
        and bool(fn(_M_TRIM_THRESHOLD, HOLD_TRIM_THRESHOLD))
        and bool(fn(_M_MMAP_MAX, 0))
    )


# -- CPython's cyclic collector ----------------------------------------------------------

#: Objects :func:`freeze_startup_objects` froze in this process (``None``: not yet).
_frozen: int | None = None


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive out of the cyclic collector's sight
    (``gc.freeze()``); the number of objects frozen. Once per process: later calls
    return the first one's count and freeze nothing.

    A server holds its modules, classes, functions and the app itself for its whole
    life, and every full collection walks all of them again: in the example service
    under the mixed load of ``arenapool soak``, about 41,000 objects and 18 ms a
    collection, most of the collector's time (``benchmarks/gc_pressure.py --sizes mixed
    --no-freeze``).
    Frozen, a full collection walks only what was made since, so collections stay
    cheap and still find the cycles that requests leave behind. What is frozen is never
    collected, so call this once the app is built, before it serves (the governor does
    at its start, ``GovernorConfig.freeze_gc``); objects made later are collected as
    usual. Under a pre-fork server the collector then also stops writing into the
    frozen objects' headers, pages the workers would otherwise copy (CPython's
    ``gc.freeze`` documentation).
    """
    global _frozen  # once per process, by design
    if _frozen is None:
        gc.collect()
        gc.freeze()
        _frozen = gc.get_freeze_count()
    return _frozen


#: CPython's default third collection threshold (``gc.get_threshold()[2]``): collections
#: of the middle generation between two full ones, the full one then also waiting for
#: the objects that reached the oldest generation since the last to pass a quarter of
#: those there.
CPYTHON_FULL_EVERY: Final = 10


def space_full_collections(every: int) -> int | None:
    """Make the cyclic collector's full collections wait for ``every`` collections of
    the middle generation instead of CPython's 10 (``gc.set_threshold``'s third value);
    the value in effect after, or ``None`` when the process had set one of its own
    (anything but :data:`CPYTHON_FULL_EVERY` or ``every`` itself), which is left as it
    is.

    Meant for after :func:`freeze_startup_objects`. CPython runs a full collection when
    the third threshold is passed *and* the objects promoted into the oldest generation
    since the last one exceed a quarter of the objects there (CPython's
    ``long_lived_total``). Frozen objects are no longer counted there, so after the
    freeze that quarter is a quarter of what requests left, and the second condition
    holds nearly always: full collections came about five times as often as unfrozen
    (11.3 against 2.3 per 1,000 requests under the soak's mixed bodies,
    ``benchmarks/gc_pressure.py``). Each is cheap, but at 1 MiB bodies with orjson their
    number cost more CPU per request than the collector's own time shows
    (``benchmarks/README.md``, "Full collections after the freeze"). Spacing them by the
    third threshold gives back about CPython's own rate.
    """
    return _space_threshold(2, CPYTHON_FULL_EVERY, every)


def _space_threshold(index: int, default: int, every: int) -> int | None:
    """Set ``gc.get_threshold()[index]`` to ``every`` when it is CPython's ``default``
    (or ``every`` already): ``every``, or ``None`` for a threshold the process set."""
    if every < 1:
        msg = f"every must be at least 1, got {every!r}"
        raise ValueError(msg)
    thresholds = list(gc.get_threshold())
    if thresholds[index] not in {default, every}:
        return None
    thresholds[index] = every
    gc.set_threshold(*thresholds)
    return every


#: CPython's default first collection threshold (``gc.get_threshold()[0]``): tracked
#: objects allocated, net of those freed, before the youngest generation is collected
#: (2,000 from CPython 3.14, 700 before).
CPYTHON_YOUNG_EVERY: Final = 2000 if sys.version_info >= (3, 14) else 700


def space_young_collections(every: int) -> int | None:
    """Let ``every`` tracked objects (allocated, net of those freed) come between two
    collections of the youngest generation instead of CPython's 700 (2,000 from 3.14;
    ``gc.set_threshold``'s first value); the value in effect after, or ``None`` when
    the process had set one of its own (anything but :data:`CPYTHON_YOUNG_EVERY` or
    ``every`` itself), which is left as it is.

    CPython counts the containers (dicts, lists, ...) made since the last collection
    less those freed, and collects the youngest generation when the count passes the
    threshold. A request's JSON tree is made by the decoder in one go and freed by
    reference counting when the request ends: while it is built, the count climbs by
    its size (about 2,600 containers for a 1 MiB body of the example service), so at
    700 the collector walks the half-built tree three or four times per request, finds
    nothing to free, and promotes it. Each walk is short, yet the request paid for them
    well beyond the collector's own time (``benchmarks/README.md``, "Young collections
    spaced out"; why is not established). Above the trees the traffic builds,
    the count rises only by what outlives requests (and the cycles they leave), so the
    collector still runs, on that growth: cyclic garbage waits for at most ``every``
    containers before it is found.
    """
    return _space_threshold(0, CPYTHON_YOUNG_EVERY, every)


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= _CGROUP_UNLIMITED:
        return None
    return value


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 (``0::/path``) and v1's memory controller."""
    try:
        text = proc_cgroup.read_text()
    except (OSError, UnicodeDecodeError):
        return None, None
    return parse_proc_cgroup(text)


def _limits_up(base: Path, rel: str | None, filename: str) -> list[int]:
    """Limits in ``filename`` from the cgroup at ``base/rel`` up to ``base``."""
    found: list[int] = []
    dirs = [base]
    if rel and rel.strip("/"):
        parts = [p for p in rel.strip("/").split("/") if p not in ("", ".", "..")]
        dirs = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    for directory in dirs:
        limit = _read_limit(directory / filename)
        if limit is not None:
            found.append(limit)
    return found


def cgroup_memory_limit(
    root: str | os.PathLike[str] = "/sys/fs/cgroup",
    *,
    proc_cgroup: str | os.PathLike[str] | None = "/proc/self/cgroup",
) -> int | None:
    """The memory limit (bytes) of this process's cgroup, or ``None`` when unlimited.

    cgroup v2 reads ``<root>/memory.max`` ("max" means no limit); v1 reads
    ``<root>/memory/memory.limit_in_bytes`` (a huge sentinel means no limit). Outside
    a container the process's own cgroup (from ``proc_cgroup``) and its ancestors are
    read too, and the tightest limit wins. ``root`` and ``proc_cgroup`` exist so tests
    can point them at fake trees; ``proc_cgroup=None`` reads only the root files.
    """
    base = Path(root)
    v2_rel: str | None = None
    v1_rel: str | None = None
    if proc_cgroup is not None:
        v2_rel, v1_rel = _own_cgroup_paths(Path(proc_cgroup))
    limits = _limits_up(base, v2_rel, "memory.max")
    if not limits:
        limits = _limits_up(base / "memory", v1_rel, "memory.limit_in_bytes")
    return min(limits) if limits else None


def _peak_rss(rss: int) -> int | None:
    if _getrusage is None:  # pragma: no cover - Windows
        return None
    maxrss = int(_getrusage(RUSAGE_SELF).ru_maxrss)
    # Linux and the BSDs report KiB, macOS bytes. The kernel folds the current RSS
    # into its high-water mark lazily, so the peak is at least the RSS just read.
    return max(rss, maxrss if sys.platform == "darwin" else maxrss * 1024)


def _route_table(routes: RoutesSource | None) -> dict[str, dict[str, int]]:
    if routes is None:
        return {}
    return {str(name): {str(k): int(v) for k, v in row.items()} for name, row in routes().items()}


@dataclass(frozen=True)
class MemorySnapshot:
    """One reading of the process's memory; sizes in bytes, ``None`` where unknown.

    ``breakdown`` maps each part of :data:`arenapool._breakdown.PARTS` to its bytes;
    the values sum to ``rss``. Empty when the reading was taken with
    ``breakdown=False`` or the platform has no ``/proc/self/smaps``.
    """

    time: float
    """Wall-clock time of the reading (``time.time()``)."""
    rss: int
    peak_rss: int | None
    heap_arena: int | None
    heap_in_use: int | None
    heap_free: int | None
    heap_mmapped: int | None
    py_allocated_blocks: int
    gc_counts: tuple[int, int, int]
    gc_collections: tuple[int, ...]
    gc_collected: tuple[int, ...]
    gc_uncollectable: tuple[int, ...]
    slab_lent_bytes: int
    slab_idle_bytes: int
    slab_quarantined_bytes: int
    slab_mapped_bytes: int
    slab_pools: tuple[Mapping[str, Any], ...] = ()
    object_pools: tuple[Mapping[str, Any], ...] = ()
    routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    breakdown: Mapping[str, int] = field(default_factory=dict)
    """RSS in named parts (bytes) that sum to ``rss``; see :mod:`arenapool._breakdown`."""
    breakdown_details: Mapping[str, Any] = field(default_factory=dict)
    """The raw figures behind the parts and which sources were read."""
    duration: float = 0.0
    """Seconds this reading took."""
    heap_resident: int | None = None
    """Resident bytes of glibc's main heap (:func:`heap_resident`): unlike
    ``heap_free``, pages a trim gave back are not in it."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists for tuples, plain dicts for mappings)."""
        return {
            "time": self.time,
            "rss": self.rss,
            "peak_rss": self.peak_rss,
            "heap_arena": self.heap_arena,
            "heap_in_use": self.heap_in_use,
            "heap_free": self.heap_free,
            "heap_mmapped": self.heap_mmapped,
            "heap_resident": self.heap_resident,
            "py_allocated_blocks": self.py_allocated_blocks,
            "gc_counts": list(self.gc_counts),
            "gc_collections": list(self.gc_collections),
            "gc_collected": list(self.gc_collected),
            "gc_uncollectable": list(self.gc_uncollectable),
            "slab_lent_bytes": self.slab_lent_bytes,
            "slab_idle_bytes": self.slab_idle_bytes,
            "slab_quarantined_bytes": self.slab_quarantined_bytes,
            "slab_mapped_bytes": self.slab_mapped_bytes,
            "slab_pools": [dict(p) for p in self.slab_pools],
            "object_pools": [dict(p) for p in self.object_pools],
            "routes": {name: dict(row) for name, row in self.routes.items()},
            "breakdown": dict(self.breakdown),
            "breakdown_details": dict(self.breakdown_details),
            "duration": self.duration,
        }

    def __repr__(self) -> str:
        parts = [f"rss {format_size(self.rss)}"]
        if self.heap_in_use is not None and self.heap_free is not None:
            parts.append(
                f"C heap in use {format_size(self.heap_in_use)}, free {format_size(self.heap_free)}"
            )
        parts.append(
            f"slabs lent {format_size(self.slab_lent_bytes)}, "
            f"idle {format_size(self.slab_idle_bytes)}"
        )
        if self.breakdown:
            parts.append(f"unexplained {format_size(self.breakdown.get('unexplained', 0))}")
        return f"<MemorySnapshot [{' | '.join(parts)}]>"


def snapshot(
    *,
    slab_pools: Iterable[SlabPool] | None = None,
    object_pools: Iterable[ObjectPool[Any]] | None = None,
    routes: RoutesSource | None = None,
    breakdown: bool = True,
) -> MemorySnapshot:
    """Take one reading of this process's memory.

    ``slab_pools`` and ``object_pools`` default to every live pool in the process;
    ``routes`` is a callable returning the aiohttp adapter's per-route counters.
    Without the breakdown a reading costs tens of microseconds plus ``mallinfo2``'s
    walk of the free lists (``benchmarks/snapshot_cost.py``) and a ``mincore`` of the
    main heap (:func:`heap_resident`, about 70 us for 30 MiB); the breakdown adds the
    ``smaps`` walk, 1.5 to 6 ms here (``benchmarks/breakdown_cost.py``): fine once a
    second off the loop or per scrape, not on every request.
    """
    started = time.perf_counter()
    slabs = _registry.slab_pools() if slab_pools is None else list(slab_pools)
    objects = _registry.object_pools() if object_pools is None else list(object_pools)
    slab_stats = tuple({**pool.stats(), "name": pool.name} for pool in slabs)
    object_stats = tuple({**pool.stats(), "name": pool.name} for pool in objects)
    route_table = _route_table(routes)
    parts = None
    if breakdown:
        # loaded on first use: the governor's tick takes no breakdown (about 0.1 MiB of
        # module a serving process need not hold)
        from ._breakdown import read_breakdown  # noqa: PLC0415

        parts = read_breakdown(slabs)
    heap = heap_info()
    rss = parts.rss if parts is not None and parts.rss else current_rss()
    lent = sum(int(s.get("lent_bytes", 0)) for s in slab_stats)
    quarantined = sum(int(s.get("quarantined_bytes", 0)) for s in slab_stats)
    gen_stats = gc.get_stats()
    c0, c1, c2 = gc.get_count()
    return MemorySnapshot(
        time=time.time(),
        rss=rss,
        peak_rss=_peak_rss(rss),
        heap_arena=None if heap is None else heap.arena,
        heap_in_use=None if heap is None else heap.in_use,
        heap_free=None if heap is None else heap.free,
        heap_mmapped=None if heap is None else heap.mmapped,
        heap_resident=heap_resident(),
        py_allocated_blocks=sys.getallocatedblocks(),
        gc_counts=(c0, c1, c2),
        gc_collections=tuple(int(g["collections"]) for g in gen_stats),
        gc_collected=tuple(int(g["collected"]) for g in gen_stats),
        gc_uncollectable=tuple(int(g["uncollectable"]) for g in gen_stats),
        slab_lent_bytes=lent,
        slab_idle_bytes=sum(int(s.get("idle_bytes", 0)) for s in slab_stats),
        slab_quarantined_bytes=quarantined,
        slab_mapped_bytes=sum(int(s.get("mapped_bytes", 0)) for s in slab_stats),
        slab_pools=slab_stats,
        object_pools=object_stats,
        routes=route_table,
        breakdown=dict(parts.parts) if parts is not None and parts.rss else {},
        breakdown_details=dict(parts.details) if parts is not None else {},
        duration=time.perf_counter() - started,
    )
