"""Large blocks of ``PyMem_Malloc`` from a region of arenapool's own: a decoder's work
buffer reused warm, and given back above a bound.

Theory of operation
-------------------
The largest transient allocation of a JSON request is the decoder's work buffer, not the
body: orjson (3.x, its yyjson backend) takes ``PyMem_Malloc`` of about 12 times the
document on every ``loads`` and frees it before returning, after touching about 3-4
times the document (the document's copy and the parsed values; the figures are measured
by ``benchmarks/decoders.py``). glibc serves such a block from its main heap, where the
freed pages stay resident until somebody trims (under load, 5-12 MiB of a server's RSS in
the 4-minute soaks of ``benchmarks/README.md``), or, above its mmap threshold (32 MiB
at most: a 2.7 MiB document's buffer), from a fresh mapping that faults in page by page
on every call.

:func:`install` puts a front in CPython's ``PYMEM_DOMAIN_MEM`` (``PyMem_SetAllocator``,
the public hook). Blocks of at least ``min_size`` bytes come from one region of address
space reserved once (``MAP_NORESERVE``: nothing is committed until touched), first fit
from its lowest address. Buffers that come and go one at a time, as a decoder's do, so
land where the last one was and find its pages warm: no fault, no zeroing (in 4 KiB
pages, or in transparent huge pages with ``install(huge_pages=True)``). When a block
is freed, the part of it that lies above ``warm`` bytes into the region is given back at
once (``madvise(MADV_DONTNEED)``); the part below stays. So between requests the region
holds at most ``warm`` bytes, whatever the largest document was; a document whose buffer
reaches past ``warm`` faults in that part as it would in a fresh mapping.
:func:`release` gives back the free pages below ``warm`` too: arenapool's governor calls
it when the server goes idle, so RSS comes down after a burst.

Everything else goes to the allocator underneath, untouched: smaller blocks, ``calloc``
(a list's item array, which may live long), ``realloc`` of blocks that are not the
region's, and a block the region has no room for. A block is the region's exactly when
its address lies in it, one comparison on each ``PyMem_Free``.

Where it can run: CPython with the compiled ``arenapool._blockcache_c`` (pure-Python
installs and ``ARENAPOOL_NO_EXTENSIONS=1`` have none), and not while ``tracemalloc``
traces: ``tracemalloc.stop()`` puts back the allocator it found at its start, which
would drop this front with blocks of the region still alive. (``tracemalloc`` started
afterwards wraps the front and puts it back when it stops; that is safe.) Once
installed the front stays for the life of the process; :func:`install` with another
``warm`` or ``min_size`` changes the bounds, and ``min_size`` of :data:`OFF` makes it a
pass-through for new blocks. :func:`status` says why it cannot run, when it cannot.
"""

from __future__ import annotations

import dataclasses
import sys
import tracemalloc
from dataclasses import dataclass
from types import ModuleType
from typing import Final

from ._ext import NO_EXTENSIONS, c_module

__all__ = ["OFF", "BlockCacheStats", "install", "release", "stats", "status"]

#: The region's size: address space only, reserved once (nothing is committed until a
#: block touches it). A block that does not fit goes to the allocator underneath.
REGION: Final = 1 << 30
#: The smallest block the region serves by default: below it glibc's heap serves well.
DEFAULT_MIN_SIZE: Final = 256 * 1024
#: A ``min_size`` no block reaches: the front passes every new block through.
OFF: Final = REGION


@dataclass(frozen=True)
class BlockCacheStats:
    """The front's state and counters (all zero before :func:`install`).

    ``in_use``: bytes of blocks alive in the region now; ``peak``: the most at once;
    ``resident``: the region's pages resident now (``mincore``); ``served``: blocks the
    region handed out; ``passed``: blocks of at least ``min_size`` it had no room for
    (they went to the allocator underneath); ``freed``: blocks given back to it;
    ``given_back``: bytes of freed blocks' pages returned to the OS (above ``warm`` as
    they were freed, and by :func:`release`); ``huge_pages``: whether the region is in
    transparent huge pages (then ``warm`` is a whole number of them, and a freed block
    gives back whole ones); ``over_warm``: freed blocks that had pages in use above
    ``warm`` (counted in 4 KiB pages only: not with ``huge_pages``), and
    ``over_warm_bytes`` those pages' bytes, read with ``mincore`` just before they were
    given back: what the blocks that reach past the bound fault in again each time. A
    bound that fits the traffic keeps both low; their rate against ``freed`` says how
    often, and how far, the traffic's decodes reach past it.
    """

    available: bool
    reason: str | None
    installed: bool
    min_size: int
    warm: int
    region: int
    in_use: int
    peak: int
    resident: int
    served: int
    passed: int
    freed: int
    given_back: int
    huge_pages: bool
    over_warm: int = 0
    over_warm_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


#: Why the region could not be reserved, once that was tried and failed (an address
#: space limit, ``ulimit -v``, or strict overcommit, which counts even ``MAP_NORESERVE``).
_failed: str | None = None


