"""Memory readings agree with the OS; glibc hooks; cgroup limits from (fake) files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from arenapool import memory
from arenapool._memory import MemorySnapshot

MiB = 1024 * 1024
RunPython = Callable[..., Any]  # conftest's run_python fixture

#: Touching 100 MiB must move RSS by 100 MiB within this much (page tables, the
#: interpreter's own allocations while measuring, a noisy shared machine).
RSS_TOLERANCE = 8 * MiB
#: ...and must leave the breakdown's `unexplained` part within this much.
UNEXPLAINED_TOLERANCE = 8 * MiB


PRELUDE = """
import json, mmap
from arenapool.memory import snapshot
MiB = 1024 * 1024
N = 100 * MiB
def reading():
    s = snapshot()
    assert sum(s.breakdown.values()) == s.rss
    return {"rss": s.rss, "in_use": s.heap_in_use, "parts": dict(s.breakdown),
            "lent": s.slab_lent_bytes}
before = reading()
"""


def test_snapshot_is_frozen_json_and_reprs_live_state() -> None:
    """A snapshot is a frozen dataclass whose as_dict() serialises and whose repr shows RSS."""
    reading = memory.snapshot(routes=lambda: {"/upload": {"requests": 3, "status_413": 1}})
    assert isinstance(reading, MemorySnapshot)
    data = orjson.loads(orjson.dumps(reading.as_dict()))
    assert reading.rss == data["rss"]
    assert {"/upload": {"requests": 3, "status_413": 1}} == data["routes"]
    assert reading.peak_rss is not None
    assert reading.peak_rss >= reading.rss
    assert repr(reading).startswith("<MemorySnapshot [rss ")
    with pytest.raises(AttributeError):
        reading.rss = 0  # type: ignore[misc]


def test_heap_info_reads_glibc() -> None:
    """On glibc the C heap figures exist and are consistent (mmapped is part of in use)."""
    info = memory.heap_info()
    assert info is not None, "this test machine runs glibc >= 2.33; mallinfo2 must be found"
    assert 0 <= info.mmapped <= info.in_use
    assert info.free >= 0
    assert info.arena > 0


def test_rss_and_heap_track_a_touched_bytearray(run_python: RunPython) -> None:
    """Writing a 100 MiB bytearray moves RSS, C heap in use and the breakdown's
    c_heap_in_use by ~100 MiB, and unexplained not at all."""
    out = run_python(
        PRELUDE
        + """
buf = bytearray(N)
for i in range(0, N, 4096):
    buf[i] = 1
