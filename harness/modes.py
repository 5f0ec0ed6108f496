"""The modes: the ways of running the example service that a benchmark compares.

A :class:`Mode` is the example service's handler style (``plain``, ``orjson``,
``msgspec``, ``arenapool``, ``arenapool-msgspec``) plus the process setup users reach for
today (a once-a-second ``malloc_trim(0)`` task, an LD_PRELOADed allocator,
``MALLOC_ARENA_MAX=2``, gunicorn recycling workers after N requests). Every arenapool
mode has a baseline with the same decoder and no arenapool (:data:`BASELINES`).
:func:`resolve_modes` keeps the ones this machine can run, with a note for each one it
cannot. ``<mode>#2`` names a second server of ``<mode>`` (:data:`CONTROL`): measured
against the first, it is an A/A test, the spread a benchmark shows between two processes
running the same code.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from arenapool import GovernorConfig

# the thresholds GovernorConfig(hold_heap=True) pins, for the +hold modes to set
from arenapool._memory import HOLD_TRIM_THRESHOLD, MAX_MMAP_THRESHOLD

# the first collection threshold the governor sets by default, for the +gc modes to set
GC_YOUNG_EVERY: int = GovernorConfig().gc_young_every or 700

__all__ = [
    "BASELINES",
    "CONTROL",
    "GC_YOUNG_EVERY",
    "MODES",
    "Mode",
    "baseline_of",
    "find_library",
    "mode_names",
    "pair_groups",
    "repeats",
    "resolve_modes",
    "round_groups",
    "round_order",
]

#: each arenapool mode's like-for-like baseline: the same decoder without arenapool
BASELINES = {"arenapool": "orjson", "arenapool-msgspec": "msgspec"}


#: the suffix of a control: ``orjson#2`` is a second server of ``orjson``, compared with it
CONTROL = "#2"


def repeats(name: str) -> str | None:
    """The mode control ``name`` repeats (``orjson#2`` -> ``orjson``); None for a name
    that is not a control."""
    return name.removesuffix(CONTROL) if name.endswith(CONTROL) else None


def baseline_of(mode: str) -> str:
    """The mode ``mode`` is compared with: the same decoder without arenapool.

    ``arenapool`` -> ``orjson``, ``arenapool-msgspec`` -> ``msgspec``; a variant
    (``msgspec+trim``) is compared with its decoder's plain mode; a control
    (``orjson#2``) with the mode it repeats; every other mode with ``orjson``.
    """
    repeated = repeats(mode)
    if repeated is not None:
        return repeated
    if mode in BASELINES:
        return BASELINES[mode]
    return "msgspec" if "msgspec" in mode else "orjson"


def pair_groups(names: list[str], *, every_with_baseline: bool = False) -> list[list[str]]:
    """``names`` in the groups a benchmark round runs back to back.

    Each arenapool mode goes right after its baseline (:data:`BASELINES`), when both are
    in ``names``, and a control (``orjson#2``) right before the mode it repeats: the
    baseline sits between the two, next to each in every order :func:`round_order`
    gives. Every other name stands alone. Order follows ``names``.

    With ``every_with_baseline`` (for servers loaded a group at a time), every other
    mode whose baseline (:func:`baseline_of`) is in ``names`` gets a group of its own
    with that baseline too (``[arenapool-no-governor, orjson]``), so that each mode is
    measured over the same seconds as its baseline; the baseline then runs once per
    group it is in, and stands alone in none.
    """
    paired = {BASELINES[n]: n for n in names if n in BASELINES and BASELINES[n] in names}
    controls = {repeated: n for n in names if (repeated := repeats(n)) in names}
    taken = set(paired.values()) | set(controls.values())
    groups = []
    for n in names:
        if n in taken:
            continue
        group = [n, paired[n]] if n in paired else [n]
        if n in controls:
            group.insert(0, controls[n])
        groups.append(group)
    if not every_with_baseline:
        return groups

    def against_baseline(group: list[str]) -> bool:
        # a mode alone, neither a baseline nor a control, whose baseline runs too
        n = group[0]
        return len(group) == 1 and repeats(n) is None and baseline_of(n) in names_in - {n}

    names_in = set(names)
    joined = [[g[0], baseline_of(g[0])] if against_baseline(g) else g for g in groups]
    # a baseline alone runs in the groups of the modes measured against it instead
    return [
        g
        for g in joined
        if len(g) > 1 or not any(g[0] in other for other in joined if other is not g)
    ]


def round_groups(groups: list[list[str]], round_: int) -> list[list[str]]:
    """Round ``round_``'s groups (from 0) over :func:`pair_groups`' ``groups``, in order.

    The groups rotate by one each round, so none always runs first, and each group's
    modes reverse every other round (A B, then B A), so neither side of a pair always
    runs, or starts, first.
    """
    shift = round_ % len(groups) if groups else 0
    return [g if round_ % 2 == 0 else g[::-1] for g in groups[shift:] + groups[:shift]]


def round_order(groups: list[list[str]], round_: int) -> list[str]:
    """The order of round ``round_`` (from 0) over :func:`pair_groups`' ``groups``: the
    groups of :func:`round_groups` back to back. A ratio inside a round comes from two
    runs seconds apart, and neither side always runs first.
    """
    return [name for group in round_groups(groups, round_) for name in group]


_LIBRARY_FILES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc.so"),
}
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
)


def find_library(name: str) -> str | None:
    """The path of an allocator library to LD_PRELOAD (``jemalloc``, ``mimalloc``)."""
    for directory in _LIBRARY_DIRS:
        for filename in _LIBRARY_FILES.get(name, ()):
            path = Path(directory, filename)
            if path.exists():
                return str(path)
    found = ctypes.util.find_library(name)  # a bare soname; the loader finds it
    return found or None


@dataclass(frozen=True)
class Mode:
    """One way of running the example service."""

    name: str
    service: str  # the example service's --mode
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # extra options for the example service
    gunicorn_max_requests: int | None = None  # run under gunicorn, recycling workers
    unavailable: str | None = None  # why it cannot run here, or None
    app: str | None = None  # another app than the example service (path from the root)


def _trim_mode(service: str, description: str, *args: str) -> Mode:
    """``service``'s handler with a ``malloc_trim(0)`` task every second: ``<service>+trim``
    (``args``: more options for the example service)."""
    return Mode(f"{service}+trim", service, description, args=("--trim-interval", "1", *args))


def _modes(recycle_after: int) -> list[Mode]:
    modes = [
        Mode("plain", "plain", "await request.json() + web.json_response"),
        Mode("orjson", "orjson", "orjson.loads(await request.read()) + orjson.dumps"),
        _trim_mode("orjson", "orjson handler + malloc_trim(0) every second (aiohttp #11043)"),
        Mode(
            "orjson+noop",
            "orjson",
            "orjson handler behind one do-nothing @web.middleware (aiohttp's middleware cost)",
            args=("--noop-middleware",),
        ),
        Mode("msgspec", "msgspec", "msgspec.json.Decoder(Ingest).decode(await request.read())"),
        _trim_mode("msgspec", "msgspec handler + malloc_trim(0) every second"),
        Mode("arenapool", "arenapool", "arenapool read_json (orjson) + json_response"),
        Mode("arenapool-msgspec", "arenapool-msgspec", "arenapool read_json(type=Ingest)"),
        Mode(
            "arenapool-idle-trim",
            "arenapool",
            "arenapool, the governor trimming only when idle (no busy trims)",
            args=("--busy-trim", "none"),
        ),
        _trim_mode(
            "arenapool",
            "arenapool's body path with orjson+trim's malloc_trim(0) every second instead of "
            "the governor's busy trims (the governor trims only when idle): the arena "
            "path against orjson+trim, the trims alike",
            "--busy-trim",
            "none",
        ),
        Mode(
            "arenapool+mmap",
            "arenapool",
            "arenapool, glibc's mmap threshold pinned at 1 MiB by the governor",
            args=("--mmap-threshold", "1MiB"),
        ),
        Mode(
            "arenapool-retain16",
            "arenapool",
            "arenapool, up to 16 MiB of idle slab memory kept committed (SlabPool retain=; "
            "the default is 2 MiB)",
            args=("--retain", "16MiB"),
        ),
        Mode(
            "arenapool-warm",
            "arenapool",
            "arenapool, idle slab memory not capped (retain=None): idle blocks stay "
            "committed until their decay",
            args=("--retain", "none"),
        ),
        Mode(
            "arenapool-no-stretch",
            "arenapool",
            "arenapool, each lend taking a block of its own class even when only a larger "
            "class has one warm (SlabPool stretch=1; the default is 4)",
            args=("--stretch", "1"),
        ),
        Mode(
            "arenapool-lean",
            "arenapool",
            "arenapool, the leanest slab pool: no idle slab memory kept committed and no "
            "warm reserves (SlabPool retain=0, calibrate=False)",
            args=("--retain", "0", "--no-calibrate"),
        ),
        Mode(
            "arenapool-capped",
            "arenapool",
            "arenapool whose idle slab memory is capped at 2 MiB with no calibrated warm "
            "reserves (SlabPool retain=2MiB, calibrate=False): between the default and "
            "the leanest pool",
            args=("--retain", "2MiB", "--no-calibrate"),
        ),
        Mode(
            "arenapool-every-class",
            "arenapool",
            "arenapool whose every size class keeps its calibrated warm reserve, with up "
            "to 8 MiB of idle slab memory committed beyond them (SlabPool warm_share=None, "
            "retain=8MiB): the default pool before 2026-12-05",
            args=("--retain", "8MiB", "--warm-share", "none"),
        ),
        Mode(
            "arenapool-lean-demand",
            "arenapool",
            "arenapool-lean whose cold blocks fault in page by page as each body is read "
            "into them (SlabPool populate=False), to measure populate",
            args=("--retain", "0", "--no-calibrate", "--no-populate"),
        ),
        Mode(
            "arenapool-msgspec-lean",
            "arenapool-msgspec",
            "arenapool-msgspec with the leanest slab pool (SlabPool retain=0, "
            "calibrate=False): arenapool-lean's pool with msgspec's decoder, which has no "
            "work buffer of its own",
            args=("--retain", "0", "--no-calibrate"),
        ),
        Mode(
            "arenapool-reserves",
            "arenapool",
            "arenapool, only the warm reserves calibrated from the traffic kept committed "
            "when idle: no idle slab memory beyond them (SlabPool retain=0)",
            args=("--retain", "0"),
        ),
        Mode(
            "arenapool-fine",
            "arenapool",
            "arenapool with 4 size classes per doubling from 64 KiB to 1 MiB, as elsewhere "
            "(SlabPool mid_classes=4; the default is 1)",
            args=("--mid-classes", "4"),
        ),
        Mode(
            "arenapool-no-arena-cache",
            "arenapool",
            "arenapool without the governor's cache of pymalloc's freed arenas "
            "(GovernorConfig(arena_cache=None)): pymalloc maps and unmaps them as it does "
            "alone",
            args=("--arena-cache", "none"),
        ),
        Mode(
            "arenapool-no-gc-freeze",
            "arenapool",
            "arenapool whose governor leaves the cyclic collector as it is, without "
            "freezing the objects alive at its start (GovernorConfig(freeze_gc=False))",
            args=("--no-gc-freeze",),
        ),
        Mode(
            "arenapool-gc-full-10",
            "arenapool",
            "arenapool whose governor freezes the objects alive at its start but leaves "
            "CPython's third collection threshold at 10 (GovernorConfig(gc_full_every=None)): "
            "full collections about five times as often as without the freeze",
            args=("--gc-full-every", "none"),
        ),
        Mode(
            "arenapool-gc-young-700",
            "arenapool",
            "arenapool whose governor leaves CPython's first collection threshold at 700 "
            "(GovernorConfig(gc_young_every=None)): young collections walk each decoded "
            "tree while it is built",
            args=("--gc-young-every", "none"),
        ),
        Mode(
            "arenapool-busy-trims",
            "arenapool",
            "arenapool whose governor trims busy whatever the body sizes, as before "
            "GovernorConfig(spread_trim_every=1.0) became the default "
            "(GovernorConfig(spread_trim_every=None))",
            args=("--spread-trim-every", "none"),
        ),
        Mode(
            "arenapool-unsettled-trims",
            "arenapool",
            "arenapool whose governor judges a busy trim only by the RSS drop right after "
            "it, as before 2026-12-06, not again at its next reading "
            "(GovernorConfig(settle_busy_trims=False))",
            args=("--unsettled-busy-trims",),
        ),
        Mode(
            "arenapool-no-gc-tick",
            "arenapool",
            "arenapool whose governor makes no young collection at its check under load, "
            "as before 2026-12-07 (GovernorConfig(gc_young_tick=False))",
            args=("--no-gc-young-tick",),
        ),
        Mode(
            "arenapool-no-swing",
            "arenapool",
            "arenapool whose busy trims pass the threshold and the back-off alone, not the "
            "free heap's swing, as before 2026-12-07 (GovernorConfig(busy_trim_swing=False))",
            args=("--no-busy-trim-swing",),
        ),
        Mode(
            "arenapool-heap-trim",
            "arenapool",
            "arenapool whose governor calls malloc_trim(0) every second under load on the "
            "loop, as the trim loop does, instead of its busy trims "
            "(GovernorConfig(heap_trim_every=1.0)): glibc's thresholds stay dynamic",
            args=("--heap-trim-every", "1"),
        ),
        Mode(
            "arenapool-no-block-cache",
            "arenapool",
            "arenapool with glibc serving the decoder's work buffers, not the governor's "
            "large-block region (GovernorConfig(block_cache=None))",
            args=("--block-cache", "none"),
        ),
        Mode(
            "arenapool-no-spread-bound",
            "arenapool",
            "arenapool whose large-block region keeps its 16 MiB bound warm under a spread "
            "of body sizes too, as before 2026-12-07 (GovernorConfig(block_cache_spread=None))",
            args=("--block-cache-spread", "none"),
        ),
        Mode(
            "arenapool-block-fit",
            "arenapool",
            "arenapool whose governor moves the large-block region's warm bound with the "
            "traffic, up to its 16 MiB (GovernorConfig(block_cache_fit=True))",
            args=("--block-cache-fit",),
        ),
        Mode(
            "arenapool-warm-rate",
            "arenapool",
            "arenapool whose size classes lent fewer than 20 blocks a second keep nothing "
            "warm (SlabPool warm_rate=20): under a mix of sizes, about the leanest pool",
            args=("--warm-rate", "20"),
        ),
        Mode(
            "arenapool-cold-huge",
            "arenapool",
            "arenapool with blocks of 2 MiB and more going back soon after each large body "
            "however often they are lent (SlabPool keep_huge_warm=False)",
            args=("--cold-huge",),
        ),
        Mode(
            "arenapool-keep-pools",
            "arenapool",
            "arenapool, the governor's trims leaving pymalloc's empty pools resident "
            "(GovernorConfig(release_pymalloc=False))",
            args=("--keep-pymalloc-pools",),
        ),
        Mode(
            "arenapool-no-governor",
            "arenapool",
            "arenapool's body path and slab pool without the governor (no trims, no arena "
            "cache, no large-block region, no held heap, no GC freeze): what the governor "
            "costs or saves a request",
            args=("--no-governor",),
        ),
        Mode(
            "arenapool-glibc-heap",
            "arenapool",
            "arenapool, glibc's heap thresholds left dynamic (GovernorConfig(hold_heap=False))",
            args=("--glibc-heap",),
        ),
        Mode(
            "arenapool+thread",
            "arenapool",
            "arenapool in a process that has started one idle thread (the example "
            "service's --idle-thread): glibc's malloc and free then take a lock, as they "
            "did in every arenapool server before its pools ticked on the loop",
            args=("--idle-thread",),
        ),
    ]
    for lib in ("jemalloc", "mimalloc"):
        path = find_library(lib)
        modes.append(
            Mode(
                f"orjson+{lib}",
                "orjson",
                f"orjson handler, LD_PRELOAD={path or lib}",
                env={"LD_PRELOAD": path} if path else {},
                unavailable=None
                if path
                else f"lib{lib} not found (Debian/Ubuntu: apt-get install lib{lib}2)",
            )
        )
    for service in ("orjson", "msgspec"):
        # what GovernorConfig(hold_heap=True) does, without arenapool: glibc's thresholds
        # pinned where its dynamic ones end up at most (arenapool.memory.hold_heap)
        modes.append(
            Mode(
                f"{service}+hold",
                service,
                f"{service} handler, glibc's heap held as arenapool's governor holds it "
                "(MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=64 MiB, "
                "MALLOC_MMAP_MAX_=0)",
                {
                    "MALLOC_MMAP_THRESHOLD_": str(MAX_MMAP_THRESHOLD),
                    "MALLOC_MMAP_MAX_": "0",
                    "MALLOC_TRIM_THRESHOLD_": str(HOLD_TRIM_THRESHOLD),
                },
            )
        )
    for service in ("orjson", "msgspec"):
        # what GovernorConfig.gc_young_every does, without arenapool: CPython's first
        # collection threshold set at startup (the example service's --gc-young-threshold)
        modes.append(
            Mode(
                f"{service}+gc",
                service,
                f"{service} handler, CPython's first collection threshold set to "
                f"{GC_YOUNG_EVERY:,} as arenapool's governor sets it",
                args=("--gc-young-threshold", str(GC_YOUNG_EVERY)),
            )
        )
    modes.append(
        Mode(
            "orjson+thread",
            "orjson",
            "orjson handler in a process that has started one idle thread "
            "(--idle-thread): what glibc's lock on malloc and free costs the baseline",
            args=("--idle-thread",),
        )
    )
    modes.append(
        Mode(
            "orjson+arena2",
            "orjson",
            "orjson handler, MALLOC_ARENA_MAX=2",
            {"MALLOC_ARENA_MAX": "2"},
        )
    )
    gunicorn_missing = None
    if importlib.util.find_spec("gunicorn") is None:
        gunicorn_missing = "gunicorn not installed (pip install 'arenapool[gunicorn]')"
    modes.append(
        Mode(
            "orjson+recycle",
            "orjson",
            f"orjson handler under gunicorn, 1 worker, max_requests={recycle_after}",
            gunicorn_max_requests=recycle_after,
            unavailable=gunicorn_missing,
        )
    )
    return modes


def mode_names() -> list[str]:
    return [m.name for m in _modes(1000)]


MODES = mode_names()


def resolve_modes(
    names: Iterable[str], *, recycle_after: int = 1000
) -> tuple[list[Mode], list[str]]:
    """The named modes that can run here, and a note for each one that cannot
    (``<mode>#2``: a second server of ``<mode>``, :data:`CONTROL`)."""
    known = {m.name: m for m in _modes(recycle_after)}
    modes: list[Mode] = []
    notes: list[str] = []
    for name in names:
        repeated = repeats(name)
        if repeated in known:
            # a second server of the same mode: the same code in another process
            known[name] = replace(
                known[repeated],
                name=name,
                description=f"a second server of {repeated} (an A/A control)",
            )
        if name not in known:
            msg = f"unknown mode {name!r}; choose from {', '.join(known)}"
            raise ValueError(msg)
        mode = known[name]
        if mode.unavailable:
            notes.append(f"skipped {name}: {mode.unavailable}")
        else:
            modes.append(mode)
    return modes, notes
