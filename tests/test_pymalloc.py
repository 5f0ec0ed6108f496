"""Giving pymalloc's empty pools back to the OS (``arenapool._pymalloc``).

CPython keeps an arena's pages resident while one object lives in it, so after a load a
few long-lived objects hold megabytes of empty pools. ``release_pymalloc`` gives those
pages back; it writes into the interpreter's own allocator, so these tests check the
two things that matter: the OS sees the memory come back, and every live object is
untouched, before and after pymalloc reuses the pools (in one thread, and with another
thread allocating while a release runs). The compiled build releases; the pure-Python
build (``ARENAPOOL_NO_EXTENSIONS=1``) says why it cannot and touches nothing; CI runs
both.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arenapool import Governor, GovernorConfig, _ext, _pymalloc
from arenapool.memory import (
    PoolRelease,
    PymallocStatus,
    current_rss,
    pymalloc_status,
    release_pymalloc,
)

COMPILED = not _ext.NO_EXTENSIONS

# Run in a fresh interpreter: fragment pymalloc (keep one object in 400 of three million),
# read RSS around a release from the OS, then reuse the pools and check every object.
FRAGMENT = """
import gc, json
from arenapool.memory import current_rss, release_pymalloc
keep = []
for round_ in range(3):
    junk = [("%d-" % i) * 3 for i in range(1_000_000)]
    keep += junk[::400]
    del junk
gc.collect()
before = current_rss()
first = release_pymalloc()
after = current_rss()
again = release_pymalloc()
ok = all(s == ("%d-" % int(s.split("-")[0])) * 3 for s in keep)
fresh = [("%d+" % i) * 2 for i in range(1_000_000)]
ok = ok and all(s == ("%d+" % i) * 2 for i, s in enumerate(fresh))
ok = ok and all(s == ("%d-" % int(s.split("-")[0])) * 3 for s in keep)
del fresh
gc.collect()
third = release_pymalloc()
print(json.dumps({
    "before": before, "after": after, "ok": ok, "kept": len(keep),
    "first": None if first is None else vars(first),
    "again": None if again is None else vars(again),
    "third": None if third is None else vars(third),
}))
"""


def run_fragment() -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", FRAGMENT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (0, "") == (result.returncode, result.stderr.strip()), result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_status_says_whether_this_build_can_release() -> None:
    """The compiled build on this CPython 3.11 (its libpython keeps a symbol table) finds
    pymalloc's state; the pure-Python build names the variable that turned it off."""
    found = pymalloc_status()
    assert isinstance(found, PymallocStatus)
    if COMPILED:
        assert (True, None) == (found.available, found.reason)
        assert found.library is not None
        assert Path(found.library).exists()
    else:
        assert not found.available
        assert found.reason is not None
        assert "ARENAPOOL_NO_EXTENSIONS" in found.reason


def test_release_gives_the_pages_back_and_keeps_every_object() -> None:
    """After a fragmenting load, a release returns megabytes the OS sees go (RSS), every
    kept object is intact, pymalloc reuses the released pools for new objects, and the
    pools freed again are released again (a second release right away finds nothing new)."""
    result = run_fragment()
    assert result["ok"] is True
    assert 7500 == result["kept"]
    if not COMPILED:
        assert (None, None, None) == (result["first"], result["again"], result["third"])
        return
    first = result["first"]
    assert isinstance(first, dict)
    assert first["bytes"] >= 4 * 1024 * 1024
    assert first["pools"] == first["free_pools"]
    assert first["bytes"] == first["pools"] * (16 - 4) * 1024  # all of a pool but its header page
    dropped = int(str(result["before"])) - int(str(result["after"]))
    assert dropped >= first["bytes"] // 2  # the OS's own figure, not ours
    again = result["again"]
    assert isinstance(again, dict)
    assert (0, 0) == (again["bytes"], again["pools"])
    assert again["free_pools"] == first["free_pools"]
    third = result["third"]
    assert isinstance(third, dict)
    assert third["pools"] > 0


def test_release_in_this_process_is_idempotent_and_safe() -> None:
    """In the test process itself: a release, then objects made and checked, then
    a survey that counts the pools released and not yet reused."""
    junk = [bytes([i % 251]) * 40 for i in range(200_000)]
    keep = junk[::300]
    del junk
    gc.collect()
    released = release_pymalloc()
    fresh = [str(i) * 5 for i in range(200_000)]
    assert all(s == str(i) * 5 for i, s in enumerate(fresh))
    assert all(b == bytes([b[0]]) * 40 for b in keep)
    seen = _pymalloc.survey()
    if not COMPILED:
        assert released is None
        assert seen is None
        return
    assert isinstance(released, PoolRelease)
    assert released.pools > 0
    assert seen is not None
    arenas, free, still_released = seen
    assert arenas > 0
    assert 0 <= still_released <= free


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 480), st.integers(1, 3000), st.integers(2, 50)),
        min_size=1,
        max_size=6,
    )
)
def test_objects_survive_releases_between_any_allocations(
    steps: list[tuple[int, int, int]],
) -> None:
    """Objects of any pymalloc size class, made and dropped in any order with releases
    in between, keep their contents; pymalloc hands out released pools as fresh ones."""
    live: list[bytes] = []
    for size, count, keep_every in steps:
        made = [bytes([(size + i) % 256]) * size for i in range(count)]
        live += made[::keep_every]
        del made
        release_pymalloc()
        for i, item in enumerate(live[-3:]):
            assert len(set(item)) == 1, (i, item[:8])
    assert all(len(set(item)) == 1 for item in live)


