"""RSS broken into named parts that add up: where every resident byte of the process is.

Theory of operation
-------------------
One reading (:func:`read_breakdown`) walks ``/proc/self/smaps`` once and sorts every
mapping's ``Rss`` into a *bucket* by what the mapping is; counters from the allocators
then split the buckets into *parts*. The total is the sum of ``Rss`` over all mappings
(the page tables at the moment of the walk, what ``/proc/self/statm`` counts too), and
every part is carved out of a bucket with a clamp, so the parts are never negative and
always sum exactly to the total. ``unexplained`` is what is left of the generic bucket.

Buckets (from ``smaps``, exact):

- **file**: mappings of a file (the interpreter, shared libraries, mmapped files) and the
  kernel's ``[vdso]``/``[vvar]``. A library's ``.bss`` is an anonymous mapping of its
  own, indistinguishable from its neighbours, and stays in *generic*.
- **heap**: glibc's heaps: the main ``[heap]`` (brk) and the per-thread arenas' heaps,
  recognised as a ``rw-p`` mapping that starts on a 64 MiB boundary (``HEAP_MAX_SIZE``
  on 64-bit) and is followed by its ``---p`` reserve up to the next boundary. (A thread
  heap grown to the full 64 MiB has no reserve left and stays *generic*: the kernel
  merges adjacent anonymous mappings, so 64 aligned MiB of pymalloc arenas look the
  same.)
- **stacks**: ``[stack]`` and thread stacks, recognised as a ``rw-p`` mapping right above
  a small ``---p`` guard (glibc puts the guard at the low end of a thread's stack).
- **other**: anonymous shared memory (``/dev/zero``, memfd, SysV: Python's own
  ``mmap.mmap(-1, n)`` is one) and named anonymous mappings (``[anon:...]``): never
  malloc's or pymalloc's.
- **generic**: every other private anonymous mapping: pymalloc's arenas, malloc's
  mmapped chunks, slab mappings, libraries' ``.bss``, anything an extension maps itself.

Parts (from the allocators' own counters, each clamped to what its bucket still holds):

- ``code_and_libs`` = the file bucket.
- ``slabs_lent`` / ``slabs_idle``: ``mincore(2)`` over each slab mapping the pools report
  (``pool.regions()``), pages of lent or quarantined blocks counted as lent. Exact;
  taken out of the bucket the mapping lies in. A pool without ``regions()`` is read from
  ``pool.stats()`` instead (lent bytes and idle committed bytes: an upper bound).
- ``large_blocks``: the resident pages of the region that serves ``PyMem_Malloc``'s large
  blocks (a JSON decoder's work buffer; ``arenapool.memory.cache_large_blocks``), by
  ``mincore(2)`` over it. Exact; taken out of *generic*. 0 without the region.
- ``python_in_use`` / ``python_free``: pymalloc's ``# bytes in allocated blocks`` and the
  rest of its arenas (``arenas * arena size``), from ``sys._debugmallocstats()``, whose
  output is captured by pointing libc's ``stderr`` at an ``open_memstream`` buffer for
  the call (no file descriptor is touched, so nothing another thread writes through fd
  2 is lost; a C extension writing with ``fprintf(stderr)`` from another thread in that
  instant, or a ``fork()`` in it, would see the buffer: one call of tens of
  microseconds, under a lock, at most once a second).
  Taken out of *generic*, in-use first. Arenas are mapped lazily pool by pool, so the
  free part can overstate by the never-touched pools of the newest arenas; the clamp
  bounds that.
- ``c_heap_in_use`` / ``c_heap_free``: glibc's ``mallinfo2()``: ``uordblks`` (chunks in
  use inside the heaps) out of the heap bucket, the heap bucket's rest is free but held
  (what ``malloc_trim`` may return); ``hblkhd`` (chunks malloc mmapped on their own,
  in use by definition) out of *generic*. Python objects above 512 bytes (large lists,
  dicts, ``bytes``) live here, not in pymalloc.
- ``stacks`` = the stacks bucket; ``anon_other`` = the other bucket.
- ``unexplained`` = what is left of *generic*: anonymous memory no counter claims.

Cost per reading (``benchmarks/breakdown_cost.py``, on a shared 2-core machine): 1.7
to 3 ms for a bare interpreter, 6 to 11 ms with 200 MiB of small objects alive. The
``smaps`` walk dominates (the read releases the GIL; parsing it holds it for about half
a millisecond) and grows with the number of mappings and resident pages; ``_debugmallocstats`` walks
pymalloc's arenas and pools (tens of microseconds per hundred MiB of objects);
``mallinfo2`` walks glibc's free lists. Off Linux/glibc the parts that cannot be read
are zero and their bytes land in ``unexplained``; ``details`` says which sources ran.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Protocol

from ._blockcache import stats as block_cache_stats
from ._memory import _bind_mallinfo2, _Mallinfo2, resident_pages
from ._units import format_size

__all__ = [
    "BUCKETS",
    "PARTS",
    "Breakdown",
    "PymallocStats",
    "SlabSource",
    "pymalloc_stats",
    "read_breakdown",
    "read_buckets",
]

#: The parts of a breakdown, in display order; their values sum to ``rss``.
PARTS: Final = (
    "code_and_libs",
    "python_in_use",
    "python_free",
    "c_heap_in_use",
    "c_heap_free",
    "slabs_lent",
    "slabs_idle",
    "large_blocks",
    "stacks",
    "anon_other",
    "unexplained",
)

PAGE: Final = mmap.PAGESIZE
#: glibc's HEAP_MAX_SIZE on 64-bit (2 * DEFAULT_MMAP_THRESHOLD_MAX): per-thread heaps
#: are reserved at this size and alignment.
_HEAP_MAX: Final = 64 * 1024 * 1024
#: The largest ---p mapping taken for a thread stack's guard.
_GUARD_MAX: Final = 1024 * 1024
#: Anonymous shared memory shows a path but is no file.
_ANON_SHARED: Final = (b"/dev/zero", b"/memfd:", b"/SYSV", b"/anon_hugepage")
_KERNEL_CODE: Final = frozenset((b"[vdso]", b"[vvar]", b"[vvar_vclock]", b"[vsyscall]"))

# Each mapping's block ends with its "VmFlags:" line, so a header is what follows one
# (the text gets a leading "VmFlags:" for the first); patterns that start with a literal
# let `re` skip ahead instead of trying every position (ten times faster here).
_SMAPS_HEAD = re.compile(rb"VmFlags:[^\n]*\n([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+ *([^\n]*)")
_SMAPS_RSS = re.compile(rb"\nRss: +(\d+) kB")


class SlabSource(Protocol):
    """What a breakdown needs from a slab pool: stats, and optionally address ranges."""

    @property
    def backing(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...


# -- /proc/self/smaps ------------------------------------------------------------------


@dataclass(frozen=True)
class _Vma:
    start: int
    end: int
    perms: bytes
    path: bytes
    rss: int


def _read_smaps(pid: int | str = "self") -> list[_Vma]:
    path = f"/proc/{pid}/smaps"
    with open(path, "rb") as f:
        text = b"VmFlags:\n" + f.read()
    heads = _SMAPS_HEAD.findall(text)
    rss = _SMAPS_RSS.findall(text)
    if len(heads) != len(rss):  # pragma: no cover - a kernel that omits Rss somewhere
        msg = f"{path}: {len(heads)} mappings but {len(rss)} Rss lines"
        raise OSError(msg)
    return [
        _Vma(int(a, 16), int(b, 16), perms, path.strip(), int(kb) * 1024)
        for (a, b, perms, path), kb in zip(heads, rss, strict=True)
    ]


def _bucket_of(vmas: list[_Vma]) -> list[str]:
    """Name each mapping's bucket (see the module docs); one list, same order."""
    buckets: list[str] = []
    for i, vma in enumerate(vmas):
        path = vma.path
        prev = vmas[i - 1] if i else None
        nxt = vmas[i + 1] if i + 1 < len(vmas) else None
        if (path.startswith(b"/") and not path.startswith(_ANON_SHARED)) or path in _KERNEL_CODE:
            buckets.append("file")
        elif path == b"[heap]":
            buckets.append("heap")
        elif path == b"[stack]":
            buckets.append("stacks")
        elif path.startswith(b"[anon:"):
            buckets.append("other")
        elif path:
            buckets.append("other")  # anonymous shared memory, unknown names
        elif vma.perms.startswith(b"---"):
            # reserves and guards: never resident, but keep them for the neighbours
            buckets.append("generic")
        elif _is_thread_heap(vma, nxt):
            buckets.append("heap")
        elif (
            prev is not None
            and prev.end == vma.start
            and prev.perms.startswith(b"---")
            and not prev.path
            and prev.end - prev.start <= _GUARD_MAX
            and prev.end % _HEAP_MAX != 0
        ):
            buckets.append("stacks")
        else:
            buckets.append("generic")
    return buckets


