"""Slabs and blocks: the mappings memory lives in, and how a lend's liveness is seen.

Theory of operation
-------------------
Memory lives in *slabs*: one anonymous ``mmap`` (or one ``bytearray``) per slab, cut
into equal *blocks* of one size class (see ``_sizeclasses``). A *huge* slab holds one
block of a request above ``max_class`` and belongs to no class: its ``cls`` is
``None``, and it is unmapped as soon as its block comes back.

Every block is in exactly one :class:`BlockState`, and every change of state is a
lookup in the one table ``TRANSITIONS`` of (event, state) -> new state, as h11 keeps
its connection states::

    IDLE --LEND--> LENT --RECLAIM (returned, no view alive)--> IDLE
                   LENT --QUARANTINE (returned, a view escaped)--> QUARANTINED
                                      QUARANTINED --RECLAIM (last view died)--> IDLE

A change the table does not list raises ``KeyError``: a bookkeeping bug, never hidden.
The hot paths use the table's rows bound to module names (``ON_LEND[block.state]``),
which is the same lookup without a function call.

Liveness of a lend is tracked through a *carrier*: each block has a ctypes array over
its bytes (``from_buffer``, made on the block's first lend and kept), and every lend
hands out a fresh root view cast from it. Every memoryview derived from that root
(slices included) holds the carrier through CPython's managed buffer, and a released
view no longer does, so "the carrier's reference count is back to its baseline" is
exactly "no view of this lend is alive". The baseline is read by :func:`arm` with the
same expression :func:`escaped` uses (``_getrefcount(block.carrier)``), right after the
carrier is made and before any view exists. A quarantined block drops its carrier (the
next lend makes a new one) and a ``weakref.finalize`` on the old carrier fires when the
last stale view dies (:func:`detach_carrier`). A carrier holds an export of its slab,
so a slab drops its blocks' carriers before it is unmapped.

Nothing here takes a lock or keeps counts: the pool (``_slabpool``) does both.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import functools
import mmap
import sys
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

from ._sizeclasses import PAGE
from ._units import format_size

__all__ = ["Backing", "Block", "BlockEvent", "BlockState", "ClassState", "Slab"]

#: Transparent huge page size on x86-64 and most arm64 kernels.
HUGE_PAGE: Final = 2 * 1024 * 1024
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)

_getrefcount = sys.getrefcount

#: ``madvise`` advice that faults a range in, writable, in one call (Linux 5.14+;
#: ``mmap`` names it from Python 3.13 on, and its value is fixed in the kernel's ABI).
_MADV_POPULATE_WRITE: Final = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: The smallest allocation :meth:`Block.populate` faults in ahead: below four pages the
#: call costs about what the faults it saves do.
POPULATE_MIN: Final = 16 * 1024
#: False once the kernel refused the advice (older than 5.14): no call is made again.
_populate_works = sys.platform.startswith("linux")

#: The kernel's transparent huge page setting (Linux).
THP_ENABLED: Final = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def thp_available() -> bool:
    """Whether ``madvise(MADV_HUGEPAGE)`` gets huge pages here: Linux with THP mode
    ``always`` or ``madvise`` (the bracketed word of :data:`THP_ENABLED`)."""
    if _MADV_HUGEPAGE is None:
        return False
    try:
        with open(THP_ENABLED, encoding="ascii") as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


#: How many calibration windows a class's warm reserve is the median of.
CALIBRATION_WINDOWS: Final = 8

Backing = Literal["mmap", "bytearray"]


class BlockState(enum.IntEnum):
    """Where a block is in its life (an ``IntEnum``: compared and hashed as an int)."""

    IDLE = 0
    LENT = 1
    QUARANTINED = 2


IDLE: Final = BlockState.IDLE
LENT: Final = BlockState.LENT
QUARANTINED: Final = BlockState.QUARANTINED


class BlockEvent(enum.Enum):
    """What happens to a block."""

    LEND = "lend"
    QUARANTINE = "quarantine"
    RECLAIM = "reclaim"


#: The one table of state changes: event -> {state it may happen in: the new state}.
TRANSITIONS: Final[dict[BlockEvent, dict[BlockState, BlockState]]] = {
    BlockEvent.LEND: {IDLE: LENT},
    BlockEvent.QUARANTINE: {LENT: QUARANTINED},
    BlockEvent.RECLAIM: {LENT: IDLE, QUARANTINED: IDLE},
}
#: The table's rows, for ``block.state = ON_LEND[block.state]``.
ON_LEND: Final = TRANSITIONS[BlockEvent.LEND]
ON_QUARANTINE: Final = TRANSITIONS[BlockEvent.QUARANTINE]
ON_RECLAIM: Final = TRANSITIONS[BlockEvent.RECLAIM]


class ClassState:
    """A pool's bookkeeping for one size class: its free stack and block counts.

    ``reserve`` is the class's warm reserve: idle blocks decay and retain keep
    committed. It is recalibrated from the traffic (``_decay.calibrate_locked``): the
    median of the most blocks lent at once over recent active windows (``peaks``), never
    below ``base_reserve`` (what ``reserve=``/``prealloc=`` asked for). Windows without
    a lend are counted in ``quiet``, not in the median. ``window_peak`` and ``last_peak``
    (the most lent at once in this window and the one before) keep a class's recent
    peak warm on top of the median for a window or two (``_decay.keep``).
    """

    __slots__ = (
        "base_reserve",
        "cold",
        "free",
        "high_water",
        "huge",
        "idle",
        "last_peak",
        "lends",
        "lends_seen",
        "lent",
        "minor",
        "peaks",
        "quarantined",
        "quiet",
        "recent_lends",
        "reserve",
        "size",
        "window_peak",
    )

    def __init__(self, size: int, reserve: int) -> None:
        self.size = size
        self.free: list[Block] = []  # a stack: the most recently returned block on top
        self.lent = 0
        self.idle = 0
        self.quarantined = 0
        self.high_water = 0
        self.reserve = reserve
        self.base_reserve = reserve
        self.window_peak = 0  # the most lent at once since the last calibration
        self.last_peak = 0  # ... in the window before that one
        self.peaks: deque[int] = deque(maxlen=CALIBRATION_WINDOWS)
        self.quiet = 0  # windows in a row without a lend
        # keeps nothing warm beyond base_reserve now: its idle blocks go back at the next
        # pass (huge, or lent too seldom: SlabPool keep_huge_warm and warm_rate)
        self.cold = False
        self.huge = False  # in huge pages, and the pool keeps no huge block warm
        # lends that asked for this class since the pool began (a lend that stretched
        # into a larger class counts here, not there: the rate is the traffic's)
        self.lends = 0
        self.lends_seen = 0  # ... at the last calibration
        # lends per active window over the same windows as ``peaks``, and whether they
        # are under the pool's warm_share of all its lends then (a minor class keeps no
        # calibrated reserve: retain alone keeps its idle blocks warm or not)
        self.recent_lends: deque[int] = deque(maxlen=CALIBRATION_WINDOWS)
        self.minor = False


class Slab:
    """One mapping cut into ``nblocks`` blocks of one class (``cls``), or one huge block
    (``cls is None``)."""

    __slots__ = ("addr", "blocks", "buf", "cls", "huge_end", "idle", "mapped", "nblocks", "size")

    def __init__(
        self,
        cls: ClassState | None,
        block_size: int,
        nblocks: int,
        backing: Backing,
        huge_pages: bool = False,
    ) -> None:
        self.cls = cls
        self.size = block_size * nblocks
        self.nblocks = nblocks
        self.buf: mmap.mmap | bytearray
        self.huge_end = 0  # the slab's first bytes that are in huge pages
        if backing == "mmap":
            # the whole huge pages of the slab, from its start
            whole = self.size // HUGE_PAGE * HUGE_PAGE if huge_pages else 0
            length = self.size
            if whole and _MADV_HUGEPAGE is not None:
                # Linux (6.7 on) places an anonymous mapping whose length is a whole
                # number of huge pages on a huge-page boundary; a 3 MiB slab mapped as
                # 3 MiB rarely starts on one, and then no 2 MiB span of it can be a huge
                # page. Mapped as 4 MiB, its first 2 MiB are one; the last MiB of address
                # space past the slab is never touched, so it costs no memory.
                length = -(-self.size // HUGE_PAGE) * HUGE_PAGE
            self.buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if whole and _MADV_HUGEPAGE is not None:
                # one fault and one kernel clear per 2 MiB instead of 512 faults; only
                # the whole huge pages: past them a huge page would commit up to 2 MiB
                # for a body that touches a few KiB of the slab's last part
                with contextlib.suppress(OSError):  # THP "never": the kernel refuses
                    self.buf.madvise(_MADV_HUGEPAGE, 0, whole)
                    self.huge_end = whole if thp_available() else 0
        else:
            self.buf = bytearray(self.size)
        probe = ctypes.c_char.from_buffer(self.buf)
        self.addr = ctypes.addressof(probe)
        del probe
        self.idle = nblocks
        self.mapped = True
        self.blocks = [Block(self, i * block_size, block_size) for i in range(nblocks)]

    def prefault(self) -> None:
        """Commit every page now (write zeroes over the whole slab)."""
        ctypes.memset(self.addr, 0, self.size)

    def unmap(self) -> None:
        """Drop the blocks' carriers (each holds an export), then the mapping. Raises
        ``BufferError`` when a carrier is still alive elsewhere."""
        for block in self.blocks:
            block.carrier = None
        self.mapped = False
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        else:
            self.buf = bytearray()


class Block:
    """One block of a slab, as lent to an arena.

    ``view`` is a writable ``memoryview`` over the whole block while it is lent; the
    borrower slices it and must not keep any view past :meth:`SlabPool.give_back`.
    ``used`` is how many leading bytes the borrower may have written (for scrubbing).
    """

    __slots__ = (
        "baseline",
        "carrier",
        "committed",
        "fresh",
        "idle_since",
        "offset",
        "scrub",
        "size",
        "slab",
        "state",
        "used",
        "view",
    )

    def __init__(self, slab: Slab, offset: int, size: int) -> None:
        self.slab = slab
        self.offset = offset
        self.size = size
        self.state = IDLE
        self.idle_since = 0.0
        self.committed = False
        self.fresh = False  # lent with its pages given back (or never touched)
        self.used = 0
        self.scrub = False
        self.view: memoryview | None = None
        # the ctypes array every view of a lend derives from (see the module docs),
        # and its reference count while no view of it is alive
        self.carrier: ctypes.Array[ctypes.c_char] | None = None
        self.baseline = 0

    def __repr__(self) -> str:
        return f"<Block {format_size(self.size)} at +{self.offset} {self.state.name.lower()}>"

    def zero_used(self) -> None:
        """Zero the bytes a borrower may have written."""
        if self.used:
            ctypes.memset(self.slab.addr + self.offset, 0, self.used)

    def populate(self, nbytes: int) -> int:
        """Fault this lent block's first ``nbytes`` in now, in one
        ``madvise(MADV_POPULATE_WRITE)``; the bytes populated (0 when not done).

        For a block lent :attr:`fresh` that is about to be filled: the kernel then
        clears and maps its pages in one pass instead of taking one trap per 4 KiB page
        as the fill first touches each (on this machine a cold 1 MiB allocation and
        fill took two thirds of the time: ``benchmarks/cold_lend.py``). The pages are
        the ones the fill would commit anyway. The part in huge pages is left to the
        fill: one fault per 2 MiB leaves no trap to save. Does nothing for a
        ``bytearray`` slab, or where the kernel lacks the advice (older than 5.14; it
        is then not asked again). A failure to populate (no memory to spare) leaves the
        pages to fault in as they would have.
        """
        global _populate_works  # one flag per process, set once
        buf = self.slab.buf
        if not _populate_works or not isinstance(buf, mmap.mmap):
            return 0
        nbytes = min(nbytes, self.size)
        start = self.offset // PAGE * PAGE
        end = -(-(self.offset + nbytes) // PAGE) * PAGE
        huge_end = self.slab.huge_end
        if start < huge_end:  # huge pages fault in at one fault per 2 MiB already
            start = huge_end
            if start >= end:
                return 0
        try:
            buf.madvise(_MADV_POPULATE_WRITE, start, end - start)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the kernel does not know the advice
                _populate_works = False
            return 0
        return end - start

    def decommit(self) -> int:
        """Give this idle block's whole pages back to the OS (``MADV_DONTNEED``); the
        bytes returned (0 for a ``bytearray`` slab)."""
        self.committed = False
        buf = self.slab.buf
        if not isinstance(buf, mmap.mmap):
            return 0
        start = -(-self.offset // PAGE) * PAGE
        end = (self.offset + self.size) // PAGE * PAGE
        if end <= start:
            return 0
        buf.madvise(mmap.MADV_DONTNEED, start, end - start)
        return end - start


def arm(block: Block) -> ctypes.Array[ctypes.c_char]:
    """Give a block its carrier and record the carrier's baseline reference count."""
    block.carrier = _carrier_type(block.size, cache=block.slab.cls is not None).from_buffer(
        block.slab.buf, block.offset
    )
    # No view exists yet and no local holds the carrier: the same expression in
    # escaped() counts the same temporaries, so equal counts mean no view is alive.
    block.baseline = _getrefcount(block.carrier)
    return block.carrier