def test_release_from_another_thread_while_this_one_allocates() -> None:
    """The governor releases from a worker thread; here one thread releases 200 times
    while this one makes, checks and drops objects: nothing it holds changes."""
    done = threading.Event()
    results: list[PoolRelease | None] = []

    def releaser() -> None:
        for _ in range(200):
            results.append(release_pymalloc())
        done.set()

    thread = threading.Thread(target=releaser)
    thread.start()
    rounds = 0
    while not done.is_set() and rounds < 10_000:
        batch = [(i, str(i) * 3) for i in range(2_000)]
        assert all(s == str(i) * 3 for i, s in batch)
        del batch[::2]
        assert all(s == str(i) * 3 for i, s in batch)
        rounds += 1
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert 200 == len(results)
    if COMPILED:
        assert all(isinstance(r, PoolRelease) for r in results)
    else:
        assert all(r is None for r in results)


def test_the_governor_releases_unless_told_not_to() -> None:
    """``GovernorConfig.release_pymalloc`` is on by default and can be turned off."""
    assert GovernorConfig().release_pymalloc is True
    assert GovernorConfig(release_pymalloc=False).release_pymalloc is False


def test_symbols_are_read_from_the_interpreters_own_file(tmp_path: Path) -> None:
    """The ELF reader finds obmalloc.c's private globals in the interpreter's binary, and
    refuses a file that is not ELF."""
    found = pymalloc_status()
    if COMPILED:
        assert found.library is not None
        symbols = _pymalloc._elf_symbols(
            Path(found.library), "obmalloc.c", ("arenas", "maxarenas"), "PyObject_Malloc"
        )
        assert {"arenas", "maxarenas", "PyObject_Malloc"} == set(symbols)
        assert len(set(symbols.values())) == 3
    not_elf = tmp_path / "not-elf"
    not_elf.write_bytes(b"#!/bin/sh\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="ELF"):
        _pymalloc._elf_symbols(not_elf, "obmalloc.c", ("arenas",), "PyObject_Malloc")
    assert current_rss() > 0


def test_a_symbol_table_that_does_not_match_is_refused_unread() -> None:
    """Addresses outside this process's writable memory (a symbol table from another
    build) are refused before the C survey dereferences anything."""
    layout, _ = _pymalloc._locate()
    module = _pymalloc._compiled()
    if not COMPILED:
        assert (None, None) == (layout, module)
        return
    assert layout is not None
    assert module is not None
    assert layout.module is module
    maps = _pymalloc._mappings()
    assert _pymalloc._verify(layout, maps) is None
    far = dataclasses.replace(layout, arenas_at=layout.arenas_at + (1 << 40))
    reason = _pymalloc._verify(far, maps)
    assert reason is not None
    assert "not where the symbol table says: arenas at" in reason


async def test_the_governor_releases_once_per_idle_spell() -> None:
    """Idle (nothing in flight for ``idle_after``), the governor's reading gives back
    pymalloc's empty pools once; the next reading of the same idle spell does not walk
    again; a request ending starts a new spell, and the next idle reading releases."""
    governor = Governor(
        GovernorConfig(
            use_cgroup=False, idle_after=0, trim_threshold="1GiB", busy_trim_threshold=None
        )
    )
    keep = _fragment()
    await governor.check()
    first = governor.stats()["pymalloc_released_bytes"]
    keep += _fragment()
    await governor.check()
    same_spell = governor.stats()["pymalloc_released_bytes"]
    governor.note_request_start()
    governor.note_request_end()
    await governor.check()
    next_spell = governor.stats()["pymalloc_released_bytes"]
    assert all(s == s[: len(s) // 4] * 4 for s in keep)
    assert 0 == governor.stats()["trims"]  # the releases came with no trim
    if not COMPILED:
        assert (0, 0, 0) == (first, same_spell, next_spell)
        return
    assert first > 0
    assert same_spell == first
    assert next_spell > same_spell


def _fragment() -> list[str]:
    junk = [str(i) * 4 for i in range(300_000)]
    keep = junk[::300]
    del junk
    gc.collect()
    return keep
