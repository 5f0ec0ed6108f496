"""When the governor trims under load: a threshold, each trim's yield, and a back-off.

Theory of operation
-------------------
A busy server frees C heap all the time (a JSON decoder's work buffers, response
bytes), and glibc keeps those pages resident until something calls ``malloc_trim``.
Trimming only when idle leaves them in RSS for as long as the load lasts; trimming on a
fixed clock (the once-a-second loop of aiohttp issue #11043) pays for trims that free
nothing. :class:`TrimPolicy` trims when it is worth it, busy or idle:

- **worth it**: the free-but-held C heap plus idle slab bytes has grown by at least
  ``threshold`` since the last trim (the governor's *reclaimable*, read from
  ``mallinfo2``);
- **paid**: a trim *pays* when it returned at least ``min_yield`` bytes (the RSS drop
  the OS saw) and took at most ``max_duty`` of the current interval;
- **back-off**: after a trim that paid, the next may come ``min_interval`` seconds
  later; after one that did not, the interval doubles, up to ``max_interval``. One
  paying trim brings it back to ``min_interval``;
- **settled**: one reading later the governor sees how much of the trim's return the
  heap holds again (:meth:`TrimPolicy.settle`). Under a steady load the pages a trim
  gives back are often the ones the next requests take again: the RSS drop is real for
  an instant, then the traffic faults it back in. A trim whose yield net of what came
  back is under ``min_yield`` did not pay after all: it is counted so (``revoked``) and
  backs off as if it had not paid. Without this, a steady stream whose every trim
  returns a few MiB that come straight back keeps the interval at ``min_interval`` and
  pays those faults every second (benchmarks/README.md, "Nine rounds a cell, and busy
  trims settled one reading on").
- **swing**: settling a trim also measures how far the traffic's free heap swings:
  what it took back within one interval (``back``) was free at the reading and in use
  again before the next. The free heap read once a second lands anywhere in that
  swing, so its lowest readings set the floor and its highest look like growth by up
  to the swing. For ``max_interval`` seconds after a trim whose return came back, a
  trim is due only once the free heap has grown past the floor by ``threshold`` plus
  the largest such ``back`` in that time: more than the traffic cycles through (a
  burst left it behind, or the traffic shrank), and at two readings in a row: one
  reading that finds nothing in flight at all sees the whole swing free, and a trim
  then returns what the next requests fault straight back in, where a burst's leftovers
  stay free. Without it the back-off alone held the trims off, and it forgets: one trim
  that pays (the traffic paused for a moment) brings the interval back to
  ``min_interval``. Under a steady stream of 1 MiB bodies a server then made a busy
  trim every second or two in its first seconds under load, each one faulted straight
  back in.

The policy holds no clock and does no I/O: the governor passes ``now`` and the
measurements in, so the rules are tested without timing. Its counters (trims, paid,
bytes, seconds, the current interval and its bounds) go into the governor's stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrimPolicy"]


@dataclass
class TrimPolicy:
    """The busy-trim rule and its back-off (see the module docstring)."""

    threshold: int
    min_interval: float = 1.0
    max_interval: float = 32.0
    min_yield: int = 1024 * 1024
    max_duty: float = 0.05
    learn_swing: bool = True  # False: no swing (the threshold and the back-off alone)
    interval: float = field(init=False)
    next_at: float = field(init=False, default=float("-inf"))
    trims: int = field(init=False, default=0)
    paid: int = field(init=False, default=0)
    freed_bytes: int = field(init=False, default=0)
    seconds: float = field(init=False, default=0.0)
    last_yield: int | None = field(init=False, default=None)
    last_seconds: float | None = field(init=False, default=None)
    revoked: int = field(init=False, default=0)
    # the most the traffic took back of a trim's return by the next reading over the
    # last max_interval, and when it was settled: the free heap's swing (0: none known)
    swing: int = field(init=False, default=0)
    swing_at: float = field(init=False, default=float("-inf"))
    # checks at which a trim was due but for the swing
    held_off: int = field(init=False, default=0)
    # readings in a row whose reclaimable passed the bar (threshold, plus the swing)
    _streak: int = field(init=False, default=0, repr=False)
    # the last trim, until settled: when it ended, its RSS drop, and the interval it
    # followed (what an unpaid trim doubles)
    _open: tuple[float, int, float] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.min_yield < 0:
            msg = f"threshold and min_yield must be >= 0, got {self.threshold}, {self.min_yield}"
            raise ValueError(msg)
        if not 0 < self.min_interval <= self.max_interval:
            msg = (
                f"need 0 < min_interval <= max_interval, got {self.min_interval} and "
                f"{self.max_interval}"
            )
            raise ValueError(msg)
        if not 0 < self.max_duty <= 1:
            msg = f"max_duty must be in (0, 1], got {self.max_duty}"
            raise ValueError(msg)
        self.interval = self.min_interval

    def due(self, now: float, reclaimable: int) -> bool:
        """True when a trim is worth it now (call once per reading): enough reclaimable,
        and not backed off. While a swing is known (a trim settled in the last
        ``max_interval`` seconds whose return came back), enough means past the
        threshold plus the swing, at this reading and the one before."""
        swinging = self.swing > 0 and now - self.swing_at < self.max_interval
        bar = self.threshold + self.swing if swinging else self.threshold
        above = reclaimable >= bar
        self._streak = self._streak + 1 if above else 0
        if reclaimable < self.threshold or now < self.next_at:
            return False
        if swinging and self._streak < 2:
            self.held_off += 1
            return False
        return True

    def record(self, now: float, freed: int, seconds: float) -> bool:
        """Record a trim that ended at ``now``; True when it paid. Sets the next slot."""
        paid = freed >= self.min_yield and seconds <= self.max_duty * self.interval
        self._streak = 0
        self.trims += 1
        self.freed_bytes += max(0, freed)
        self.seconds += seconds
        self.last_yield, self.last_seconds = freed, seconds
        before = self.interval
        if paid:
            self.paid += 1
            self.interval = self.min_interval
            self._open = (now, freed, before)
        else:
            self.interval = min(self.max_interval, self.interval * 2)
            self._open = None  # backed off already: nothing to settle
        self.next_at = now + self.interval
        return paid

    def settle(self, back: int, now: float | None = None) -> bool:
        """Settle the last trim one reading on: ``back`` bytes of what it gave back are
        resident again. A trim recorded as paid whose RSS drop net of ``back`` is under
        ``min_yield`` is revoked: counted as not paid, and the next slot is set as if it
        had not paid (the interval it followed, doubled, from when it ended). Either
        way ``back`` becomes the free heap's swing when it is more than the swing of
        the last ``max_interval`` seconds, from ``now`` (the reading's time; when the
        trim ended without it). True when revoked. A second call, or one after a trim
        that did not pay, does nothing."""
        if self._open is None:
            return False
        ended, freed, before = self._open
        self._open = None
        back = max(0, back)
        at = ended if now is None else now
        stale = at - self.swing_at >= self.max_interval
        if self.learn_swing and back and (back > self.swing or stale):
            self.swing, self.swing_at = back, at
        if freed - back >= self.min_yield:
            return False
        self.paid -= 1
        self.revoked += 1
        self.interval = min(self.max_interval, before * 2)
        self.next_at = ended + self.interval
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "interval": self.interval,
            "min_interval": self.min_interval,
            "max_interval": self.max_interval,
            "trims": self.trims,
            "paid": self.paid,
            "revoked": self.revoked,
            "learn_swing": self.learn_swing,
            "swing_bytes": self.swing,
            "held_off": self.held_off,
            "freed_bytes": self.freed_bytes,
            "seconds": round(self.seconds, 6),
            "last_yield": self.last_yield,
            "last_seconds": None if self.last_seconds is None else round(self.last_seconds, 6),
        }