def _is_thread_heap(vma: _Vma, nxt: _Vma | None) -> bool:
    # Only with its reserve: a heap grown to the whole 64 MiB looks like any other
    # aligned 64 MiB of anonymous memory (pymalloc's arenas, merged by the kernel, can
    # be one), so it stays generic rather than risk calling arenas "C heap free".
    if vma.start % _HEAP_MAX or not vma.perms.startswith(b"rw"):
        return False
    return (
        nxt is not None
        and nxt.start == vma.end
        and nxt.perms.startswith(b"---")
        and not nxt.path
        and nxt.end == vma.start + _HEAP_MAX
    )


#: the smaps buckets (see the module docs), in the order readings list them
BUCKETS: Final = ("file", "heap", "stacks", "other", "generic")


def read_buckets(pid: int | None = None) -> dict[str, int]:
    """Another process's RSS (or this one's) by bucket, from its ``smaps`` alone.

    The buckets of the module docs, in bytes: ``file``, ``heap`` (glibc's heaps),
    ``stacks``, ``other`` and ``generic`` (pymalloc's arenas, malloc's mmapped chunks,
    slab mappings...). They sum to the RSS the page tables show at the walk. Without the
    allocators' counters, which only the process itself can read, nothing is split
    further (:func:`read_breakdown` does that for this process). Raises ``OSError``
    when the process is gone or its ``smaps`` cannot be read (not Linux, no permission).
    """
    vmas = _read_smaps("self" if pid is None else pid)
    buckets = dict.fromkeys(BUCKETS, 0)
    for vma, bucket in zip(vmas, _bucket_of(vmas), strict=True):
        buckets[bucket] += vma.rss
    return buckets


