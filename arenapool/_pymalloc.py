"""Giving the pages of pymalloc's empty pools back to the OS (CPython 3.11 on Linux).

Theory of operation
-------------------
CPython allocates objects of up to 512 bytes with pymalloc: 1 MiB *arenas* (anonymous
mappings) carved into 16 KiB *pools*, each pool serving one size class. An arena is
unmapped only once every pool in it is empty. A pool that empties goes on its arena's
free list and keeps its pages resident. So after a load (a server parsing large JSON
documents makes and drops millions of small objects) a few long-lived objects the
load happened to place, a timer handle here, a cache entry there, keep whole arenas
resident, and ``malloc_trim`` cannot help: this memory is not glibc's. Measured on
the example service after a mixed load, about 5-6 MiB of RSS stayed in such arenas
(``benchmarks/README.md``: "pymalloc's empty pools").

:func:`release_free_pools` walks the arenas and, for every pool on a free list, keeps
the pool's first page (its header, which holds the list's link) and
``madvise(MADV_DONTNEED)``s the other three, after marking the header so that pymalloc
initialises the pool afresh when it next takes it rather than reuse the free list it
kept inside the dropped pages (see ``_pymalloc_c.c``). A pool taken again costs up to
three page faults.

Where it can run. pymalloc's state is private to the interpreter (``static`` globals
of ``Objects/obmalloc.c`` in 3.11), so this module finds it through the ELF symbol
table of the binary that holds the interpreter (``libpython3.11.so`` or the
executable) and refuses to act unless everything checks out:

- CPython 3.11, 64-bit, Linux, pymalloc in use (``sys.getallocatedblocks() > 0``,
  which is 0 under ``PYTHONMALLOC=malloc``), and the compiled ``_pymalloc_c`` built
  (pure-Python installs and ``ARENAPOOL_NO_EXTENSIONS=1`` leave it out: the walk must
  run with no allocation between reading a pool's state and dropping its pages, which
  only C can promise);
- the symbol table has ``arenas``, ``maxarenas`` and ``narenas_currently_allocated``
  under ``obmalloc.c`` (a stripped interpreter, as most distributions ship, has none);
- every address the walk starts from lies in this process's writable mappings (checked
  from ``/proc/self/maps`` before anything is dereferenced), and a read-only survey
  agrees with the interpreter: as many arenas as it says it holds, pool counts and free
  lists within their arenas, and a fresh object inside one.

Otherwise :func:`status` says why and :func:`release_free_pools` returns ``None``.
The walk holds the GIL throughout (pymalloc is only entered with it), so it is safe
from any thread; it takes well under a millisecond for a few dozen arenas.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

from ._ext import NO_EXTENSIONS, c_module

__all__ = ["PoolRelease", "PymallocStatus", "release_free_pools", "status", "survey"]

#: pymalloc's geometry on 64-bit CPython 3.11 (``USE_LARGE_ARENAS``, ``USE_LARGE_POOLS``)
POOL_SIZE: Final = 16 * 1024
ARENA_SIZE: Final = 1024 * 1024
PAGE: Final = mmap.PAGESIZE

_SYMBOLS: Final = ("arenas", "maxarenas", "narenas_currently_allocated")
_ANCHOR: Final = "PyObject_Malloc"  # exported: ties the file's addresses to this process's


@dataclass(frozen=True)
class PymallocStatus:
    """Whether :func:`release_free_pools` can act here, and if not, why."""

    available: bool
    reason: str | None
    library: str | None = None


@dataclass(frozen=True)
class PoolRelease:
    """What one :func:`release_free_pools` did: bytes and pools given back, and the free
    pools it found (those released before and not reused since are not counted again)."""

    bytes: int
    pools: int
    free_pools: int


@dataclass(frozen=True)
class _Layout:
    arenas_at: int
    maxarenas_at: int
    narenas_at: int
    library: str
    module: ModuleType  # the compiled walk (arenapool._pymalloc_c)


_lock = threading.Lock()
_found: tuple[_Layout | None, str | None] | None = None


def status() -> PymallocStatus:
    """Whether pymalloc's free pools can be released in this process (found once)."""
    layout, reason = _locate()
    if layout is None:
        return PymallocStatus(False, reason)
    return PymallocStatus(True, None, layout.library)


def survey() -> tuple[int, int, int] | None:
    """``(arenas, free_pools, released_pools)`` read from pymalloc now, or ``None`` when
    :func:`status` says this process cannot."""
    layout, _ = _locate()
    if layout is None:
        return None
    arenas, free, released, _probe, _counted = layout.module.survey(*_args(layout, 0))
    return int(arenas), int(free), int(released)


