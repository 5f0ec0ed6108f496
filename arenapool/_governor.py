"""The memory governor: give memory back when idle, shed load past a watermark.

Theory of operation
-------------------
State (touched only from the event loop's thread): the number of requests in flight
and when the last one ended (fed by an adapter through :meth:`Governor.note_request_start`
and :meth:`Governor.note_request_end`, or read at each check from the adapter's own
counters, :meth:`Governor.count_requests`), the ``shedding`` flag, counters, a ring of
recent actions, and the *reclaim floor*: the C heap's free bytes plus the pools' idle
bytes right after the last trim, lowered whenever a reading comes in under it.

One background task wakes every ``interval`` seconds, takes a reading of what the rules
below compare (RSS, the C heap's free bytes, the pools' idle bytes, the heap's resident
bytes after a trim, and of the container its PSI, or all of it when its limit or
working set is compared: not a whole ``arenapool.memory.snapshot()``) and applies these
rules, in order, to *level*: the process's RSS, or, when the watermarks come from the
container's cgroup limit, the container's working set (its usage minus inactive file
cache, as the kubelet counts it: ``arenapool._container``). Workers that share a
container each stay under a watermark on their own RSS while their sum passes the
limit; read on the container, all of them see the same level and shed together::

    level >= hard                  -> shedding = True (logged once per episode)
    PSI full avg10 >= pressure_shed-> shedding = True (off unless configured)
    shedding and level < soft and
      PSI under pressure_shed      -> shedding = False
    level >= soft                  -> trim, at most once per trim_cooldown, if
                                      reclaimable >= 1 MiB
    PSI some avg10 >= pressure_trim-> the same trim, earlier: reclaim is already
                                      stalling tasks before usage reaches soft
    idle and reclaimable > thresh  -> trim (also when the last trim was a busy one that
                                      left more than thresh of idle blocks warm)
    reclaimable >= busy threshold
      and the back-off allows
      (idle, or busy while no pool's
      traffic is spread)           -> trim, busy or idle (arenapool._trimpolicy: each
                                      trim's yield and time; one that does not pay
                                      doubles the wait, up to busy_trim_max_interval;
                                      nor does one whose return the next reading finds
                                      resident again, net of it under trim_min_yield;
                                      what comes back of a trim is the free heap's
                                      swing, which reclaimable must then also pass
                                      for busy_trim_max_interval).
                                      Busy (not idle: a request in flight or one
                                      ended within idle_after), only the free C heap
                                      counts, and the pools, the arena cache and the
                                      large-block region give back only what sat idle
                                      past their decay: what the traffic reuses stays
                                      committed, between two requests too.
    heap_trim_every set, not idle,
      and that long since its last -> malloc_trim(0) alone, on the loop, no reading
                                      before it (in place of the busy trims above)
    spread_trim_every set (the
      default, 1 s), not idle, a
      pool's traffic spread over
      sizes (SlabPool.spread), and
      that long since its last     -> the same call, in place of the busy trims

Every trim's yield from glibc's main heap (its resident pages before and after, by
``mincore``: :func:`arenapool.memory.heap_resident`) is counted by reason, and so is
how much of it the next reading finds resident again: a trim under steady load whose
pages the traffic faults straight back in shows as ``back`` close to ``judged`` (the
returned bytes of the trims a reading has looked at) in :meth:`Governor.stats`'s
``heap_returns``.

With the limit from the cgroup, it is read again at every tick, so the watermarks follow
a container resized in place.

where *idle* means nothing in flight for ``idle_after`` seconds (timed from the reading
that first sees the last request's end: the request path reads no clock, so idleness is
known to within one ``interval``) and *reclaimable* is
how far free heap plus idle slab bytes have grown above the floor (zero before the
first trim, so memory already free at start counts). Measuring growth
instead of the level matters: ``malloc_trim`` returns free pages with
``MADV_DONTNEED`` but glibc still counts them free, so a level test would trim on
every tick forever. The soft/hard gap is the hysteresis that keeps shedding from
flapping (Envoy's overload manager keeps the same two thresholds per resource).

A trim runs ``pool.trim()`` and ``malloc_trim(0)`` on the event loop, one trim at a
time, as the hand-written trim task of aiohttp issue #11043 does. A worker thread
(``GovernorConfig.trim_in_thread``) would keep the loop serving during a long trim,
but a process that has started a thread pays for it on every ``malloc`` and ``free``
from then on (glibc takes its arena's lock; 1-2% of the CPU of a 1 MiB JSON
request here, see :mod:`arenapool._ticks`). A large trim holds the loop for a while:
the one that returned a 200 MiB burst took 22 ms on the loop here
(``pytest tests/test_governor.py -s -k burst`` prints it).
This module imports no web framework; ``arenapool.aiohttp`` adapts it to aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

from . import _registry
from ._arenacache import MAX_LIMIT as ARENA_CACHE_MAX
from ._arenacache import install as install_arena_cache
from ._arenacache import release as release_arenas
from ._arenacache import stats as arena_cache_stats
from ._arenacache import status as arena_cache_status
from ._blockcache import OFF as BLOCK_CACHE_OFF
from ._blockcache import REGION as BLOCK_REGION
from ._blockcache import install as install_block_cache
from ._blockcache import release as release_blocks
from ._blockcache import stats as block_cache_stats
from ._blockcache import status as block_cache_status
from ._blockcache import take_spread as block_cache_spread
from ._container import Cgroup, ContainerMemory, Pressure, find_cgroup
from ._errors import InvalidSize
from ._memory import (
    CPYTHON_YOUNG_EVERY,
    MAX_MMAP_THRESHOLD,
    cgroup_memory_limit,
    current_rss,
    freeze_startup_objects,
    heap_info,
    heap_resident,
    hold_heap,
    libc_single_threaded,
    malloc_trim,
    set_mmap_threshold,
    space_full_collections,
    space_young_collections,
)
from ._pymalloc import release_free_pools
from ._pymalloc import status as pymalloc_status
from ._trimpolicy import TrimPolicy
from ._units import format_size, parse_size

if TYPE_CHECKING:
    from ._slabpool import SlabPool

__all__ = ["Governor", "GovernorConfig", "GovernorSpec", "TrimResult", "trim_now"]

log = logging.getLogger("arenapool.governor")

#: Under the soft watermark a trim is retried only once this much became free again.
_MIN_SOFT_RECLAIM = 1024 * 1024

#: GovernorConfig.block_cache_fit: the region's warm bound moves in whole MiB, and not
#: below one; a judgement needs this many freed blocks; after a step down that went too
#: far, the next one waits twice as long as the last such wait, up to this many
#: block_cache_fit_hold
_FIT_STEP = 1024 * 1024
_FIT_FLOOR = 1024 * 1024
_FIT_MIN_FREED = 20
_FIT_MAX_WAIT_HOLDS = 16


PoolsSource = Iterable["SlabPool"] | Callable[[], Iterable["SlabPool"]] | None
LimitSource = Literal["config", "cgroup"] | None
Watch = Literal["auto", "process", "container"]

#: the default of GovernorConfig.cgroup_root: the container is found from /proc then
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class _HeapReturns:
    """One trim reason's yield from the main heap (``Governor.stats()["heap_returns"]``):
    its trims, the bytes they gave back, the part of those a later reading has looked at
    (``judged``), and of that, the bytes resident again at that reading (``back``)."""

    trims: int = 0
    returned: int = 0
    judged: int = 0
    back: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "trims": self.trims,
            "returned_bytes": self.returned,
            "judged_bytes": self.judged,
            "back_bytes": self.back,
        }


class TrimResult(TypedDict):
    """What a trim did: RSS before and after (``freed`` is the drop the OS saw), its
    wall time, whether ``malloc_trim`` returned memory, the bytes each pool says it
    returned, the bytes of pymalloc's empty pools given back (``pymalloc``; 0 when
    not asked for or not possible here, see :func:`arenapool.memory.release_pymalloc`),
    the bytes of cached pymalloc arenas given back (``arenas``, see
    :func:`arenapool.memory.release_pymalloc_arenas`), and the bytes of the large-block
    region's free address range advised away (``blocks``, see
    :func:`arenapool.memory.release_large_blocks`; 0 in a busy trim), and glibc's main
    heap's resident bytes before and after (``heap_before``, ``heap_after``, from
    :func:`arenapool.memory.heap_resident`; ``None`` off glibc).
    """

    rss_before: int
    rss_after: int
    freed: int
    seconds: float
    malloc_trim: bool
    pools: dict[str, int]
    pymalloc: int
    arenas: int
    blocks: int
    heap_before: int | None
    heap_after: int | None


@dataclass(frozen=True)
class GovernorConfig:
    """How the :class:`Governor` watches and acts. Sizes accept ints or ``"64MiB"``.

    Watermarks apply to RSS. Explicit ``soft_limit``/``hard_limit`` win; when neither
    is set and ``use_cgroup`` is on, they default to ``soft_fraction`` and
    ``hard_fraction`` of the cgroup memory limit; with neither, watermarks are off and
    the governor only trims when idle. With only ``hard_limit`` set, soft is derived
    from it by the ratio of the two fractions.
    """

    interval: float = 1.0
    """Seconds between readings."""
    idle_after: float = 2.0
    """Seconds with nothing in flight before the server counts as idle (timed from the
    reading that first sees the last request end, so up to one ``interval`` more)."""
    trim_threshold: int | str = "1MiB"
    """Growth since the last trim that makes an idle trim worth it: of the reclaimable
    memory (free C heap + idle slabs), or of RSS itself (free heap that a trim returned
    and requests touched again is resident once more, but glibc counted it as free all
    along). Low by default: an idle server has the time, and what a burst's last
    requests free after the first idle trim would otherwise stay resident until the next
    burst."""
    soft_limit: int | str | None = None
    """RSS at which the governor trims at once, busy or not."""
    hard_limit: int | str | None = None
    """RSS at which it starts shedding requests that carry a body (until under soft)."""
    soft_fraction: float = 0.8
    hard_fraction: float = 0.9
    use_cgroup: bool = True
    cgroup_root: str = DEFAULT_CGROUP_ROOT
    """A cgroup directory to read ``memory.max`` from instead of finding the process's
    own cgroup (then the watermarks apply to RSS)."""
    container_root: str = "/"
    """Where ``/proc`` and ``/sys`` are read from when finding the container (tests)."""
    watch: Watch = "auto"
    """What the watermarks compare: ``"process"`` RSS, the ``"container"``'s working set,
    or ``"auto"``: the container when the watermarks come from its cgroup limit."""
    pressure_trim: float | None = 10.0
    """PSI ``some avg10`` (percent of time stalled on memory) at which to trim even under
    the soft watermark; ``None``: ignore pressure."""
    pressure_shed: float | None = None
    """PSI ``full avg10`` at which to shed as past the hard watermark (off by default)."""
    trim_cooldown: float = 5.0
    """Least seconds between two trims forced by the soft watermark."""
    retry_after: float = 2.0
    """The ``Retry-After`` (seconds) a shed request is told."""
    history: int = 50
    """How many recent actions :meth:`Governor.stats` keeps."""
    busy_trim_threshold: int | str | None = "2MiB"
    """Reclaimable growth that makes a trim worth it under load too (``None``: trim only
    when idle or past the soft watermark). See :mod:`arenapool._trimpolicy`. A busy trim
    returns free C heap and keeps what the traffic reuses warm, so it is cheap enough to
    come often: in the issue's 12-minute soak 2 MiB held 0.903x and 0.908x the trim
    loop's median RSS (two runs) against 0.915x for 4 MiB and 0.931x for 8 MiB, with
    1.008-1.017x its requests (benchmarks/README.md, "Busy between two requests")."""
    busy_trim_interval: float = 1.0
    """Least seconds between two busy trims while trims pay."""
    busy_trim_max_interval: float = 32.0
    """Most seconds between busy trims: each trim that does not pay doubles the wait."""
    trim_min_yield: int | str = "1MiB"
    """A trim that returns less than this to the OS did not pay (the busy trims back off),
    nor did one whose return, less what the next reading finds resident again in the
    heap, is under it (the traffic took those pages straight back: ``revoked`` in
    ``stats()["busy_trim"]``, unless ``settle_busy_trims`` is False)."""
    settle_busy_trims: bool = True
    """Judge each trim of the busy-trim policy again at the next reading: one whose return
    the heap holds again, net of it under ``trim_min_yield``, is revoked and backs off
    (:meth:`arenapool._trimpolicy.TrimPolicy.settle`). False judges a trim only by the
    RSS drop right after it, as before 2026-12-06: under a steady stream of one size the
    busy trims then come every few seconds, each one's pages faulted straight back in
    (benchmarks/README.md, "Nine rounds a cell, and busy trims settled one reading
    on")."""
    busy_trim_swing: bool = True
    """Learn the free heap's swing from the busy trims (what the next reading finds
    resident again of a trim's return): for ``busy_trim_max_interval`` after, a busy
    trim needs the free heap past its floor by ``busy_trim_threshold`` plus the largest
    such return, at two readings in a row (:class:`arenapool._trimpolicy.TrimPolicy`,
    ``swing``). False: the threshold and the back-off alone, as before 2026-12-07. Needs
    ``settle_busy_trims``: the swing is measured when a trim is settled."""
    heap_trim_every: float | None = None
    """Under load, call glibc's ``malloc_trim(0)`` every this many seconds on the event
    loop (``None``: off), with no reading before it and one count of the main heap's
    resident pages after it (about 70 us, :func:`arenapool.memory.heap_resident`): the
    once-a-second trim that users write by hand (aiohttp issue #11043), inside the
    governor. It takes the place of the busy trims: with it set, ``busy_trim_threshold``
    is not used and glibc's thresholds stay dynamic (no ``hold_heap``). The pools' idle
    blocks, the caches and pymalloc's pools are left to their own decay and to the idle
    trim. Each call runs on the loop, as the hand-written task's does
    (:meth:`Governor.stats`'s ``heap_trims`` counts the calls and the seconds they took,
    and ``heap_returns["heap"]`` what they gave back and what came back)."""
    spread_trim_every: float | None = 1.0
    """While the traffic is spread over body sizes (a slab pool's :attr:`SlabPool.spread`:
    no size class took half of its recent lends), call ``malloc_trim(0)`` every this
    many seconds under load, on the event loop, in place of the busy trims (``None``:
    the busy trims whatever the traffic); the heap stays held (``hold_heap``). Under a
    spread of sizes the busy rule lets the freed heap sit: in the issue's 12-minute
    soak the trim every second held 1.6-2.0 MB less median RSS than the busy trims
    beside it, for the same requests (0.872-0.899x the trim loop's in six runs). Under
    one steady size the busy trims stay: the next body of that size takes again what
    the last one freed, and a trim every second only makes it fault those pages in
    (at 1 MiB, 26.8 faults per request against the busy trims' 16.2 and plain
    orjson's 27.9). benchmarks/README.md, "The heap trimmed every second while the
    sizes are spread". ``heap_trim_every`` takes precedence. The calls are counted in
    :meth:`Governor.stats`'s ``heap_trims`` (``spread_count``; ``spread``: whether the
    last reading found a pool's sizes spread) and what they gave back in
    ``heap_returns["spread"]``."""
    trim_in_thread: bool = False
    """Run each trim (:meth:`Governor.trim`: busy, idle, watermark, pressure, admin) in
    the loop's default executor, a worker thread, instead of on the loop. A trim on the
    loop holds it while ``malloc_trim`` walks the heap: 22 ms here for the trim that
    returned a 200 MiB burst (``tests/test_governor.py -s``). A thread frees the loop
    meanwhile, but once a process has started one, glibc's ``malloc`` and ``free``
    take their arena's lock on every call for the rest of its life: at 1 MiB JSON
    bodies here that was 1.3-1.7% of the request (``benchmarks/cpu_split.py``;
    benchmarks/README.md, "No threads while serving"). Turn it on for a heap so large
    that a trim would hold a request waiting behind it for longer than that costs. The
    thread, once started, affects the whole process."""
    hold_heap: bool = True
    """Hold the C heap while the governor trims under load: when it starts (with
    ``busy_trim_threshold`` set, no ``heap_trim_every`` and no ``mmap_threshold``), pin
    glibc's thresholds so that ``free()`` never gives memory back on the request path and
    large buffers come from the warm heap; the governor's trims return what is free, on
    their schedule (see :func:`arenapool.memory.hold_heap`). Process-wide."""
    release_pymalloc: bool = True
    """Give back the pages of pymalloc's empty pools, which CPython keeps resident for as
    long as one object lives in their arena: once each time the server goes idle (after
    ``idle_after``), and in every trim that is not under load (idle, soft watermark,
    pressure, on demand). CPython 3.11 with its symbol table and the compiled build;
    elsewhere a no-op, and :meth:`Governor.stats`'s ``pymalloc_release`` says why (see
    :func:`arenapool.memory.release_pymalloc`)."""
    arena_cache: int | str | None = "32MiB"
    """Keep up to this many bytes of the arenas pymalloc frees, for it to take again
    (``None``: no cache). pymalloc unmaps an arena when its last object dies, so a
    request that decodes a large document maps, faults in and unmaps megabytes of small
    objects' arenas every time; cached, the next one reuses them warm. The governor
    gives back cached arenas idle longer than ``arena_cache_decay`` as it runs, and all
    of them when the server goes idle or a trim is not a busy one. Process-wide; needs
    the compiled build (:meth:`Governor.stats`'s ``arena_cache`` says why when it is
    off; see :func:`arenapool.memory.cache_pymalloc_arenas`)."""
    arena_cache_decay: float = 10.0
    """Seconds a cached pymalloc arena may stay unused under load before it is given
    back."""
    block_cache: int | str | None = "16MiB"
    """Serve ``PyMem_Malloc``'s blocks of ``block_cache_min`` or more (a JSON decoder's
    work buffer: orjson's is about 12 times the document) from a region of arenapool's
    own, keeping the pages of freed ones warm up to this many bytes into it and giving
    back the rest as each block is freed (``None``: glibc serves them). Under load a
    decoder's buffers then reuse the same warm pages instead of faulting in fresh ones
    or sitting in the heap until a trim; the governor gives back the warm part too when
    the server goes idle or a trim is not a busy one. Process-wide; needs the compiled
    build and is not installed while ``tracemalloc`` traces (:meth:`Governor.stats`'s
    ``block_cache`` says why when it is off; see
    :func:`arenapool.memory.cache_large_blocks`)."""
    block_cache_min: int | str = "256KiB"
    """The smallest ``PyMem_Malloc`` block the region serves (``block_cache``)."""
    block_cache_huge_pages: bool = False
    """Back the region with transparent huge pages where the kernel allows them (THP mode
    ``madvise`` or ``always``): a buffer then faults in 2 MiB at a time, so the pages
    given back above ``block_cache`` come back at a fraction of the faults, and
    ``block_cache`` is rounded up to a whole number of huge pages. Off by default: a
    huge page is resident whole once any byte of it is touched, and a decoder touches
    its buffer sparsely (see :func:`arenapool.memory.cache_large_blocks`)."""
    block_cache_spread: int | str | None = "3MiB"
    """While a pool's traffic is spread over body sizes (:attr:`SlabPool.spread`, as for
    ``spread_trim_every``), the region keeps at most this many bytes warm, or
    ``block_cache`` if that is less; under one steady size the bound is ``block_cache``
    again (``None``: ``block_cache`` whatever the traffic). Under a spread, the pages
    that the larger documents' buffers reach stay resident for all the others; with the
    lower bound, a decode that reaches past it faults its pages there in again
    (``over_warm``). The decoder touches its buffer sparsely, so that is a good share
    of the decodes, not only the largest documents: in three 12-minute soaks of mixed
    bodies the bound took 1.10-1.23 MB off the median RSS for 2.5-4.4% of the requests
    and 17.5-17.8 more page faults per request. Under one steady size every decode
    would reach as far, and a low bound would fault that much in on every one, so there
    the bound stays. It moves at the governor's checks, at most once each; the moves
    are counted in :meth:`Governor.stats`'s ``block_cache`` (``spread_moves``;
    ``spread_bound``: whether the lower bound holds now; ``spread_warm``: the lower
    bound). Not with ``block_cache_fit``, which moves the bound itself.
    benchmarks/README.md, "The region's bound under a spread of sizes"."""
    block_cache_fit: bool = False
    """Move the region's warm bound with the traffic, in whole MiB between 1 MiB and
    ``block_cache`` (the ceiling, and where the bound starts), so that it keeps warm
    what most decodes reach and the rare larger ones fault their excess in again,
    instead of the largest document's buffer staying resident for good.

    The governor judges the blocks freed over each ``block_cache_fit_hold`` (and at
    least 20 of them) by the pages in use that the region gave back above the bound
    (``over_warm_bytes`` in :func:`arenapool.memory.large_block_cache`), which the
    region counts by MiB of its address range as it frees them. Over one and a half
    times ``block_cache_fit_budget`` per freed block, the bound rises to the lowest MiB
    above which those pages come to no more (read from the counts: no trial). Within
    the budget, it steps down a MiB (by half, to no less than 1 MiB, while they come to
    under an eighth of it); between the two it stays. The next judgement says whether a
    step down went too far, and if it did the bound goes back up and the next step down
    waits twice as long as the last such wait (from ``2 * block_cache_fit_hold`` to 16
    times it). 4 KiB pages only (not with ``block_cache_huge_pages``). Off by default:
    see benchmarks/README.md, "The fit judged by where the pages lay"."""
    block_cache_fit_budget: int | str = "128KiB"
    """With ``block_cache_fit``: the bytes in use the region may give back per freed
    block, on average over a judgement (128 KiB: 32 pages faulted in again per decode
    that reaches past the bound)."""
    block_cache_fit_hold: float = 5.0
    """With ``block_cache_fit``: the least seconds a judgement covers (about a thousand
    freed blocks under the soak's load)."""
    freeze_gc: bool = True
    """At its start, collect once and freeze what the process holds then (its modules,
    the app and its routes) out of the cyclic collector's sight, once per process
    (:func:`arenapool.memory.freeze_startup_objects`): full collections then walk only
    what requests made. Frozen objects are never collected, so start the governor once
    the app is built (``arenapool.aiohttp.setup`` starts it with the app). ``False``
    leaves the collector as it is, but for ``gc_young_every``, which does not depend on
    the freeze."""
    gc_full_every: int | None = 40
    """With ``freeze_gc``: as it freezes, the governor makes full collections wait for this
    many collections of the middle generation (``gc.get_threshold()[2]``; CPython's is
    10), through :func:`arenapool.memory.space_full_collections`. After the freeze,
    CPython's own rule lets full collections come about five times as often as before
    it; at 40 they come about as often as without the freeze, and each still walks only
    what requests made. A process that set its own third threshold keeps it; ``None``
    leaves the thresholds alone."""
    gc_young_every: int | None = 10_000
    """At its start, the governor lets this many tracked objects (allocated, net of those
    freed) come between two collections of the youngest generation
    (``gc.get_threshold()[0]``; CPython's is 700, 2,000 from 3.14), through
    :func:`arenapool.memory.space_young_collections`. A request's decoded JSON is freed by
    reference counting when it ends; at 700 the collector walked the tree of a 1 MiB
    body three or four times while it was built, for nothing, and that cost the request
    far more than the collector's own time (docs/memory.md). At 10,000 a tree of up to
    about 4 MiB of the example service's JSON comes and goes unwalked, and cyclic
    garbage still waits for at most 10,000 containers, or until the server goes idle:
    then the governor collects the young and middle generations once per idle spell
    (``stats()["gc_idle_collections"]``), before it gives memory back. Independent of
    ``freeze_gc``. A process that set its own first threshold keeps it (and gets no idle
    collections); ``None`` leaves it alone."""
    gc_young_tick: bool = True
    """While it holds the raised first threshold (``gc_young_every``), the governor also
    collects the youngest generation at its check under load, when at least CPython's
    own threshold of tracked objects (700; 2,000 from 3.14) has come since the last
    collection (``stats()["gc_tick_collections"]``): cyclic garbage then waits about one
    ``interval``, not for 10,000 containers, and what it holds of the C heap goes back
    to the allocator that soon. At most one walk of the young objects a second, in place
    of three or four in every 1 MiB request. (Under the issue-11 soak's mixed load it
    moved neither the median RSS nor the C heap: benchmarks/README.md, "Faults at
    1 MiB".) False: only the threshold and the idle collection."""
    mmap_threshold: int | str | None = None
    """Pin glibc's mmap threshold here when the governor starts (``None``: leave it).

    glibc raises the threshold after every large free, so large buffers end up in the
    main heap and keep it resident; pinned, they are mapped and unmapped on their own
    (see :func:`arenapool.memory.set_mmap_threshold`). Process-wide, and off by
    default: every socket read asyncio makes (256 KiB buffers) and every large decode
    then pays for fresh pages (see docs/memory.md).
    """

    def __post_init__(self) -> None:
        for name in ("interval", "idle_after", "trim_cooldown", "retry_after", "arena_cache_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                msg = f"{name} must be zero or more seconds, got {value!r}"
                raise InvalidSize(msg, value=value)
        for name in ("heap_trim_every", "spread_trim_every"):
            every = getattr(self, name)
            if every is not None and (not isinstance(every, (int, float)) or every <= 0):
                msg = f"{name} must be None or positive seconds, got {every!r}"
                raise InvalidSize(msg, value=every)
        if self.interval <= 0:
            msg = f"interval must be positive, got {self.interval!r}"
            raise InvalidSize(msg, value=self.interval)
        if not 0 < self.soft_fraction <= self.hard_fraction <= 1:
            msg = (
                f"need 0 < soft_fraction <= hard_fraction <= 1, got "
                f"{self.soft_fraction!r} and {self.hard_fraction!r}"
            )
            raise InvalidSize(msg, value=(self.soft_fraction, self.hard_fraction))
        parse_size(self.trim_threshold, name="trim_threshold", allow_zero=True)
        if self.busy_trim_threshold is not None:
            parse_size(self.busy_trim_threshold, name="busy_trim_threshold", allow_zero=True)
        parse_size(self.trim_min_yield, name="trim_min_yield", allow_zero=True)
        if not 0 < self.busy_trim_interval <= self.busy_trim_max_interval:
            msg = (
                f"need 0 < busy_trim_interval <= busy_trim_max_interval, got "
                f"{self.busy_trim_interval!r} and {self.busy_trim_max_interval!r}"
            )
            raise InvalidSize(msg, value=(self.busy_trim_interval, self.busy_trim_max_interval))
        if self.arena_cache is not None:
            cache = parse_size(self.arena_cache, name="arena_cache", allow_zero=True)
            if cache > ARENA_CACHE_MAX:
                msg = f"arena_cache must be at most 4 GiB, got {self.arena_cache!r}"
                raise InvalidSize(msg, value=self.arena_cache)
        if self.block_cache is not None:
            warm = parse_size(self.block_cache, name="block_cache", allow_zero=True)
            if warm > BLOCK_REGION:
                msg = f"block_cache must be at most 1 GiB, got {self.block_cache!r}"
                raise InvalidSize(msg, value=self.block_cache)
        if self.block_cache_spread is not None:
            spread = parse_size(self.block_cache_spread, name="block_cache_spread", allow_zero=True)
            if spread > BLOCK_REGION:
                msg = f"block_cache_spread must be at most 1 GiB, got {self.block_cache_spread!r}"
                raise InvalidSize(msg, value=self.block_cache_spread)
        smallest = parse_size(self.block_cache_min, name="block_cache_min")
        if not 4096 <= smallest < BLOCK_CACHE_OFF:
            msg = f"block_cache_min must be 4 KiB to under 1 GiB, got {self.block_cache_min!r}"
            raise InvalidSize(msg, value=self.block_cache_min)
        if parse_size(self.block_cache_fit_budget, name="block_cache_fit_budget") <= 0:
            msg = f"block_cache_fit_budget must be positive, got {self.block_cache_fit_budget!r}"
            raise InvalidSize(msg, value=self.block_cache_fit_budget)
        if self.block_cache_fit_hold < 0:
            msg = f"block_cache_fit_hold must not be negative, got {self.block_cache_fit_hold!r}"
            raise InvalidSize(msg, value=self.block_cache_fit_hold)
        if self.mmap_threshold is not None:
            threshold = parse_size(self.mmap_threshold, name="mmap_threshold", allow_zero=True)
            if threshold > MAX_MMAP_THRESHOLD:
                msg = f"mmap_threshold must be at most 32 MiB (glibc's cap), got {threshold}"
                raise InvalidSize(msg, value=self.mmap_threshold)
        soft, hard = self._explicit_limits()
        if soft is not None and hard is not None and soft > hard:
            msg = (
                f"soft_limit ({format_size(soft)}) must not exceed hard_limit "
                f"({format_size(hard)}); lower soft_limit or raise hard_limit"
            )
            raise InvalidSize(msg, value=(self.soft_limit, self.hard_limit))
        every = self.gc_full_every
        if every is not None and (type(every) is not int or every < 1):
            msg = f"gc_full_every must be None or a whole number of at least 1, got {every!r}"
            raise InvalidSize(msg, value=every)
        young = self.gc_young_every
        if young is not None and (type(young) is not int or young < 1):
            msg = f"gc_young_every must be None or a whole number of at least 1, got {young!r}"
            raise InvalidSize(msg, value=young)
        if self.history < 1:
            msg = f"history must be at least 1, got {self.history!r}"
            raise InvalidSize(msg, value=self.history)
        for name in ("pressure_trim", "pressure_shed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                msg = f"{name} must be None or a percentage in [0, 100], got {value!r}"
                raise InvalidSize(msg, value=value)
        if self.watch not in ("auto", "process", "container"):
            msg = f"watch must be 'auto', 'process' or 'container', got {self.watch!r}"
            raise InvalidSize(msg, value=self.watch)

    def _explicit_limits(self) -> tuple[int | None, int | None]:
        soft = None if self.soft_limit is None else parse_size(self.soft_limit, name="soft_limit")
        hard = None if self.hard_limit is None else parse_size(self.hard_limit, name="hard_limit")
        return soft, hard

    def resolve_limits(self) -> tuple[int | None, int | None, LimitSource]:
        """The (soft, hard) RSS watermarks in bytes and where they came from."""
        soft, hard = self._explicit_limits()
        if soft is not None or hard is not None:
            if soft is None and hard is not None:
                soft = int(hard * self.soft_fraction / self.hard_fraction)
            return soft, hard, "config"
        if self.use_cgroup:
            if self.cgroup_root == DEFAULT_CGROUP_ROOT:
                group = find_cgroup(self.container_root)
                limit = None if group is None else group.limit().limit
            else:
                limit = cgroup_memory_limit(self.cgroup_root)
            if limit is not None:
                return int(limit * self.soft_fraction), int(limit * self.hard_fraction), "cgroup"
        return None, None, None


class _Reading(NamedTuple):
    """What the governor's rules read of the process: RSS, the C heap's free bytes and
    resident bytes, and the pools' idle bytes."""

    rss: int
    heap_free: int | None
    heap_resident: int | None
    slab_idle_bytes: int


def _reading(pools: Iterable[SlabPool], *, resident: bool) -> _Reading:
    """One reading for :meth:`Governor.check` (every tick) and :meth:`Governor.trim`
    (after each trim): what their rules look at, and nothing more.

    ``snapshot()`` also builds every pool's whole ``stats()`` (a dict per size class),
    the collector's statistics and pymalloc's block count: a few hundred objects made and
    dropped every second on the event loop, which no rule reads. The heap's resident
    bytes (a ``mincore`` of the whole heap, about 70 us) only with ``resident``: the one
    rule that reads them judges the last trim's yield, at the tick after it.
    """
    heap = heap_info()
    return _Reading(
        rss=current_rss(),
        heap_free=None if heap is None else heap.free,
        heap_resident=heap_resident() if resident else None,
        slab_idle_bytes=sum(pool.idle_bytes for pool in pools),
    )


def _resolve_pools(source: PoolsSource) -> list[SlabPool]:
    if source is None:
        return _registry.slab_pools()
    pools = source() if callable(source) else source
    return [p for p in pools if not p.closed]


def _trim_blocking(
    pools: list[SlabPool], busy: bool, pymalloc: bool, arena_decay: float
) -> tuple[dict[str, int], bool, int, int, int]:
    """Return idle slab memory, cached pymalloc arenas, free C heap, (with ``pymalloc``)
    pymalloc's empty pools and (unless ``busy``) the large-block region's free pages to
    the OS; runs on the loop or in a worker thread (:func:`trim_now`)."""
    if busy:  # only what the pool's own decay would return: its hot blocks stay hot
        returned = {
            pool.name: 0 if pool.decay is None else pool.trim(older_than=pool.decay)
            for pool in pools
        }
    else:
        returned = {pool.name: pool.trim() for pool in pools}
    # busy: only the arenas its decay would give back (the warm ones serve the traffic)
    arenas = release_arenas(older_than=arena_decay if busy else 0.0)
    trimmed = malloc_trim(0)
    released = release_free_pools() if pymalloc else None
    # busy: the region's warm pages are the next decode's (they are bounded by its warm)
    blocks = 0 if busy else release_blocks()
    return returned, trimmed, 0 if released is None else released.bytes, arenas, blocks


async def trim_now(
    pools: PoolsSource = None,
    *,
    busy: bool = False,
    pymalloc: bool = True,
    arena_decay: float = 10.0,
    in_thread: bool = False,
) -> TrimResult:
    """Trim now: every pool's idle memory, the cached pymalloc arenas
    (:func:`arenapool.memory.cache_pymalloc_arenas`), then ``malloc_trim(0)``, then
    (with ``pymalloc``, where this process can) the pages of pymalloc's empty pools.

    The trim runs on the event loop, between its callbacks (22 ms here to return a
    200 MiB burst). ``in_thread`` runs it in the loop's default executor instead, so the
    loop serves meanwhile; but the process then has a thread, and glibc's ``malloc`` and
    ``free`` take a lock for the rest of its life (see :class:`GovernorConfig`'s
    ``trim_in_thread``).

    With ``busy`` (requests are being served), a pool gives back only blocks idle for
    longer than its ``decay``, as its maintenance would: the blocks its traffic
    reuses stay committed (decommitting them under load only makes the next requests
    fault their pages back in); likewise only cached arenas unused for ``arena_decay``
    seconds. Returns a :class:`TrimResult`, where ``freed`` is the RSS drop (what the
    OS saw) and ``pools`` the bytes each pool says it returned.
    """
    targets = _resolve_pools(pools)
    loop = asyncio.get_running_loop()
    before = current_rss()
    heap_before = heap_resident()
    started = time.perf_counter()
    if in_thread:
        returned, trimmed, released, arenas, blocks = await loop.run_in_executor(
            None, _trim_blocking, targets, busy, pymalloc, arena_decay
        )
    else:
        returned, trimmed, released, arenas, blocks = _trim_blocking(
            targets, busy, pymalloc, arena_decay
        )
    seconds = time.perf_counter() - started
    after = current_rss()
    heap_after = heap_resident()
    return {
        "rss_before": before,
        "rss_after": after,
        "freed": max(0, before - after),
        "seconds": seconds,
        "malloc_trim": trimmed,
        "pools": returned,
        "pymalloc": released,
        "arenas": arenas,
        "blocks": blocks,
        "heap_before": heap_before,
        "heap_after": heap_after,
    }


class Governor:
    """Watches memory in the background; trims when idle, sheds past a watermark.

    ``pools`` are the slab pools to trim (an iterable, a callable returning one, or
    ``None`` for every live pool). Use ``start()`` / ``await stop()`` from a running
    loop, or ``async with Governor(...)``. Adapters call :meth:`note_request_start` /
    :meth:`note_request_end` around each request (or hand their own request counts to
    :meth:`count_requests`, as the aiohttp adapter's ``setup`` does), check
    :attr:`shedding`, and call :meth:`note_shed` for each request they turn away.
    """

    def __init__(self, config: GovernorConfig | None = None, *, pools: PoolsSource = None) -> None:
        self.config = config or GovernorConfig()
        self._pools = pools
        self.soft_limit, self.hard_limit, self.limit_source = self.config.resolve_limits()
        config = self.config
        self._cgroup: Cgroup | None = None
        if config.use_cgroup and config.cgroup_root == DEFAULT_CGROUP_ROOT:
            self._cgroup = find_cgroup(config.container_root)
        container_limits = self.limit_source == "cgroup" and self._cgroup is not None
        wants = config.watch
        #: what the watermarks compare: "process" (RSS) or "container" (working set)
        self.watch: Literal["process", "container"] = (
            "container"
            if self._cgroup is not None
            and (wants == "container" or (wants == "auto" and container_limits))
            else "process"
        )
        self._container: ContainerMemory | None = None
        #: the container is read whole at every tick only when its limit sets the
        #: watermarks or its working set is the level; else a tick reads its PSI alone
        #: (when a pressure rule is set), and stats() reads the rest when asked
        self._tick_reads_container = self._cgroup is not None and (
            self.limit_source == "cgroup" or self.watch == "container"
        )
        self._wants_pressure = (
            self.config.pressure_shed is not None or self.config.pressure_trim is not None
        )
        self._pressure: Pressure | None = None
        self._pressure_trims = 0
        self._pressure_sheds = 0
        self._stalled = False  # PSI past pressure_shed at the last reading
        self._trim_threshold = parse_size(
            self.config.trim_threshold, name="trim_threshold", allow_zero=True
        )
        self._busy: TrimPolicy | None = None  # trims under load (None: idle/soft only)
        # the plain periodic trim under load, in place of the busy trims (heap_trim_every)
        self._heap_trims = 0
        self._heap_trim_seconds = 0.0
        # ... and those of them made while a pool's traffic was spread (spread_trim_every)
        self._spread_trims = 0
        self._spread = False  # a pool's traffic was spread at the last reading
        self._last_heap_trim = float("-inf")
        # what each kind of trim gave back from the main heap, and how much of it was
        # resident again at the next reading, by reason
        self._heap_returns: dict[str, _HeapReturns] = {}
        # the last trim's heap return, until the next reading judges it: its row, bytes
        # returned, the heap's resident bytes after it, and whether the busy-trim policy
        # recorded it and settles its trims (then the same reading settles it:
        # TrimPolicy.settle)
        self._heap_pending: tuple[_HeapReturns, int, int, bool] | None = None
        if config.busy_trim_threshold is not None and config.heap_trim_every is None:
            self._busy = TrimPolicy(
                parse_size(config.busy_trim_threshold, allow_zero=True),
                min_interval=config.busy_trim_interval,
                max_interval=config.busy_trim_max_interval,
                min_yield=parse_size(config.trim_min_yield, allow_zero=True),
                learn_swing=config.busy_trim_swing,
            )
        self._task: asyncio.Task[None] | None = None
        self._trim_lock: asyncio.Lock | None = None
        self._in_flight = 0
        self._ended = 0  # requests ended, ever: the loop dates the last one (check())
        self._ended_seen = 0
        # adapters that count requests themselves: (in flight, ended ever), read per check
        self._sources: list[Callable[[], tuple[int, int]]] = []
        self._last_activity = time.monotonic()
        #: True while RSS (or the container's level) went past the hard watermark and is
        #: not yet back under soft; read by the adapters once per request (an attribute,
        #: not a property: that read is on every request's path). Only the governor sets it.
        self.shedding = False
        self._floor = 0  # nothing trimmed yet: all free memory counts as reclaimable
        self._heap_floor = 0  # the same, of the free C heap alone (busy trims)
        # the lowest RSS since the last trim: freed heap that a trim had returned and
        # that requests then touched again is resident, yet mallinfo2's free bytes do
        # not grow (they counted it all along); RSS does
        self._rss_floor: int | None = None
        # idle slab bytes the last trim left committed because it was a busy one (warm
        # blocks for the traffic): once idle, they are worth an idle trim whatever the
        # floors say (they sat under the floor all along)
        self._kept_warm = 0
        self._last_trim = float("-inf")
        self._last_rss: int | None = None
        self._last_check: float | None = None
        self._checks = 0
        self._errors = 0
        self._trims = 0
        self._mmap_threshold: int | None = None  # what start() pinned, if anything
        self._heap_held = False  # start() pinned glibc's thresholds (hold_heap)
        self._gc_frozen: int | None = None  # objects frozen at start (freeze_gc)
        # the third gc threshold it set (gc_full_every), None when it set none
        self._gc_full_every: int | None = None
        # the first gc threshold it set (gc_young_every), None when it set none
        self._gc_young_every: int | None = None
        self._gc_idle_since: float | None = None  # the idle spell last collected in
        self._gc_idle_collections = 0
        self._gc_tick_collections = 0
        self._trimmed_bytes = 0
        self._trim_seconds = 0.0
        self._pool_returned_bytes = 0
        self._pymalloc_released_bytes = 0
        # "on" when pymalloc's state was found, else why not ("off": not asked for);
        # found once per process (about 5 ms), here rather than on the first trim
        self._pymalloc_release = "off"
        self._pymalloc_idle_since: float | None = None  # the idle spell last released in
        if self.config.release_pymalloc:
            found = pymalloc_status()
            self._pymalloc_release = "on" if found.available else str(found.reason)
        # "on" once start() installed the arena cache, else why not ("off": not asked for)
        self._arena_cache = "off"
        self._arena_released_bytes = 0
        # "on" once start() installed the large-block region, else why not ("off": not
        # asked for); the idle spell its free pages were last given back in
        self._block_cache = "off"
        self._blocks_released_bytes = 0
        self._blocks_idle_since: float | None = None
        # block_cache_fit: its sizes (budget, ceiling, floor, block_cache_min), parsed at
        # start; the window it judges (blocks freed ever and the time at its start, the
        # pages in use given back by MiB since); how often it moved the bound, whether
        # the last move was a step down, and how long a step down waits after one that
        # went too far, until when
        self._fit: tuple[int, int, int, int] | None = None
        self._fit_window: tuple[int, float] | None = None
        self._fit_by_mib: list[int] = []
        self._fit_moves = 0
        self._fit_lowered = False
        self._fit_wait = 0.0
        self._fit_blocked_until = float("-inf")
        # block_cache_spread: the region's bounds (steady, spread) and block_cache_min,
        # parsed at start; whether the spread's bound holds now; how often it moved
        self._spread_bounds: tuple[int, int, int] | None = None
        self._spread_bound = False
        self._spread_moves = 0
        self._shed_count = 0
        self._shed_episodes = 0
        self._actions: deque[dict[str, Any]] = deque(maxlen=self.config.history)

    # -- what adapters call --------------------------------------------------------

    @property
    def shed_episodes(self) -> int:
        """How many times shedding began (past the hard watermark, or on pressure)."""
        return self._shed_episodes

    @property
    def in_flight(self) -> int:
        """Requests in flight: between :meth:`note_request_start` and
        :meth:`note_request_end`, and as the sources of :meth:`count_requests` say."""
        return self._requests()[0]

    @property
    def retry_after(self) -> float:
        """Seconds a shed request should wait before retrying."""
        return self.config.retry_after

    @property
    def last_rss(self) -> int | None:
        """RSS at the last reading, or None before the first."""
        return self._last_rss

    @property
    def running(self) -> bool:
        """True while the background task is alive."""
        return self._task is not None and not self._task.done()

    def note_request_start(self) -> None:
        """A request began (the server is busy until the matching end)."""
        # busy while anything is in flight; idleness is timed from the last end
        self._in_flight += 1

    def note_request_end(self) -> None:
        """A request ended, on every path (return, error, cancellation)."""
        # per request: no clock read here; check() dates the activity it sees
        if self._in_flight > 0:
            self._in_flight -= 1
        self._ended += 1

    def count_requests(self, source: Callable[[], tuple[int, int]]) -> None:
        """Also count the requests ``source()`` reports, as ``(in flight, ended ever)``,
        read at each check: for an adapter that counts its requests anyway (the aiohttp
        adapter's route counters), instead of two calls per request. Adding the same
        source again changes nothing."""
        if source not in self._sources:
            self._sources.append(source)

    def _requests(self) -> tuple[int, int]:
        """(in flight, ended ever): the notes' and every source's."""
        in_flight, ended = self._in_flight, self._ended
        for source in self._sources:
            more_in_flight, more_ended = source()
            in_flight += more_in_flight
            ended += more_ended
        return in_flight, ended

    def note_shed(self) -> None:
        """An adapter turned a request away because :attr:`shedding` was set."""
        self._shed_count += 1

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the background task on the running loop (a no-op if already running)."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="arenapool-governor")
        config = self.config
        threshold = config.mmap_threshold
        if threshold is not None and self._mmap_threshold is None:
            nbytes = parse_size(threshold, name="mmap_threshold", allow_zero=True)
            if set_mmap_threshold(nbytes):
                self._mmap_threshold = nbytes
        elif (
            threshold is None
            and config.hold_heap
            and self._busy is not None
            and not self._heap_held
        ):
            self._heap_held = hold_heap()
        if config.freeze_gc:
            self._gc_frozen = freeze_startup_objects()
            if config.gc_full_every is not None and self._gc_full_every is None:
                self._gc_full_every = space_full_collections(config.gc_full_every)
        if config.gc_young_every is not None and self._gc_young_every is None:
            self._gc_young_every = space_young_collections(config.gc_young_every)
        if config.arena_cache is not None and self._arena_cache != "on":
            limit = parse_size(config.arena_cache, name="arena_cache", allow_zero=True)
            if install_arena_cache(limit):
                self._arena_cache = "on"
                _ARENA_CACHE_USERS.add(self)
            else:
                self._arena_cache = arena_cache_status() or "off"
        if config.block_cache is not None and self._block_cache != "on":
            warm = parse_size(config.block_cache, name="block_cache", allow_zero=True)
            smallest = parse_size(config.block_cache_min, name="block_cache_min")
            if install_block_cache(
                warm, min_size=smallest, huge_pages=config.block_cache_huge_pages
            ):
                self._block_cache = "on"
                _BLOCK_CACHE_USERS.add(self)
                if config.block_cache_fit and not block_cache_stats().huge_pages:
                    budget = parse_size(
                        config.block_cache_fit_budget, name="block_cache_fit_budget"
                    )
                    self._fit = (budget, warm, min(_FIT_FLOOR, warm), smallest)
                elif config.block_cache_spread is not None and not config.block_cache_fit:
                    spread = parse_size(
                        config.block_cache_spread, name="block_cache_spread", allow_zero=True
                    )
                    self._spread_bounds = (warm, min(spread, warm), smallest)
                    self._spread_bound = False
            else:
                self._block_cache = block_cache_status() or "off"
        log.info(
            "governor started: interval %.2fs, soft %s, hard %s (%s)",
            config.interval,
            _fmt(self.soft_limit),
            _fmt(self.hard_limit),
            self.limit_source or "no watermarks",
        )

    async def stop(self) -> None:
        """Stop the background task and wait for it (idempotent)."""
        task, self._task = self._task, None
        if self._arena_cache == "on":
            # nobody gives cached arenas back once the last governor using the cache
            # stops: it becomes a pass-through, and what it holds goes back now
            self._arena_cache = "off"
            _ARENA_CACHE_USERS.discard(self)
            if not _ARENA_CACHE_USERS:
                install_arena_cache(0)
        if self._block_cache == "on":
            # likewise the region: new blocks pass through to glibc, and its free pages
            # go back now (blocks still alive in it are freed into it as before)
            self._block_cache = "off"
            _BLOCK_CACHE_USERS.discard(self)
            if not _BLOCK_CACHE_USERS:
                install_block_cache(0, min_size=BLOCK_CACHE_OFF)
                self._blocks_released_bytes += release_blocks()
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Governor:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._errors += 1
                log.exception("governor check failed; carrying on")
            await asyncio.sleep(self.config.interval)

    # -- the rules -----------------------------------------------------------------

    async def check(self) -> None:
        """Take one reading and apply the rules (the background task calls this)."""
        pools = _resolve_pools(self._pools)
        reading = _reading(pools, resident=self._heap_pending is not None)
        now = time.monotonic()
        rss = reading.rss
        self._checks += 1
        self._last_rss = rss
        self._last_check = time.time()
        in_flight, ended = self._requests()
        pending = self._heap_pending
        if pending is not None and reading.heap_resident is not None:
            # the last trim's yield, one reading on: what the heap holds again of it
            self._heap_pending = None
            row, returned, after, settles = pending
            back = min(returned, max(0, reading.heap_resident - after))
            row.judged += returned
            row.back += back
            if settles and self._busy is not None:
                # a trim whose return the traffic took straight back did not pay (and
                # what it took back says how far its free heap swings)
                self._busy.settle(back, now)
        if ended != self._ended_seen:  # requests ended since the last check
            self._ended_seen = ended
            self._last_activity = now
        heap_free = reading.heap_free or 0
        held = heap_free + reading.slab_idle_bytes
        self._floor = min(self._floor, held)
        reclaimable = held - self._floor
        # under load, only the C heap counts: idle slab blocks are the pool's to keep
        # warm for the traffic (its decay and retain return them, off the request path)
        self._heap_floor = min(self._heap_floor, heap_free)
        heap_reclaimable = heap_free - self._heap_floor
        rss_floor = self._rss_floor = rss if self._rss_floor is None else min(self._rss_floor, rss)

        level = self._level(rss)
        what = "RSS" if self.watch == "process" else "container working set"
        pressure = self._pressure
        config = self.config
        stalled = self._stalled = (
            pressure is not None
            and config.pressure_shed is not None
            and pressure.full_avg10 >= config.pressure_shed
        )
        if self.hard_limit is not None and level >= self.hard_limit and not self.shedding:
            self.shedding = True
            self._shed_episodes += 1
            self._record("shed_on", "hard", rss_before=rss, level=level, watch=self.watch)
            log.warning(
                "%s %s is past the hard watermark %s: shedding requests with a body",
                what,
                format_size(level),
                format_size(self.hard_limit),
            )
        elif stalled and not self.shedding:
            assert pressure is not None
            self.shedding = True
            self._shed_episodes += 1
            self._pressure_sheds += 1
            self._record(
                "shed_on", "pressure", rss_before=rss, level=level, psi=pressure.full_avg10
            )
            log.warning(
                "memory pressure: tasks fully stalled %.1f%% of the last 10 s (pressure_shed "
                "%.1f%%): shedding requests with a body",
                pressure.full_avg10,
                config.pressure_shed,
            )
        elif self.shedding and not stalled and (self.soft_limit is None or level < self.soft_limit):
            self._stop_shedding(level)

        pressed = (
            pressure is not None
            and config.pressure_trim is not None
            and pressure.some_avg10 >= config.pressure_trim
        )
        # nothing in flight for idle_after: the idle trim, the idle spell's release of
        # pymalloc's pools, and the arena cache's full release all go by this
        idle = in_flight == 0 and now - self._last_activity >= config.idle_after
        if idle and self._gc_young_every is not None and self._gc_idle_since != self._last_activity:
            # once per idle spell: the cycles that waited under the raised first threshold
            # (gc_young_every) are freed now, before the idle trims and the release of
            # pymalloc's pools below give back what they held (an idle server allocates
            # nothing, so the count would not reach the threshold again)
            self._gc_idle_since = self._last_activity
            gc.collect(1)
            self._gc_idle_collections += 1
        elif (
            not idle
            and self._gc_young_every is not None
            and config.gc_young_tick
            and gc.get_count()[0] >= CPYTHON_YOUNG_EVERY
        ):
            # under load: what CPython's own threshold would have collected by now,
            # once an interval (the cycles requests leave wait a second, not 10,000)
            gc.collect(0)
            self._gc_tick_collections += 1
        # the periodic heap trim under load: always (heap_trim_every), or while the
        # traffic is spread over sizes (spread_trim_every), in place of the busy trims
        every = config.heap_trim_every
        # (read once a check: the spread trims and the region's bound go by the same one)
        sizes_spread = any(pool.spread for pool in pools)
        spread = self._spread = (
            every is None and config.spread_trim_every is not None and sizes_spread
        )
        if spread:
            every = config.spread_trim_every
        if (self.soft_limit is not None and level >= self.soft_limit) or pressed:
            # Live data above soft is not trimmable: retrying only when something was
            # freed since the last trim keeps a busy, full server from trimming in vain.
            if now - self._last_trim >= config.trim_cooldown and reclaimable >= _MIN_SOFT_RECLAIM:
                soft = self.soft_limit is not None and level >= self.soft_limit
                if not soft:
                    self._pressure_trims += 1
                await self.trim(reason="soft" if soft else "pressure")
        elif idle and (
            reclaimable > self._trim_threshold
            or rss - rss_floor > self._trim_threshold
            or self._kept_warm > self._trim_threshold
        ):
            await self.trim(reason="idle")
        elif (
            self._busy is not None
            and (idle or not spread)
            and self._busy.due(now, reclaimable if idle else heap_reclaimable)
        ):
            # under load too: the free heap is worth a trim, and trims have paid lately.
            # Busy unless idle: between two requests of a loaded server nothing is in
            # flight for an instant, and a full trim then (every idle block, every cached
            # arena, the region's warm pages) cost 3% of the CPU per request in
            # benchmarks/cpu_split.py, the next requests faulting it all back in. Never
            # pymalloc's pools here: under load they are taken again within the second
            # (4-minute soaks: the same median RSS, 3-15% more page faults per request,
            # 1-2.5% fewer requests); the idle release below gives them back once the
            # load stops.
            await self.trim(reason="idle" if idle else "busy", pymalloc=False)
        elif (
            every is not None
            and not idle
            # (a tenth of a tick's slack: a check that runs a hair early still counts)
            and now - self._last_heap_trim >= every - config.interval / 10
        ):
            self._last_heap_trim = now
            # (a mincore of the heap before and after it, about 70 us each: its yield)
            before = reading.heap_resident
            if before is None:
                before = heap_resident()
            started = time.perf_counter()
            malloc_trim(0)
            self._heap_trim_seconds += time.perf_counter() - started
            self._heap_trims += 1
            if spread:
                self._spread_trims += 1
            self._note_heap_return("spread" if spread else "heap", before, heap_resident())
        if self._arena_cache == "on":
            # cached arenas unused for arena_cache_decay go back as the server runs, all
            # of them once it is idle (a C call that returns at once when none is due;
            # a few unmaps when some are)
            older = 0.0 if idle else config.arena_cache_decay
            self._arena_released_bytes += release_arenas(older_than=older)
        if self._block_cache == "on" and idle and self._blocks_idle_since != self._last_activity:
            # the region's warm pages, once per idle spell (a madvise per free extent
            # that was ever touched: a handful)
            self._blocks_idle_since = self._last_activity
            self._blocks_released_bytes += release_blocks()
        if self._block_cache == "on" and config.block_cache_fit:
            self._fit_block_cache(now)
        elif self._block_cache == "on" and self._spread_bounds is not None:
            self._bound_block_cache(sizes_spread)
        if (
            self._pymalloc_release == "on"
            and idle
            and self._pymalloc_idle_since != self._last_activity
        ):
            # once per idle spell (a walk and a madvise per empty pool, well under a
            # millisecond for a few dozen arenas, on the loop: the GIL is held anyway)
            self._pymalloc_idle_since = self._last_activity
            released = release_free_pools()
            if released is not None:
                self._pymalloc_released_bytes += released.bytes

    def _bound_block_cache(self, spread: bool) -> None:
        """Lower the region's warm bound while the traffic is spread over sizes, and
        raise it again under one steady size (``block_cache_spread``)."""
        bounds = self._spread_bounds
        assert bounds is not None
        if spread == self._spread_bound:
            return
        self._spread_bound = spread
        steady, lower, smallest = bounds
        if lower == steady:
            return
        # (lowering gives back the free pages above the new bound at once: a madvise)
        install_block_cache(
            lower if spread else steady,
            min_size=smallest,
            huge_pages=self.config.block_cache_huge_pages,
        )
        self._spread_moves += 1
        self._record(
            "block_cache_spread", "lower" if spread else "raise", warm=block_cache_stats().warm
        )

    def _fit_block_cache(self, now: float) -> None:
        """Move the region's warm bound with the traffic (``block_cache_fit``): judge the
        blocks freed since the last judgement, once there are enough of them."""
        fit = self._fit
        if fit is None:
            return
        spread = block_cache_spread()
        window = self._fit_window
        if window is None or spread.freed < window[0]:
            # the window starts here (the counters restart with a new process only)
            self._fit_window = (spread.freed, now)
            self._fit_by_mib = []
            return
        counts = self._fit_by_mib
        if len(counts) < len(spread.by_mib):
            counts.extend([0] * (len(spread.by_mib) - len(counts)))
        for at, n in enumerate(spread.by_mib):
            counts[at] += n
        freed = spread.freed - window[0]
        config = self.config
        if freed < _FIT_MIN_FREED or now - window[1] < config.block_cache_fit_hold:
            return
        self._fit_window = (spread.freed, now)
        self._fit_by_mib = []
        budget, ceiling, floor, smallest = fit
        allowed = budget * freed
        over = sum(counts)
        warm = bound = spread.warm
        lowered = self._fit_lowered
        tolerated = allowed * 3 // 2  # (the spread of one judgement at a bound that meets it)
        if over > tolerated:
            # up to the lowest whole MiB above which the pages in use came to no more:
            # every one of them was counted above the bound they were freed under, this one
            bound = (warm // _FIT_STEP + 1) * _FIT_STEP
            while bound < ceiling and sum(counts[bound // _FIT_STEP :]) > tolerated:
                bound += _FIT_STEP
            bound = min(bound, ceiling)
            if lowered:
                # the last step down went too far: the next one waits longer
                hold = config.block_cache_fit_hold
                self._fit_wait = min(max(2 * self._fit_wait, 2 * hold), _FIT_MAX_WAIT_HOLDS * hold)
                self._fit_blocked_until = now + self._fit_wait
        elif over <= allowed:
            if lowered:
                self._fit_wait = 0.0  # the last step down held
            if now >= self._fit_blocked_until and warm > floor:
                if over * 8 <= allowed:
                    bound = warm // 2 // _FIT_STEP * _FIT_STEP
                else:
                    bound = (warm - 1) // _FIT_STEP * _FIT_STEP
                bound = max(bound, floor)
        self._fit_lowered = bound < warm
        if bound != warm:
            install_block_cache(bound, min_size=smallest, huge_pages=False)
            self._fit_moves += 1
            self._record(
                "block_cache_fit",
                "raise" if bound > warm else "lower",
                warm_before=warm,
                warm=bound,
                over_per_block=over // freed,
            )

    def _level(self, rss: int) -> int:
        """What the watermarks compare now: RSS, or the container's working set (read
        again, with its limit: watermarks from the cgroup follow a resized container).
        Sets the PSI reading the pressure rules look at."""
        group = self._cgroup
        if group is None:
            return rss
        if not self._tick_reads_container:
            # Only the pressure file, if a rule looks at it: the whole container (its
            # limit up the hierarchy, usage, memory.stat, OOM kills) took about 0.7 ms of
            # file reads and parsing per tick here, and made a few hundred objects
            self._pressure = group.pressure() if self._wants_pressure else None
            return rss
        container = self._container = group.read()
        self._pressure = container.pressure
        if (
            self.limit_source == "cgroup"
            and container.limit is not None
            and self.config.soft_limit is None
            and self.config.hard_limit is None
        ):
            soft = int(container.limit * self.config.soft_fraction)
            hard = int(container.limit * self.config.hard_fraction)
            if (soft, hard) != (self.soft_limit, self.hard_limit):
                self.soft_limit, self.hard_limit = soft, hard
                self._record("limits", "cgroup", soft=soft, hard=hard)
                log.info(
                    "container limit %s: watermarks soft %s, hard %s",
                    format_size(container.limit),
                    format_size(soft),
                    format_size(hard),
                )
        return container.working_set if self.watch == "container" else rss

    def _stop_shedding(self, level: int) -> None:
        self.shedding = False
        self._record("shed_off", "soft", rss_before=level, watch=self.watch)
        what = "RSS" if self.watch == "process" else "container working set"
        log.warning("%s %s is back under the soft watermark: no longer shedding", what, _fmt(level))

    async def trim(self, *, reason: str = "manual", pymalloc: bool | None = None) -> TrimResult:
        """Trim now (pools, then the C heap); record and log the action.

        On the loop, or in a worker thread with ``trim_in_thread`` (:func:`trim_now`).

        ``pymalloc``: also give back pymalloc's empty pools (``None``: when
        ``release_pymalloc`` is set and the trim is not a busy one). Returns what
        :func:`trim_now` returns. Concurrent calls run one after another.
        """
        if self._trim_lock is None:
            self._trim_lock = asyncio.Lock()
        async with self._trim_lock:
            busy = reason == "busy"
            if pymalloc is None:
                pymalloc = self.config.release_pymalloc and not busy
            result = await trim_now(
                self._pools,
                busy=busy,
                pymalloc=pymalloc,
                arena_decay=self.config.arena_cache_decay,
                in_thread=self.config.trim_in_thread,
            )
            self._last_trim = time.monotonic()
            if self._busy is not None:
                self._busy.record(self._last_trim, result["freed"], result["seconds"])
            self._note_heap_return(
                reason,
                result["heap_before"],
                result["heap_after"],
                settles=self._busy is not None and self.config.settle_busy_trims,
            )
            reading = _reading(_resolve_pools(self._pools), resident=False)
            self._heap_floor = reading.heap_free or 0
            self._floor = self._heap_floor + reading.slab_idle_bytes
            self._kept_warm = reading.slab_idle_bytes if reason == "busy" else 0
            self._last_rss = self._rss_floor = reading.rss
            self._trims += 1
            self._trimmed_bytes += result["freed"]
            self._trim_seconds += result["seconds"]
            self._pool_returned_bytes += sum(result["pools"].values())
            self._pymalloc_released_bytes += result["pymalloc"]
            self._arena_released_bytes += result["arenas"]
            self._blocks_released_bytes += result["blocks"]
            if pymalloc and self._pymalloc_release == "on":
                # released since the last activity: this idle spell's release is done
                self._pymalloc_idle_since = self._last_activity
            if not busy:
                # so did the region's: an idle trim's check does not release it again
                self._blocks_idle_since = self._last_activity
            self._record(
                "trim",
                reason,
                rss_before=result["rss_before"],
                rss_after=result["rss_after"],
                freed=result["freed"],
                seconds=round(result["seconds"], 6),
            )
            log.info(
                "trim (%s): RSS %s -> %s, freed %s in %.1f ms",
                reason,
                format_size(result["rss_before"]),
                format_size(result["rss_after"]),
                format_size(result["freed"]),
                result["seconds"] * 1000,
            )
            # A trim that brought the level under soft ends shedding now, not a tick later.
            level = self._level(reading.rss)
            if (
                self.shedding
                and not self._stalled
                and (self.soft_limit is None or level < self.soft_limit)
            ):
                self._stop_shedding(level)
            return result

    def _note_heap_return(
        self, reason: str, before: int | None, after: int | None, *, settles: bool = False
    ) -> None:
        """Count a trim's yield from the main heap; the next reading says what came back
        (and, when ``settles``, settles the busy-trim policy's record of it)."""
        if before is None or after is None:
            return
        returned = max(0, before - after)
        row = self._heap_returns.get(reason)
        if row is None:
            row = self._heap_returns[reason] = _HeapReturns()
        row.trims += 1
        row.returned += returned
        self._heap_pending = (row, returned, after, settles)

    def _record(self, action: str, reason: str, **data: Any) -> None:
        self._actions.append({"time": time.time(), "action": action, "reason": reason, **data})

    # -- observability -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the governor's state, counters and actions."""
        idle = None
        in_flight = self.in_flight
        if in_flight == 0:
            idle = round(time.monotonic() - self._last_activity, 3)
        return {
            "running": self.running,
            "shedding": self.shedding,
            "in_flight": in_flight,
            "idle_seconds": idle,
            "soft_limit": self.soft_limit,
            "hard_limit": self.hard_limit,
            "limit_source": self.limit_source,
            "trim_threshold": self._trim_threshold,
            "mmap_threshold": self._mmap_threshold,
            "heap_held": self._heap_held,
            "gc_frozen": self._gc_frozen,
            "gc_full_every": self._gc_full_every,
            "gc_young_every": self._gc_young_every,
            "gc_idle_collections": self._gc_idle_collections,
            "gc_tick_collections": self._gc_tick_collections,
            "interval": self.config.interval,
            "last_rss": self._last_rss,
            "last_check": self._last_check,
            "checks": self._checks,
            "errors": self._errors,
            "trims": self._trims,
            "trimmed_bytes": self._trimmed_bytes,
            "trim_seconds": self._trim_seconds,
            "trim_in_thread": self.config.trim_in_thread,
            # threads in this process now, and whether glibc still runs it single-threaded
            # (false for good once any thread started: every malloc then takes a lock)
            "threads": {
                "python": threading.active_count(),
                "libc_single_threaded": libc_single_threaded(),
            },
            "pool_returned_bytes": self._pool_returned_bytes,
            "pymalloc_released_bytes": self._pymalloc_released_bytes,
            "pymalloc_release": self._pymalloc_release,
            "arena_cache": {
                "state": self._arena_cache,
                "released_bytes": self._arena_released_bytes,
                **arena_cache_stats().to_dict(),
            },
            "block_cache": {
                "state": self._block_cache,
                "released_bytes": self._blocks_released_bytes,
                "fit": self.config.block_cache_fit,
                "fit_moves": self._fit_moves,
                "fit_wait": self._fit_wait,
                "spread_warm": None if self._spread_bounds is None else self._spread_bounds[1],
                "spread_bound": self._spread_bound,
                "spread_moves": self._spread_moves,
                **block_cache_stats().to_dict(),
            },
            "shed_count": self._shed_count,
            "shed_episodes": self._shed_episodes,
            "watch": self.watch,
            "pressure_trims": self._pressure_trims,
            "pressure_sheds": self._pressure_sheds,
            "container": _container_stats(self._container_now()),
            "busy_trim": None if self._busy is None else self._busy.stats(),
            "heap_returns": {reason: row.as_dict() for reason, row in self._heap_returns.items()},
            "heap_trims": None
            if self.config.heap_trim_every is None and self.config.spread_trim_every is None
            else {
                "every": self.config.heap_trim_every,
                "spread_every": self.config.spread_trim_every,
                "spread": self._spread,
                "count": self._heap_trims,
                "spread_count": self._spread_trims,
                "seconds": round(self._heap_trim_seconds, 6),
            },
            "actions": list(self._actions),
        }

    def _container_now(self) -> ContainerMemory | None:
        """The container's reading for stats(): the last tick's when ticks read it
        whole, else read now (``None`` outside a cgroup)."""
        if self._cgroup is None or self._tick_reads_container:
            return self._container
        return self._cgroup.read()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        if self.shedding:
            state += ", shedding"
        parts = [
            state,
            f"rss {_fmt(self._last_rss)}, soft {_fmt(self.soft_limit)}, "
            f"hard {_fmt(self.hard_limit)}",
            f"in flight {self.in_flight}",
            f"trims {self._trims} (freed {format_size(self._trimmed_bytes)})",
            f"shed {self._shed_count}",
        ]
        return f"<Governor [{' | '.join(parts)}]>"


def _fmt(nbytes: int | None) -> str:
    return "-" if nbytes is None else format_size(nbytes)


#: The running governors that asked for the arena cache (GovernorConfig.arena_cache):
#: the cache is process-wide, and when the last of them stops it stops caching.
_ARENA_CACHE_USERS: weakref.WeakSet[Governor] = weakref.WeakSet()
#: Likewise for the large-block region (GovernorConfig.block_cache).
_BLOCK_CACHE_USERS: weakref.WeakSet[Governor] = weakref.WeakSet()

#: What adapters accept for a governor: none (``None``/``False``), the default one
#: (``True``), one built from a config, or a running :class:`Governor`.
GovernorSpec = Governor | GovernorConfig | bool | None


def _container_stats(reading: ContainerMemory | None) -> dict[str, Any] | None:
    """The last container reading, JSON-serialisable (``None`` outside a cgroup)."""
    if reading is None:
        return None
    pressure = reading.pressure
    return {
        "limit": reading.limit,
        "usage": reading.usage,
        "inactive_file": reading.inactive_file,
        "working_set": reading.working_set,
        "oom_kills": reading.oom_kills,
        "pressure_some_avg10": None if pressure is None else pressure.some_avg10,
        "pressure_full_avg10": None if pressure is None else pressure.full_avg10,
        "path": reading.path,
        "version": reading.version,
    }