# -- glibc -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glibc:
    mallinfo2: Callable[[], _Mallinfo2] | None
    open_memstream: Callable[[Any, Any], int | None] | None
    fclose: Callable[[int], int] | None
    free: Callable[[int], None] | None
    stderr: ctypes.c_void_p | None


@lru_cache(maxsize=1)
def _glibc() -> _Glibc:
    none = _Glibc(None, None, None, None, None)
    if not sys.platform.startswith("linux"):
        return none
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # The process's global scope: under a copy relocation the executable's copy of
        # `stderr` is the one every caller uses, and only dlsym(RTLD_DEFAULT) finds it.
        everyone = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        return none
    if not hasattr(lib, "gnu_get_libc_version"):  # musl and friends: not glibc
        return none
    mallinfo2 = _bind_mallinfo2(lib)
    open_memstream = lib.open_memstream
    open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    open_memstream.restype = ctypes.c_void_p
    fclose = lib.fclose
    fclose.argtypes = [ctypes.c_void_p]
    fclose.restype = ctypes.c_int
    free = lib.free
    free.argtypes = [ctypes.c_void_p]
    free.restype = None
    try:
        stderr = ctypes.c_void_p.in_dll(everyone, "stderr")
    except ValueError:  # pragma: no cover - no exported stderr symbol
        stderr = None
    return _Glibc(mallinfo2, open_memstream, fclose, free, stderr)