def release_free_pools() -> PoolRelease | None:
    """Give back the pages of pymalloc's empty pools (all but each pool's first page).

    Returns what was released, or ``None`` when :func:`status` says this process
    cannot (nothing is touched then). Safe from any thread: the walk holds the GIL.
    """
    layout, _ = _locate()
    if layout is None:
        return None
    advised, pools, free = layout.module.release(*_args(layout, 0))
    return PoolRelease(int(advised), int(pools), int(free))


def _args(
    layout: _Layout, probe: int, *, count: bool = False
) -> tuple[int, int, int, int, int, int, int]:
    """The C walk's arguments; with ``count`` it also reads pymalloc's arena count."""
    narenas_at = layout.narenas_at if count else 0
    return (layout.arenas_at, layout.maxarenas_at, POOL_SIZE, ARENA_SIZE, PAGE, probe, narenas_at)


def _compiled() -> ModuleType | None:
    return c_module("arenapool._pymalloc_c")


def _locate() -> tuple[_Layout | None, str | None]:
    global _found  # found once per process
    with _lock:
        if _found is None:
            try:
                _found = _find()
            except (OSError, ValueError, struct.error) as exc:
                _found = (None, f"pymalloc's state could not be read: {exc}")
        return _found


def _unsupported(module: ModuleType | None) -> str | None:
    """Why this interpreter cannot have its free pools released, or ``None`` (``module``:
    the compiled walk, if it imports)."""
    if sys.implementation.name != "cpython" or sys.hexversion >> 16 != 0x030B:
        version = ".".join(map(str, sys.version_info[:3]))
        return f"needs CPython 3.11 (this is {sys.implementation.name} {version})"
    if os.uname().sysname != "Linux" or struct.calcsize("P") != 8:
        return "needs 64-bit Linux"
    if sys.getallocatedblocks() <= 0:
        return "pymalloc is not in use (PYTHONMALLOC?)"
    if module is None:
        why = "ARENAPOOL_NO_EXTENSIONS is set" if NO_EXTENSIONS else "it was not built"
        return f"needs the compiled arenapool._pymalloc_c ({why})"
    return None


def _find() -> tuple[_Layout | None, str | None]:
    module = _compiled()
    reason = _unsupported(module)
    if reason is not None or module is None:
        return None, reason
    anchor = ctypes.cast(ctypes.pythonapi.PyObject_Malloc, ctypes.c_void_p).value
    if anchor is None:
        return None, "PyObject_Malloc has no address"
    maps = _mappings()  # read once: the binary's file, then the check of every address
    path = _mapped_file(anchor, maps)
    if path is None:
        return None, "the interpreter's binary is not a mapped file"
    symbols = _elf_symbols(path, "obmalloc.c", _SYMBOLS, _ANCHOR)
    missing = [name for name in (*_SYMBOLS, _ANCHOR) if name not in symbols]
    if missing:
        return None, f"{path} has no symbol table entry for {', '.join(missing)} (stripped?)"
    bias = anchor - symbols[_ANCHOR]
    layout = _Layout(
        bias + symbols["arenas"],
        bias + symbols["maxarenas"],
        bias + symbols["narenas_currently_allocated"],
        str(path),
        module,
    )
    reason = _verify(layout, maps)
    return (None, reason) if reason is not None else (layout, None)


def _verify(layout: _Layout, maps: list[_Mapping]) -> str | None:
    """Why the state found does not look like this interpreter's pymalloc, or ``None``.

    Before the C survey dereferences anything, every address it will start from is
    checked against this process's mappings, so that a symbol table that does not
    match the running interpreter is refused instead of read.
    """
    unmapped = _unmapped(layout, maps)
    if unmapped is not None:
        return f"pymalloc's state is not where the symbol table says: {unmapped}"
    probe = object()
    try:
        arenas, _free, _released, found, narenas = layout.module.survey(
            *_args(layout, id(probe), count=True)
        )
    except ValueError as exc:
        return f"pymalloc's arenas do not look as expected: {exc}"
    if arenas != narenas:
        return f"pymalloc's arenas do not add up ({arenas} found, {narenas} counted)"
    if not found:
        return "a fresh object lies in none of pymalloc's arenas"
    return None


#: ``sizeof(struct arena_object)`` on 64-bit CPython 3.11: six 8-byte words
_ARENA_OBJECT_WORDS: Final = 6


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    writable: bool
    path: str  # "" for an anonymous mapping