after = reading()
print(json.dumps({"before": before, "after": after}))
"""
    )
    before, after = out["before"], out["after"]
    rss_delta = after["rss"] - before["rss"]
    heap_delta = after["in_use"] - before["in_use"]
    part_delta = after["parts"]["c_heap_in_use"] - before["parts"]["c_heap_in_use"]
    drift = after["parts"]["unexplained"] - before["parts"]["unexplained"]
    assert abs(rss_delta - 100 * MiB) <= RSS_TOLERANCE, f"RSS moved {rss_delta / MiB:.1f} MiB"
    assert abs(heap_delta - 100 * MiB) <= RSS_TOLERANCE, f"heap moved {heap_delta / MiB:.1f} MiB"
    assert abs(part_delta - 100 * MiB) <= RSS_TOLERANCE, f"part moved {part_delta / MiB:.1f} MiB"
    assert abs(drift) <= UNEXPLAINED_TOLERANCE, f"unexplained moved {drift / MiB:.1f} MiB"


def test_anonymous_shared_memory_is_its_own_part(run_python: RunPython) -> None:
    """100 MiB of anonymous shared mmap (Python's mmap.mmap(-1, n)) written by hand
    shows up in RSS and in anon_other: memory no allocator reports, but named."""
    out = run_python(
        PRELUDE
        + """
m = mmap.mmap(-1, N)
for i in range(0, N, 4096):
    m[i] = 1
after = reading()
print(json.dumps({"before": before, "after": after}))
"""
    )
    before, after = out["before"], out["after"]
    rss_delta = after["rss"] - before["rss"]
    other = after["parts"]["anon_other"] - before["parts"]["anon_other"]
    assert abs(rss_delta - 100 * MiB) <= RSS_TOLERANCE, f"RSS moved {rss_delta / MiB:.1f} MiB"
    assert abs(other - 100 * MiB) <= UNEXPLAINED_TOLERANCE, f"anon_other moved {other / MiB:.1f}"


def test_slab_lent_bytes_are_accounted(run_python: RunPython) -> None:
    """100 MiB written into an arena is in slabs_lent (resident pages, read with
    mincore), not in unexplained."""
    out = run_python(
        PRELUDE
        + """
from arenapool import SlabPool
pool = SlabPool(budget="256MiB", max_class="16MiB", name="t")
with pool.arena(limit="128MiB") as arena:
    for _ in range(10):
        view = arena.alloc(10 * MiB)
        for i in range(0, len(view), 4096):
            view[i] = 1
    after = reading()
print(json.dumps({"before": before, "after": after}))
"""
    )
    before, after = out["before"], out["after"]
    rss_delta = after["rss"] - before["rss"]
    lent = after["parts"]["slabs_lent"] - before["parts"]["slabs_lent"]
    drift = after["parts"]["unexplained"] - before["parts"]["unexplained"]
    assert after["lent"] >= 100 * MiB
    assert abs(rss_delta - 100 * MiB) <= RSS_TOLERANCE, f"RSS moved {rss_delta / MiB:.1f} MiB"
    assert abs(lent - 100 * MiB) <= RSS_TOLERANCE, f"slabs_lent moved {lent / MiB:.1f} MiB"
    assert abs(drift) <= UNEXPLAINED_TOLERANCE, f"unexplained moved {drift / MiB:.1f} MiB"


def test_a_reading_without_the_breakdown_is_cheap_and_empty() -> None:
    """snapshot(breakdown=False) skips the smaps walk: no parts, RSS from statm."""
    reading = memory.snapshot(breakdown=False)
    assert {} == dict(reading.breakdown)
    assert reading.rss > 0
    full = memory.snapshot()
    assert full.rss == sum(full.breakdown.values())


def test_malloc_trim_returns_freed_heap_to_the_os(run_python: RunPython) -> None:
    """Freed heap holes stay resident until malloc_trim(0), which returns them."""
    out = run_python(
        """
import json
from arenapool.memory import current_rss, malloc_trim, malloc_trim_available
MiB = 1024 * 1024
base = current_rss()
pins, chunks = [], []
for i in range(1600):  # 100 MiB in 64 KiB chunks, a 1 KiB pin after each
    chunks.append(bytes([i & 255]) * 65536)
    pins.append(bytes([i & 255]) * 1024)
del chunks
held = current_rss()
trimmed = malloc_trim(0)
after = current_rss()
print(json.dumps({"base": base, "held": held, "after": after, "trimmed": trimmed,
                  "available": malloc_trim_available()}))
"""
    )
    assert out["available"]
    assert out["trimmed"]
    assert out["held"] - out["base"] >= 90 * MiB, "the freed holes should still be resident"
    assert out["after"] - out["base"] <= 10 * MiB, (
        f"after malloc_trim RSS is {(out['after'] - out['base']) / MiB:.1f} MiB above base"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    """cgroup v2: memory.max holds bytes, or "max" for no limit."""
    write(tmp_path / "memory.max", "536870912\n")
    assert 512 * MiB == memory.cgroup_memory_limit(tmp_path, proc_cgroup=None)
    write(tmp_path / "memory.max", "max\n")
    assert memory.cgroup_memory_limit(tmp_path, proc_cgroup=None) is None


def test_cgroup_v1_limit_and_sentinel(tmp_path: Path) -> None:
    """cgroup v1: limit_in_bytes holds bytes; the huge "unlimited" sentinel means None."""
    limit_file = tmp_path / "memory" / "memory.limit_in_bytes"
    write(limit_file, "1073741824\n")
    assert 1024 * MiB == memory.cgroup_memory_limit(tmp_path, proc_cgroup=None)
    write(limit_file, "9223372036854771712\n")
    assert memory.cgroup_memory_limit(tmp_path, proc_cgroup=None) is None


def test_cgroup_nested_tightest_limit_wins(tmp_path: Path) -> None:
    """A process in a nested v2 cgroup gets the tightest limit on its path to the root."""
    write(tmp_path / "memory.max", "max\n")
    write(tmp_path / "app.slice" / "memory.max", "2147483648\n")
    write(tmp_path / "app.slice" / "web.service" / "memory.max", "max\n")
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/app.slice/web.service\n")
    assert 2048 * MiB == memory.cgroup_memory_limit(tmp_path, proc_cgroup=proc)


def test_cgroup_absent_or_garbage_is_none(tmp_path: Path) -> None:
    """No cgroup files, or unreadable content, reads as no limit (never a guess)."""
    assert memory.cgroup_memory_limit(tmp_path, proc_cgroup=tmp_path / "missing") is None
    write(tmp_path / "memory.max", "lots\n")
    assert memory.cgroup_memory_limit(tmp_path, proc_cgroup=None) is None


@pytest.mark.parametrize("pinned", [False, True])
def test_pinned_mmap_threshold_keeps_large_buffers_off_the_heap(
    run_python: RunPython, pinned: bool
) -> None:
    """glibc raises its mmap threshold after a large free, so the next large buffer
    lands in the heap; with set_mmap_threshold it still gets a mapping of its own."""
    out = run_python(
        f"""
import json
from arenapool.memory import heap_info, set_mmap_threshold
MiB = 1024 * 1024
took = set_mmap_threshold(128 * 1024) if {pinned} else None
first = bytearray(4 * MiB)  # above the initial threshold: mapped
del first  # freeing it raises glibc's dynamic threshold to 4 MiB
before = heap_info().mmapped
second = bytearray(2 * MiB)
print(json.dumps({{"took": took, "grew": heap_info().mmapped - before}}))
"""
    )
    if pinned:
        assert out["took"] is True
        assert out["grew"] >= 2 * 1024 * 1024, "pinned: the 2 MiB buffer is mapped"
    else:
        assert 0 == out["grew"], "dynamic: the 2 MiB buffer came from the heap"


@pytest.mark.parametrize("held", [False, True])
def test_a_held_heap_serves_large_buffers_warm_and_keeps_them_for_the_trim(
    run_python: RunPython, held: bool
) -> None:
    """Held (hold_heap), a large buffer comes from the heap, not a fresh mapping, even
    one above glibc's largest mmap threshold (48 MiB: orjson's work buffer for a 4 MiB
    document), and its memory stays in the heap when freed, until malloc_trim gives it
    back; left dynamic, a fresh process maps it (glibc's first threshold is 128 KiB)."""
    out = run_python(
        f"""
import json
from arenapool.memory import current_rss, heap_info, hold_heap, malloc_trim
MiB = 1024 * 1024
took = hold_heap() if {held} else None
before = heap_info()
big = bytearray(8 * MiB)
huge = bytearray(48 * MiB)
during = heap_info()
del big, huge
after = heap_info()
resident = current_rss()
malloc_trim(0)
trimmed = current_rss()
print(json.dumps({{
    "took": took,
    "mapped": during.mmapped - before.mmapped,
    "kept": after.free - before.free,
    "returned": resident - trimmed,
}}))
"""
    )
    if held:
        assert out["took"] is True
        assert 0 == out["mapped"], "held: the 8 and 48 MiB buffers came from the heap"
        assert out["kept"] >= 55 * 1024 * 1024, "held: free() kept their memory in the heap"
        assert out["returned"] >= 55 * 1024 * 1024, "malloc_trim gave it back (RSS)"
    else:
        assert out["mapped"] >= 56 * 1024 * 1024, "dynamic: large buffers are mapped"


def test_heap_resident_counts_the_pages_a_trim_gave_back(run_python: RunPython) -> None:
    """heap_resident() reads glibc's main heap page by page: a freed 32 MiB hole stays
    resident in a held heap until malloc_trim gives its pages back, and then it is out
    of heap_resident() while glibc's free count (heap_free) still counts all of it."""
    out = run_python(
        """
import json
from arenapool.memory import heap_info, heap_resident, hold_heap, malloc_trim, snapshot
MiB = 1024 * 1024
hold_heap()  # free() keeps memory in the heap: only malloc_trim gives it back
base = heap_resident()
big = bytearray(32 * MiB)  # written (zeroed): resident, in the main heap
pin = bytearray(2 * MiB)  # from the top, above it: the freed buffer is a hole
touched = heap_resident()
del big
freed = heap_resident()
free_before = heap_info().free
malloc_trim(0)
print(json.dumps({
    "base": base, "touched": touched, "freed": freed, "trimmed": heap_resident(),
    "free_before": free_before, "free_after": heap_info().free,
    "in_snapshot": snapshot(breakdown=False).heap_resident,
}))
"""
    )
    assert out["touched"] - out["base"] >= 31 * MiB, "the buffer's pages are the heap's"
    assert out["freed"] - out["base"] >= 31 * MiB, "freed into a held heap: still resident"
    assert out["freed"] - out["trimmed"] >= 31 * MiB, "the trim gave them back"
    assert out["free_after"] >= out["free_before"] - MiB, "glibc still counts them free"
    assert out["free_before"] >= 32 * MiB
    assert abs(out["in_snapshot"] - out["trimmed"]) < 4 * MiB


def test_an_mmap_threshold_set_after_a_held_heap_maps_again(run_python: RunPython) -> None:
    """hold_heap stops malloc from mapping; set_mmap_threshold (the governor's opt-in
    pin) lets it map again above the threshold it sets."""
    out = run_python(
        """
import json
from arenapool.memory import heap_info, hold_heap, set_mmap_threshold
MiB = 1024 * 1024
held = hold_heap()
before = heap_info().mmapped
a = bytearray(4 * MiB)
held_mapped = heap_info().mmapped - before
pinned = set_mmap_threshold(1 * MiB)
b = bytearray(4 * MiB)
pinned_mapped = heap_info().mmapped - before - held_mapped
print(json.dumps({"held": held, "pinned": pinned, "a": held_mapped, "b": pinned_mapped}))
"""
    )
    assert (True, True) == (out["held"], out["pinned"])
    assert 0 == out["a"], "held: from the heap"
    assert out["b"] >= 4 * 1024 * 1024, "pinned at 1 MiB: mapped"


def test_set_mmap_threshold_rejects_sizes_glibc_cannot_take() -> None:
    """Above 32 MiB (glibc's cap) or negative: a ValueError that names the range."""
    with pytest.raises(ValueError, match="0 to 32 MiB"):
        memory.set_mmap_threshold(64 * 1024 * 1024)