# -- pymalloc --------------------------------------------------------------------------


@dataclass(frozen=True)
class PymallocStats:
    """pymalloc's own figures, in bytes, from ``sys._debugmallocstats()``."""

    arenas: int
    """Arenas allocated now."""
    arena_bytes: int
    """``arenas * arena size``: what pymalloc has mapped."""
    in_use: int
    """Bytes in allocated blocks: live small objects."""
    unused_pools: int
    """Bytes of pools holding no block (never touched or emptied)."""


_capture_lock = threading.Lock()
_capture_broken: list[bool] = []
_NUM = rb"([0-9][0-9,]*)"
_RE_ARENAS = re.compile(rb"^(\d+) arenas \* (\d+) bytes/arena *= *" + _NUM, re.MULTILINE)
_RE_IN_USE = re.compile(rb"^# bytes in allocated blocks *= *" + _NUM, re.MULTILINE)
_RE_UNUSED = re.compile(rb"^\d+ unused pools \* \d+ bytes *= *" + _NUM, re.MULTILINE)


def _capture_debugmallocstats() -> bytes | None:
    """``sys._debugmallocstats()``'s output, captured without touching fd 2."""
    libc = _glibc()
    debug = getattr(sys, "_debugmallocstats", None)
    if (
        debug is None
        or _capture_broken
        or libc.stderr is None
        or libc.open_memstream is None
        or libc.fclose is None
        or libc.free is None
    ):
        return None
    buf = ctypes.c_char_p()
    size = ctypes.c_size_t()
    with _capture_lock:
        stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        if not stream:  # pragma: no cover - out of memory
            return None
        saved = libc.stderr.value
        libc.stderr.value = stream
        try:
            debug()
        finally:
            libc.stderr.value = saved
            libc.fclose(stream)
    try:
        out = ctypes.string_at(buf, size.value) if buf.value is not None else b""
    finally:
        libc.free(ctypes.cast(buf, ctypes.c_void_p).value or 0)
    if not out:  # the swap did not take: never try again (nothing to parse anyway)
        _capture_broken.append(True)
        return None
    return out


def _num(match: re.Match[bytes] | None) -> int | None:
    return None if match is None else int(match.group(match.lastindex or 1).replace(b",", b""))


def pymalloc_stats() -> PymallocStats | None:
    """Read pymalloc's arenas; ``None`` without pymalloc, glibc, or a parsable output.

    Costs one ``sys._debugmallocstats()`` call: a walk of every arena and pool, tens of
    microseconds per hundred MiB of small objects (``benchmarks/breakdown_cost.py``).
    """
    out = _capture_debugmallocstats()
    if out is None:
        return None
    arenas = _RE_ARENAS.search(out)
    in_use = _num(_RE_IN_USE.search(out))
    if arenas is None or in_use is None:
        return None
    unused = _num(_RE_UNUSED.search(out)) or 0
    return PymallocStats(
        arenas=int(arenas.group(1)),
        arena_bytes=int(arenas.group(3).replace(b",", b"")),
        in_use=in_use,
        unused_pools=unused,
    )


# -- slabs -----------------------------------------------------------------------------


