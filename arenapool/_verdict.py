"""A verdict on a series of breakdowns: is memory growing, held, idle, or steady?

Theory of operation
-------------------
:func:`classify` is a pure function of a series of ``(time, parts)`` points (the parts
of :mod:`arenapool._breakdown`, bytes). It looks at the last ``window`` seconds and,
per part, compares the median of the first quarter of the points with the median of
the last quarter: medians, so one spike (a burst, a census) moves nothing. A change
counts when it is at least ``max(min_change, min_fraction * mean RSS)``.

The kinds, first match wins:

1. ``live_growth``: Python objects or the C heap *in use* grew (and the free parts
   did not grow twice as much): something keeps objects alive (a cache, a leak).
   Look at the census's suspects or a trace window.
2. ``unexplained_growth``: ``unexplained`` grew: memory no allocator here reports
   (an extension's own mappings). A trace window will not see it.
3. ``retention``: the *free but held* parts grew, while in-use did not or grew less
   than half as much (the few live chunks that pin a fragmented heap): the allocators
   keep freed memory. The action names what returns it: for the C heap the governor's
   trim (``malloc_trim``), and ``MALLOC_ARENA_MAX=2`` when threads' malloc arenas hold
   it; for pymalloc, whose arenas no trim reaches, the governor's release of its
   empty pools (``GovernorConfig.release_pymalloc``), and for partly used pools
   nothing short of freeing their objects.
4. ``idle_slabs``: slabs idle but committed stayed high through the last quarter:
   the pool's ``decay``/``retain`` keep them resident; lower them or ``pool.trim()``.
5. ``steady``.

Fewer than 4 points in the window give ``unknown``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._units import format_size

__all__ = ["KINDS", "Verdict", "classify"]

Kind = Literal["live_growth", "unexplained_growth", "retention", "idle_slabs", "steady", "unknown"]

#: Every kind :func:`classify` returns, in order of precedence.
KINDS: Final[tuple[Kind, ...]] = (
    "live_growth",
    "unexplained_growth",
    "retention",
    "idle_slabs",
    "steady",
    "unknown",
)

_LIVE: Final = ("python_in_use", "c_heap_in_use")
_HELD: Final = ("python_free", "c_heap_free")
_MIN_POINTS: Final = 4

Point = tuple[float, Mapping[str, int]]


@dataclass(frozen=True)
class Verdict:
    """What the breakdown's trend says, and what to do about it."""

    kind: Kind
    summary: str
    """One sentence for a person."""
    action: str | None = None
    """What returns the memory (retention, idle slabs) or finds its holder (growth)."""
    changes: Mapping[str, int] = field(default_factory=dict)
    """Per part: median of the last quarter minus median of the first (bytes)."""
    window: float = 0.0
    """Seconds the points span."""
    points: int = 0
    threshold: int = 0
    """The smallest change (bytes) that counted."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "kind": self.kind,
            "summary": self.summary,
            "action": self.action,
            "changes": dict(self.changes),
            "window": self.window,
            "points": self.points,
            "threshold": self.threshold,
        }


def _median_of(points: Sequence[Point], key: str) -> float:
    return statistics.median(p[1].get(key, 0) for p in points)


def classify(  # noqa: PLR0911 - one return per kind, in order of precedence
    series: Sequence[Point],
    *,
    window: float = 600.0,
    min_change: int = 8 * 1024 * 1024,
    min_fraction: float = 0.05,
    thread_heaps: int = 0,
    thread_heap_share: float = 0.0,
) -> Verdict:
    """Classify the trend of ``series`` (``(time, parts)`` points, oldest first).

    Only points within ``window`` seconds of the newest count. ``thread_heaps`` (the
    number of per-thread malloc heaps) and ``thread_heap_share`` (their share of the C
    heap's resident bytes) come from the newest reading's ``details``: when the C heap
    retains and two or more thread heaps hold at least half of it, the action is
    ``MALLOC_ARENA_MAX`` rather than a plain trim.
    """
    if not series:
        return Verdict("unknown", "no readings yet")
    newest = series[-1][0]
    recent = [p for p in series if p[0] >= newest - window]
    if len(recent) < _MIN_POINTS:
        return Verdict(
            "unknown",
            f"{len(recent)} readings in the window; need {_MIN_POINTS}",
            points=len(recent),
        )
    span = recent[-1][0] - recent[0][0]
    quarter = max(1, len(recent) // 4)
    first, last = recent[:quarter], recent[-quarter:]
    names = sorted({k for _, parts in recent for k in parts})
    changes = {k: round(_median_of(last, k) - _median_of(first, k)) for k in names}
    rss = statistics.fmean(sum(parts.values()) for _, parts in recent)
    threshold = max(min_change, round(min_fraction * rss))

    def common(kind: Kind, summary: str, action: str | None) -> Verdict:
        return Verdict(kind, summary, action, changes, span, len(recent), threshold)

    minutes = f"{span / 60:.0f} min" if span >= 90 else f"{span:.0f} s"
    live = sum(changes.get(k, 0) for k in _LIVE)
    held = sum(changes.get(k, 0) for k in _HELD)
    # Freed memory held grows with a little live memory (the pins that fragment a
    # heap): when the held part grew at least twice as much, retention is the story.
    if live >= threshold and held < 2 * live:
        grew = ", ".join(f"{k} +{format_size(changes[k])}" for k in _LIVE if changes.get(k, 0) > 0)
        return common(
            "live_growth",
            f"live memory grew over {minutes}: {grew}",
            "objects are being kept alive: run a census (its suspects list types that "
            "grew in every census) or a trace window to see the allocating lines",
        )
    if changes.get("unexplained", 0) >= threshold:
        return common(
            "unexplained_growth",
            f"memory no allocator reports grew by {format_size(changes['unexplained'])} "
            f"over {minutes}",
            "an extension maps memory of its own; tracemalloc does not see it",
        )
    if held >= threshold:
        c_heap = changes.get("c_heap_free", 0)
        py_free = changes.get("python_free", 0)
        if c_heap >= py_free:
            if thread_heaps >= 2 and thread_heap_share >= 0.5:
                action = (
                    f"glibc holds freed memory in {thread_heaps} per-thread arenas: set "
                    "MALLOC_ARENA_MAX=2 in the environment, and let the governor trim"
                )
            else:
                action = (
                    "glibc holds freed memory: run the Governor (it trims when idle; "
                    "lower GovernorConfig(trim_threshold=...)) or call "
                    "memory.malloc_trim(0); GovernorConfig(mmap_threshold=...) makes "
                    "large buffers unmapped when freed"
                )
            where = f"C heap free but held +{format_size(c_heap)}"
        else:
            action = (
                "pymalloc keeps every arena that holds one live object, and malloc_trim "
                "does not reach it: the governor gives back its empty pools' pages "
                "(GovernorConfig(release_pymalloc=True), memory.release_pymalloc(), where "
                "memory.pymalloc_status() says this process can); partly used pools stay: "
                "keep long-lived objects out of request-time churn (gc.freeze() after "
                "start-up)"
            )
            where = f"pymalloc free +{format_size(py_free)}"
        return common(
            "retention",
            f"freed memory is being held, not returned, over {minutes}: {where}",
            action,
        )
    idle_floor = min(p[1].get("slabs_idle", 0) for p in last)
    if idle_floor >= threshold:
        return common(
            "idle_slabs",
            f"{format_size(idle_floor)} of idle slab blocks stayed committed over the "
            f"last {max(1.0, (last[-1][0] - last[0][0]) / 60):.0f} min",
            "lower SlabPool(decay=..., retain=...) or call pool.trim() when idle",
        )
    return common("steady", f"no part moved by {format_size(threshold)} over {minutes}", None)