def _compiled() -> ModuleType | None:
    return c_module("arenapool._blockcache_c")


def status() -> str | None:
    """Why this process cannot serve large blocks from the region, or ``None`` when it
    can (or already does)."""
    if sys.implementation.name != "cpython":
        return f"needs CPython (this is {sys.implementation.name})"
    module = _compiled()
    if module is None:
        why = "ARENAPOOL_NO_EXTENSIONS is set" if NO_EXTENSIONS else "it was not built"
        return f"needs the compiled arenapool._blockcache_c ({why})"
    if module.installed():
        return None
    if _failed is not None:
        return _failed
    if tracemalloc.is_tracing():
        return "tracemalloc is tracing (its stop() would drop the front; install first)"
    return None


def install(warm: int, *, min_size: int = DEFAULT_MIN_SIZE, huge_pages: bool = False) -> bool:
    """Serve ``PyMem_Malloc`` blocks of at least ``min_size`` bytes from the region,
    keeping the pages of freed ones warm up to ``warm`` bytes into it (both rounded up to
    whole pages); installs the front the first time, later calls change the bounds.

    ``huge_pages`` backs the region with transparent huge pages where the kernel allows
    them (THP mode ``madvise`` or ``always``; :attr:`BlockCacheStats.huge_pages` says
    whether it took): ``warm`` is then rounded up to whole 2 MiB pages, a freed block
    gives back the whole huge pages of the free space around it (a huge page split by a
    partial ``madvise`` would fault back in 4 KiB at a time), and what lies above
    ``warm`` faults back in 2 MiB at a time. A huge page is resident whole once any byte
    of it is touched, and a decoder touches its buffer sparsely: more RSS for fewer
    faults, so it is off by default.

    Returns False, changing nothing, where :func:`status` says it cannot run. Raises
    ``ValueError`` for ``warm`` outside 0 to the region's size or ``min_size`` below a
    page or above :data:`OFF`.
    """
    if not 0 <= warm <= REGION:
        msg = f"warm must be 0 to {REGION} bytes, got {warm}"
        raise ValueError(msg)
    if not 4096 <= min_size <= OFF:
        msg = f"min_size must be 4096 to {OFF} bytes, got {min_size}"
        raise ValueError(msg)
    global _failed  # set once, when the region cannot be reserved
    module = _compiled()
    if module is None or status() is not None:
        return False
    try:
        module.install(min_size, REGION, warm, huge_pages)
    except OSError as exc:
        _failed = f"could not reserve the region ({exc.strerror or exc})"
        return False
    release(keep=warm)  # a lower bound than before: what lies above it goes now
    return True


def release(*, keep: int = 0) -> int:
    """Give back the pages of the region's free space above ``keep`` bytes into it
    (0: all of them; blocks alive keep theirs). Returns the bytes of address range
    advised away (0 where there is no front). Call it with the GIL held, as any Python
    code is; it takes one ``madvise`` per free extent that was touched."""
    if keep < 0:
        msg = f"keep must not be negative, got {keep!r}"
        raise ValueError(msg)
    module = _compiled()
    if module is None:
        return 0
    return int(module.release(keep))


@dataclass(frozen=True)
class Spread:
    """Where the pages in use that freed blocks gave back lay (:func:`take_spread`).

    ``freed``: blocks given back to the region, ever (as :attr:`BlockCacheStats.freed`);
    ``warm``: the bound now; ``by_mib``: the bytes of pages in use above the bound that
    freed blocks gave back since the last :func:`take_spread`, by MiB of the region
    (``by_mib[k]``: those between ``k`` and ``k + 1`` MiB into it; the 256th takes
    everything past it; empty when none). The bytes of the buckets at and above a bound
    are what that bound would have given back in use over the same blocks, for any bound
    at or above the one they were freed under."""

    freed: int
    warm: int
    by_mib: tuple[int, ...]


def take_spread() -> Spread:
    """The counts of :class:`Spread` since the last call, which it resets: each caller's
    window starts at its last call. Counters only (cheaper than :func:`stats`, which
    reads the region's resident pages with ``mincore``). 4 KiB pages only, as
    :attr:`BlockCacheStats.over_warm`; where there is no front, nothing."""
    module = _compiled()
    if module is None:
        return Spread(0, 0, ())
    freed, warm, by_mib = module.take_spread()
    return Spread(int(freed), int(warm), tuple(by_mib))


def stats() -> BlockCacheStats:
    """The front's state and counters now."""
    reason = status()
    module = _compiled()
    if module is None:
        return BlockCacheStats(False, reason, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, False)
    (
        installed,
        min_size,
        warm,
        region,
        in_use,
        peak,
        resident,
        served,
        passed,
        freed,
        given,
        grain,
        over,
        over_bytes,
    ) = module.stats()
    return BlockCacheStats(
        reason is None,
        reason,
        bool(installed),
        int(min_size),
        int(warm),
        int(region),
        int(in_use),
        int(peak),
        int(resident),
        int(served),
        int(passed),
        int(freed),
        int(given),
        grain > 4096,
        int(over),
        int(over_bytes),
    )