def _slab_residency(
    mapped: Iterable[tuple[int, int]], lent: Iterable[tuple[int, int]]
) -> list[tuple[int, int, int]] | None:
    """``[(address, resident bytes, lent resident bytes)]`` per mapping, or ``None``.

    A page shared by a lent block and an idle one counts as lent.
    """
    slabs = sorted(mapped)
    starts = [a for a, _ in slabs]
    vecs: list[bytes] = []
    for addr, length in slabs:
        vec = resident_pages(addr, length)
        if vec is None:
            return None
        vecs.append(vec)
    # per mapping, merged page intervals [first, stop) of lent blocks: neighbouring
    # blocks that share a page count it once
    lent_pages: dict[int, list[list[int]]] = {}
    for addr, length in sorted(lent):
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr >= slabs[i][0] + slabs[i][1]:
            continue  # a block of a slab unmapped since: nothing resident to count
        base = slabs[i][0] - slabs[i][0] % PAGE
        first = (addr - base) // PAGE
        stop = -(-(addr + length - base) // PAGE)
        spans = lent_pages.setdefault(i, [])
        if spans and first <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], stop)
        else:
            spans.append([first, stop])
    out: list[tuple[int, int, int]] = []
    for i, (addr, _length) in enumerate(slabs):
        vec = vecs[i]
        lent_resident = 0
        for first, stop in lent_pages.get(i, ()):
            chunk = vec[first:stop]
            lent_resident += len(chunk) - chunk.count(0)
        out.append((addr, (len(vec) - vec.count(0)) * PAGE, lent_resident * PAGE))
    return out


