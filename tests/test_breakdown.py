"""RSS broken into parts that add up, following real allocations (arenapool._breakdown)."""

from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no types
import pytest

from arenapool._breakdown import (
    PARTS,
    _bucket_of,
    _Vma,
    pymalloc_stats,
    read_breakdown,
    read_buckets,
)

MiB = 1024 * 1024

# Prints one JSON line {"before": breakdown, "after": breakdown} around `{work}`; both
# readings are taken in the same fresh interpreter, so nothing else moves RSS.
_AROUND = """
import gc, json, mmap, sys
from arenapool._breakdown import read_breakdown
from arenapool import SlabPool
MiB = 1024 * 1024
pool = SlabPool("256MiB", decay=None, retain=None)
gc.collect()
before = read_breakdown([pool])
{work}
after = read_breakdown([pool])
assert sum(after.parts.values()) == after.rss
print(json.dumps({{"before": before.as_dict(), "after": after.as_dict()}}))
"""


def _moved(result: dict[str, Any]) -> dict[str, int]:
    before, after = result["before"]["parts"], result["after"]["parts"]
    return {name: after[name] - before[name] for name in PARTS}


def _unexplained_ratio(reading: dict[str, Any]) -> float:
    return float(reading["parts"]["unexplained"]) / float(reading["rss"])


def test_parts_sum_exactly_to_rss() -> None:
    """Every part is named in PARTS, none is negative, and together they are the RSS."""
    reading = read_breakdown()
    assert list(PARTS) == list(reading.parts)
    assert all(value >= 0 for value in reading.parts.values())
    assert reading.rss == sum(reading.parts.values())
    assert reading.rss > 0


def test_another_process_is_read_by_bucket() -> None:
    """read_buckets(pid) walks another process's smaps: a 64 MiB bytearray it fills
    lands in its generic bucket (malloc maps a block that large on its own)."""
    script = "import sys; b = bytearray(64 << 20); print(1, flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            assert b"1\n" == child.stdout.readline()  # filled and still alive
            theirs = read_buckets(child.pid)
            rss = psutil.Process(child.pid).memory_info().rss
        finally:
            child.kill()
            child.wait()
    assert {"file", "heap", "stacks", "other", "generic"} == set(read_buckets())
    assert {"file", "heap", "stacks", "other", "generic"} == set(theirs)
    assert theirs["generic"] >= 64 * MiB
    assert abs(sum(theirs.values()) - rss) < rss // 10  # the same pages, read apart
    with pytest.raises(OSError):
        read_buckets(child.pid)  # gone


def test_unexplained_is_under_a_tenth_at_rest(run_python: Callable[..., Any]) -> None:
    """A fresh interpreter with arenapool imported is explained to within 10% of RSS."""
    result = run_python(_AROUND.format(work=""))
    assert _unexplained_ratio(result["before"]) < 0.10
    assert _unexplained_ratio(result["after"]) < 0.10


def test_small_python_objects_move_the_python_part(run_python: Callable[..., Any]) -> None:
    """100 MiB of small objects (tuples of ints) moves python_in_use + python_free by
    at least 80 MiB, and unexplained stays under 10% of RSS."""
    work = "keep = [(i, i + 1) for i in range(100 * MiB // 120)]"
    result = run_python(_AROUND.format(work=work))
    moved = _moved(result)
    assert moved["python_in_use"] + moved["python_free"] >= 80 * MiB, moved
    assert _unexplained_ratio(result["after"]) < 0.10


def test_a_bytearray_moves_the_c_heap_part(run_python: Callable[..., Any]) -> None:
    """A written 100 MiB bytearray moves c_heap_in_use by at least 95 MiB (malloc maps
    it as its own chunk: ``hblkhd``)."""
    work = "keep = bytearray(100 * MiB); keep[::4096] = b'x' * len(keep[::4096])"
    result = run_python(_AROUND.format(work=work))
    moved = _moved(result)
    assert moved["c_heap_in_use"] >= 95 * MiB, moved
    assert _unexplained_ratio(result["after"]) < 0.10


def test_lent_slabs_move_the_slab_part(run_python: Callable[..., Any]) -> None:
    """100 MiB lent through arenas and written moves slabs_lent by at least 95 MiB; once
    given back (no decay, no retain cap) the same pages count as slabs_idle."""
    code = """
import json
from arenapool._breakdown import read_breakdown
from arenapool import SlabPool
MiB = 1024 * 1024
pool = SlabPool("256MiB", decay=None, retain=None)
arena = pool.arena(limit="128MiB")
views = [arena.alloc(MiB) for _ in range(100)]
for v in views:
    v[::4096] = b"x" * len(v[::4096])
lent = read_breakdown([pool])
del views, v
arena.release()
idle = read_breakdown([pool])
print(json.dumps({"lent": lent.as_dict(), "idle": idle.as_dict()}))
"""
    result = run_python(code)
    lent, idle = result["lent"], result["idle"]
    assert lent["parts"]["slabs_lent"] >= 95 * MiB, lent
    assert _unexplained_ratio(lent) < 0.10
    assert idle["parts"]["slabs_idle"] >= 95 * MiB, idle
    assert idle["parts"]["slabs_lent"] < MiB
    assert _unexplained_ratio(idle) < 0.10