def escaped(block: Block) -> bool:
    """True when a view of the block's current lend is still alive (root released)."""
    return _getrefcount(block.carrier) > block.baseline


def detach_carrier(block: Block, on_death: Callable[..., object], *args: object) -> None:
    """Drop an escaped block's carrier; ``on_death(*args)`` runs when its last view
    dies (perhaps at once, in any thread)."""
    carrier = block.carrier
    assert carrier is not None
    block.carrier = None  # the next lend gets a fresh one
    weakref.finalize(carrier, on_death, *args)


_CARRIERS: dict[int, type[ctypes.Array[ctypes.c_char]]] = {}


def _carrier_type(size: int, *, cache: bool = True) -> type[ctypes.Array[ctypes.c_char]]:
    """A ctypes char-array type of ``size`` bytes that supports weak references.

    Size classes are few, so their types are cached. Huge sizes are not: defining the
    array through ``_type_``/``_length_`` bypasses ctypes' own unbounded cache of
    ``c_char * n`` types as well.
    """
    carrier = _CARRIERS.get(size)
    if carrier is None:
        namespace = {"_type_": ctypes.c_char, "_length_": size, "__slots__": ("__weakref__",)}
        metaclass: Any = type(ctypes.Array)
        carrier = metaclass(f"_Carrier{size}", (ctypes.Array,), namespace)
        if cache:
            _CARRIERS[size] = carrier
    return carrier