def _mappings() -> list[_Mapping]:
    """This process's mappings, from ``/proc/self/maps``."""
    found = []
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, _, end = fields[0].partition("-")
            path = fields[5].strip() if len(fields) == 6 else ""
            found.append(_Mapping(int(start, 16), int(end, 16), fields[1][:2] == "rw", path))
    return found


def _unmapped(layout: _Layout, maps: list[_Mapping]) -> str | None:
    """What of pymalloc's state, as the symbol table places it, lies outside this
    process's writable memory (``None``: all of it is inside)."""
    spans = [(m.start, m.end) for m in maps if m.writable]

    def inside(start: int, size: int) -> bool:
        return any(lo <= start and start + size <= hi for lo, hi in spans)

    for name, at, size in (
        ("arenas", layout.arenas_at, 8),
        ("maxarenas", layout.maxarenas_at, 4),
        ("narenas_currently_allocated", layout.narenas_at, 8),
    ):
        if not inside(at, size):
            return f"{name} at {at:#x}"
    table = ctypes.c_uint64.from_address(layout.arenas_at).value
    slots = ctypes.c_uint32.from_address(layout.maxarenas_at).value
    words = slots * _ARENA_OBJECT_WORDS
    if table == 0 or slots == 0 or not inside(table, words * 8):
        return f"the arena table ({slots} slots at {table:#x})"
    objects = (ctypes.c_uint64 * words).from_address(table)
    for slot in range(slots):
        address = objects[slot * _ARENA_OBJECT_WORDS]
        if address and not inside(address, ARENA_SIZE):
            return f"arena {slot} at {address:#x}"
    return None


def _mapped_file(address: int, maps: list[_Mapping]) -> Path | None:
    """The file whose mapping holds ``address`` in this process."""
    for mapping in maps:
        if mapping.start <= address < mapping.end:
            return Path(mapping.path) if mapping.path.startswith("/") else None
    return None


_STT_OBJECT: Final = 1
_STT_FUNC: Final = 2
_STT_FILE: Final = 4
_SHT_SYMTAB: Final = 2


def _elf_symbols(path: Path, unit: str, local: tuple[str, ...], exported: str) -> dict[str, int]:
    """Values of the ``local`` data symbols of compilation unit ``unit`` and of the
    global function ``exported`` in the ELF64 file's ``.symtab`` (empty when it has none).

    The file is mapped, not read: its tables (about 0.7 MiB for libpython3.11) stay
    file pages, gone from RSS when the mapping is, rather than heap a server keeps.
    """
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
        if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
            msg = "not a little-endian ELF64 file"
            raise ValueError(msg)
        (shoff,) = struct.unpack_from("<Q", image, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
        sections = [
            struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)
        ]
        symtab = next((s for s in sections if s[1] == _SHT_SYMTAB), None)
        if symtab is None:
            return {}
        strtab = sections[symtab[6]]
        return _scan(
            image,
            (strtab[4], strtab[5]),
            (symtab[4], symtab[5]),
            unit=unit,
            local=local,
            exported=exported,
        )


def _scan(
    image: mmap.mmap,
    names: tuple[int, int],
    table: tuple[int, int],
    *,
    unit: str,
    local: tuple[str, ...],
    exported: str,
) -> dict[str, int]:
    """The symbol table walk of :func:`_elf_symbols`.

    A name in the string table is where its bytes and a NUL start (names share
    suffixes: "arenas" may sit inside "usable_arenas"), so each wanted name is the set
    of offsets it occurs at, and no symbol's name needs decoding.
    """
    names_at, names_size = names
    table_at, table_size = table

    def offsets(name: str) -> frozenset[int]:
        needle = name.encode() + b"\0"
        found: set[int] = set()
        at = image.find(needle, names_at, names_at + names_size)
        while at >= 0:
            found.add(at - names_at)
            at = image.find(needle, at + 1, names_at + names_size)
        return frozenset(found)

    unit_at = offsets(unit)
    exported_at = offsets(exported)
    local_at = {offset: name for name in local for offset in offsets(name)}
    found: dict[str, int] = {}
    in_unit = False
    with memoryview(image) as view:
        symbols = view[table_at : table_at + table_size]
        try:
            for st_name, st_info, _other, _shndx, st_value, _size in struct.iter_unpack(
                "<IBBHQQ", symbols
            ):
                kind = st_info & 0xF
                if kind == _STT_FILE:
                    in_unit = st_name in unit_at
                elif kind == _STT_OBJECT:
                    if in_unit and st_name in local_at:
                        found[local_at[st_name]] = st_value
                elif kind == _STT_FUNC and st_info >> 4 != 0 and st_name in exported_at:
                    found[exported] = st_value
        finally:
            symbols.release()
    return found