def test_memory_no_counter_claims_is_unexplained(run_python: Callable[..., Any]) -> None:
    """A private anonymous mapping nobody's allocator reports (what an extension might
    map) lands in unexplained: the breakdown does not hide what it cannot name."""
    work = """
m = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.write(b"x" * (64 * MiB))
"""
    moved = _moved(run_python(_AROUND.format(work=work)))
    assert moved["unexplained"] >= 60 * MiB, moved


def test_slab_regions_are_read_exactly_with_mincore() -> None:
    """A source with ``regions()`` is read page by page: written pages of lent ranges
    are lent, other written pages idle, unwritten pages nothing."""
    size = 8 * MiB
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    buf.write(b"x" * (4 * MiB))  # pages of the first 4 MiB resident
    probe = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(probe)
    del probe

    class Source:
        backing = "mmap"

        def stats(self) -> dict[str, Any]:
            return {}

        def regions(self) -> dict[str, list[tuple[int, int]]]:
            return {"mapped": [(addr, size)], "lent": [(addr, MiB), (addr + 6 * MiB, MiB)]}

    reading = read_breakdown([Source()])
    assert "mincore" == reading.details["slab_source"]
    assert MiB == reading.parts["slabs_lent"]
    assert 3 * MiB == reading.parts["slabs_idle"]
    buf.close()


def test_pymalloc_stats_are_read_without_writing_to_stderr(
    run_python: Callable[..., Any],
) -> None:
    """pymalloc's figures come from _debugmallocstats captured in memory: the process's
    stderr sees none of it, and live objects are a part of the mapped arenas."""
    code = """
import json, os, sys
from arenapool._breakdown import pymalloc_stats
stats = pymalloc_stats()
print(json.dumps(stats.__dict__))
"""
    stats = run_python(code)
    assert 0 < stats["in_use"] <= stats["arena_bytes"]
    assert stats["arena_bytes"] == stats["arenas"] * (stats["arena_bytes"] // stats["arenas"])
    again = pymalloc_stats()
    assert again is not None


def _vma(start: int, end: int, perms: bytes = b"rw-p", path: bytes = b"", rss: int = 0) -> _Vma:
    return _Vma(start, end, perms, path, rss)


def test_mappings_are_sorted_into_buckets_by_what_they_are() -> None:
    """Files, [heap], a thread's malloc heap (64 MiB aligned with its reserve), a thread
    stack above its guard, anonymous shared memory and plain anonymous memory; 64
    aligned MiB without a reserve (merged pymalloc arenas look so) stay generic."""
    heap64 = 0x7F00_0000_0000  # 64 MiB aligned
    vmas = [
        _vma(0x1000, 0x5000, b"r-xp", b"/usr/lib/libc.so.6"),
        _vma(0x5000, 0x9000, b"rw-p", b"[heap]"),
        _vma(heap64, heap64 + 0x21000),
        _vma(heap64 + 0x21000, heap64 + 64 * MiB, b"---p"),
        _vma(heap64 + 64 * MiB + 0x10000, heap64 + 64 * MiB + 0x11000, b"---p"),
        _vma(heap64 + 64 * MiB + 0x11000, heap64 + 72 * MiB + 0x11000),
        _vma(heap64 + 80 * MiB, heap64 + 81 * MiB),
        _vma(heap64 + 90 * MiB, heap64 + 98 * MiB, b"rw-s", b"/dev/zero (deleted)"),
        _vma(heap64 + 100 * MiB, heap64 + 101 * MiB, b"rw-p", b"[anon:mine]"),
        _vma(heap64 + 128 * MiB, heap64 + 192 * MiB),  # aligned 64 MiB, no reserve
        _vma(0x7FFF_0000_0000, 0x7FFF_0002_1000, b"rw-p", b"[stack]"),
        _vma(0x7FFF_0010_0000, 0x7FFF_0010_2000, b"r-xp", b"[vdso]"),
    ]
    assert [
        "file",
        "heap",
        "heap",
        "generic",
        "generic",
        "stacks",
        "generic",
        "other",
        "other",
        "generic",
        "stacks",
        "file",
    ] == _bucket_of(vmas)


@pytest.mark.parametrize("threads", [4])
def test_thread_stacks_are_their_own_part(run_python: Callable[..., Any], threads: int) -> None:
    """Threads add their stacks' resident pages to ``stacks``, not to unexplained."""
    code = f"""
import json, threading
from arenapool._breakdown import read_breakdown
before = read_breakdown()
go = threading.Event()
deep_enough = threading.Barrier({threads} + 1)
def deep(n):
    # through map(), so every level is a C call and takes C stack (3.11 runs
    # Python-to-Python calls without one)
    return list(map(deep, [n - 1])) if n else (deep_enough.wait(), go.wait())
ts = [threading.Thread(target=deep, args=(400,)) for _ in range({threads})]
for t in ts:
    t.start()
deep_enough.wait()
during = read_breakdown()
go.set()
for t in ts:
    t.join()
print(json.dumps({{"before": before.parts["stacks"], "during": during.parts["stacks"]}}))
"""
    result = run_python(code)
    assert result["during"] - result["before"] >= threads * 64 * 1024, result