# -- the reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class Breakdown:
    """RSS in named parts (bytes) that sum to ``rss``; see the module docs for sources."""

    rss: int
    """Sum of ``Rss`` over every mapping in ``/proc/self/smaps``."""
    parts: Mapping[str, int]
    """One entry per name in :data:`PARTS`, in that order; never negative."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The raw figures behind the parts, and which sources were read."""
    duration: float = 0.0
    """Seconds the reading took."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "rss": self.rss,
            "parts": dict(self.parts),
            "details": dict(self.details),
            "duration": self.duration,
        }

    @property
    def unexplained_ratio(self) -> float:
        """``unexplained / rss`` (0.0 for an empty reading)."""
        return self.parts["unexplained"] / self.rss if self.rss else 0.0

    def __repr__(self) -> str:
        shown = " | ".join(f"{k} {format_size(v)}" for k, v in self.parts.items() if v)
        return f"<Breakdown rss {format_size(self.rss)} [{shown}]>"


class _Take:
    """Carve parts out of buckets: each take is clamped to what the bucket still holds."""

    def __init__(self, buckets: dict[str, int]) -> None:
        self.left = buckets
        self.overclaimed = 0

    def take(self, bucket: str, wanted: int) -> int:
        got = max(0, min(wanted, self.left[bucket]))
        self.left[bucket] -= got
        self.overclaimed += max(0, wanted) - got
        return got


def _slab_parts(
    slabs: Iterable[SlabSource], vmas: list[_Vma], buckets_of: list[str], take: _Take
) -> tuple[int, int, int, str]:
    """``(lent, idle, taken out of the C heap counters, source)`` for every pool."""
    starts = [v.start for v in vmas]
    lent_total = idle_total = from_malloc = 0
    sources: set[str] = set()
    for pool in slabs:
        regions_fn = getattr(pool, "regions", None)
        malloc_backed = getattr(pool, "backing", "mmap") != "mmap"
        reading = None
        if callable(regions_fn):
            regions = regions_fn()
            reading = _slab_residency(regions.get("mapped", ()), regions.get("lent", ()))
        if reading is None:
            stats = pool.stats()
            lent = int(stats.get("lent_bytes", 0)) + int(stats.get("quarantined_bytes", 0))
            idle = int(stats.get("idle_committed_bytes", 0))
            bucket = "heap" if malloc_backed else "generic"
            got_lent = take.take(bucket, lent)
            got_idle = take.take(bucket, idle)
            sources.add("stats")
        else:
            got_lent = got_idle = 0
            for addr, resident, lent_resident in reading:
                i = bisect.bisect_right(starts, addr) - 1
                bucket = buckets_of[i] if i >= 0 and addr < vmas[i].end else "generic"
                if bucket not in ("heap", "generic"):
                    bucket = "generic"
                got_lent += take.take(bucket, lent_resident)
                got_idle += take.take(bucket, resident - lent_resident)
            sources.add("mincore")
        lent_total += got_lent
        idle_total += got_idle
        if malloc_backed:
            from_malloc += got_lent + got_idle
    return lent_total, idle_total, from_malloc, "+".join(sorted(sources)) or "none"


def read_breakdown(slabs: Iterable[SlabSource] = ()) -> Breakdown:
    """Read RSS broken into :data:`PARTS` (bytes) that sum exactly to ``rss``.

    ``slabs`` are the slab pools to account (``SlabPool`` objects: ``stats()``, and
    ``regions()`` for exact residency). Linux only: elsewhere ``rss`` is 0 and every
    part is 0 (``details["source"] == "unavailable"``). Holds the GIL for the
    ``_debugmallocstats`` walk only; the ``smaps`` read releases it.
    """
    started = time.perf_counter()
    try:
        vmas = _read_smaps()
    except OSError:
        return Breakdown(0, dict.fromkeys(PARTS, 0), {"source": "unavailable"})
    buckets_of = _bucket_of(vmas)
    buckets = dict.fromkeys(BUCKETS, 0)
    thread_heaps = thread_heap_bytes = 0
    for vma, bucket in zip(vmas, buckets_of, strict=True):
        buckets[bucket] += vma.rss
        if bucket == "heap" and vma.path != b"[heap]":
            thread_heaps += 1
            thread_heap_bytes += vma.rss
    rss = sum(buckets.values())
    details: dict[str, Any] = {
        "source": "smaps",
        "mappings": len(vmas),
        "buckets": dict(buckets),
        "thread_heaps": thread_heaps,
        "thread_heap_bytes": thread_heap_bytes,
    }
    take = _Take(buckets)
    parts = dict.fromkeys(PARTS, 0)
    parts["code_and_libs"] = take.take("file", buckets["file"])
    parts["stacks"] = take.take("stacks", buckets["stacks"])
    parts["anon_other"] = take.take("other", buckets["other"])

    # slabs first: mincore makes them exact, and a slab's pages are nobody else's
    lent, idle, from_malloc, slab_source = _slab_parts(slabs, vmas, buckets_of, take)
    parts["slabs_lent"] = lent
    parts["slabs_idle"] = idle
    details["slab_source"] = slab_source

    # the large-block region (GovernorConfig.block_cache): mincore over it, exact
    parts["large_blocks"] = take.take("generic", block_cache_stats().resident)

    py = pymalloc_stats()
    if py is not None:
        parts["python_in_use"] = take.take("generic", py.in_use)
        parts["python_free"] = take.take("generic", py.arena_bytes - py.in_use)
        details["pymalloc"] = {
            "arenas": py.arenas,
            "arena_bytes": py.arena_bytes,
            "in_use": py.in_use,
            "unused_pools": py.unused_pools,
        }
    else:
        details["pymalloc"] = None

    fn = _glibc().mallinfo2
    if fn is not None:
        info = fn()
        # a malloc-backed pool's slabs were already counted as slabs
        uord = max(0, info.uordblks - from_malloc)
        in_heaps = take.take("heap", uord)
        mmapped = take.take("generic", info.hblkhd)
        parts["c_heap_in_use"] = in_heaps + mmapped
        parts["c_heap_free"] = take.take("heap", buckets["heap"])
        details["mallinfo2"] = {
            "arena": info.arena,
            "uordblks": info.uordblks,
            "fordblks": info.fordblks,
            "hblkhd": info.hblkhd,
            "keepcost": info.keepcost,
        }
    else:
        details["mallinfo2"] = None
        parts["c_heap_free"] = take.take("heap", buckets["heap"])  # resident, unsplit

    parts["unexplained"] = take.take("generic", buckets["generic"])
    # counters that claimed more than the pages their bucket held: mapped but never
    # touched (calloc'd mmapped chunks, fresh pymalloc pools) or read a moment apart
    details["overclaimed"] = take.overclaimed
    leftover = sum(take.left.values())
    if leftover:  # pragma: no cover - every bucket is drained above
        parts["unexplained"] += leftover
    return Breakdown(rss, parts, details, time.perf_counter() - started)
