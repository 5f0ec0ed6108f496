"""A bounded history of readings: fine for the last hour, coarse for the day before.

Theory of operation
-------------------
A :class:`History` keeps a fixed set of numeric ``fields`` per point in two rings of
preallocated ``array`` storage, so its memory is fixed at construction and no point
is ever a Python object (a point would otherwise cost a tuple and a dozen ints, and
show up in every census):

- the *fine* ring holds the last ``fine_points`` points as they were added (one per
  second for an hour by default);
- the *coarse* ring holds one point per ``coarse_interval`` (a minute by default) for
  ``coarse_points`` intervals (a day): the point of that interval with the highest
  ``peak_field`` (RSS), kept whole, so a coarse point's parts still add up and a
  spike is not averaged away.

A query merges them: coarse points older than the oldest fine point, then fine
points, oldest first. ``nbytes`` is the storage (``benchmarks/breakdown_cost.py``
measures the process's RSS around building a full one as well).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["History"]


class _Ring:
    """``capacity`` points of (time, fields...) in two flat arrays."""

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self.width = width
        self.times = array("d", bytes(8 * capacity))
        self.values = array("q", bytes(8 * capacity * width))
        self.head = 0  # index the next point is written at
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.times.itemsize * len(self.times) + self.values.itemsize * len(self.values)

    def push(self, t: float, values: Sequence[int]) -> None:
        self.times[self.head] = t
        base = self.head * self.width
        self.values[base : base + self.width] = array("q", values)
        self.head = (self.head + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def oldest_time(self) -> float | None:
        if not self.count:
            return None
        return self.times[(self.head - self.count) % self.capacity]

    def indices(self) -> list[int]:
        """Slot indices, oldest first."""
        start = (self.head - self.count) % self.capacity
        return [(start + i) % self.capacity for i in range(self.count)]


class History:
    """A bounded, thread-safe history of readings with ``since=`` queries.

    Args:
        fields: the names of the numeric values of each point (ints, bytes).
        fine_points: points kept as added (3600: an hour at one per second).
        coarse_interval: seconds per coarse point.
        coarse_points: coarse points kept (1440: a day of minutes).
        peak_field: the field whose largest value picks each coarse point.
    """

    def __init__(
        self,
        fields: Sequence[str],
        *,
        fine_points: int = 3600,
        coarse_interval: float = 60.0,
        coarse_points: int = 1440,
        peak_field: str | None = None,
    ) -> None:
        if not fields:
            msg = "a history needs at least one field"
            raise ValueError(msg)
        if fine_points < 1 or coarse_points < 0 or coarse_interval <= 0:
            msg = (
                f"fine_points must be at least 1, coarse_points zero or more and "
                f"coarse_interval positive, got {fine_points!r}, {coarse_points!r}, "
                f"{coarse_interval!r}"
            )
            raise ValueError(msg)
        self.fields = tuple(fields)
        self.coarse_interval = coarse_interval
        self._peak = self.fields.index(peak_field) if peak_field is not None else 0
        self._fine = _Ring(fine_points, len(self.fields))
        self._coarse = _Ring(coarse_points, len(self.fields)) if coarse_points else None
        self._bucket = -math.inf  # the coarse interval the pending point belongs to
        self._pending: tuple[float, list[int]] | None = None
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of point storage (fixed at construction)."""
        return self._fine.nbytes + (self._coarse.nbytes if self._coarse else 0)

    def __len__(self) -> int:
        with self._lock:
            fine_oldest = self._fine.oldest_time()
            older = 0
            if self._coarse is not None:
                times = self._coarse.times
                older = sum(
                    1
                    for i in self._coarse.indices()
                    if fine_oldest is None or times[i] < fine_oldest
                )
            return self._fine.count + older

    def __repr__(self) -> str:
        coarse = self._coarse.count if self._coarse else 0
        return (
            f"<History [{self._fine.count}/{self._fine.capacity} fine | "
            f"{coarse} coarse | {self.nbytes} bytes]>"
        )

    def add(self, t: float, values: Mapping[str, int] | Sequence[int]) -> None:
        """Append one point at time ``t`` (seconds; must not go backwards).

        ``values`` is a mapping with every field (extra keys are ignored), or a
        sequence in ``fields`` order.
        """
        row = (
            [int(values[name]) for name in self.fields]
            if isinstance(values, Mapping)
            else [int(v) for v in values]
        )
        if len(row) != len(self.fields):
            msg = f"a point needs {len(self.fields)} values, got {len(row)}"
            raise ValueError(msg)
        with self._lock:
            self._fine.push(t, row)
            if self._coarse is None:
                return
            bucket = math.floor(t / self.coarse_interval)
            if bucket != self._bucket:
                if self._pending is not None:
                    self._coarse.push(*self._pending)
                self._bucket = bucket
                self._pending = (t, row)
            elif self._pending is None or row[self._peak] >= self._pending[1][self._peak]:
                self._pending = (t, row)

    def _merged_indices(self, since: float | None) -> list[tuple[_Ring, int]]:
        fine_oldest = self._fine.oldest_time()
        out: list[tuple[_Ring, int]] = []
        if self._coarse is not None:
            for i in self._coarse.indices():
                t = self._coarse.times[i]
                if fine_oldest is not None and t >= fine_oldest:
                    break
                if since is None or t >= since:
                    out.append((self._coarse, i))
        for i in self._fine.indices():
            if since is None or self._fine.times[i] >= since:
                out.append((self._fine, i))
        return out

    def query(self, since: float | None = None) -> dict[str, Any]:
        """Points at or after ``since`` (all when ``None``), oldest first, as columns.

        ``{"fields": [...], "time": [t, ...], "<field>": [v, ...], ...}``: one list per
        field, ready for JSON and for a chart.
        """
        with self._lock:
            picked = self._merged_indices(since)
            out: dict[str, Any] = {"fields": list(self.fields)}
            out["time"] = [ring.times[i] for ring, i in picked]
            for k, name in enumerate(self.fields):
                out[name] = [ring.values[i * ring.width + k] for ring, i in picked]
            return out

    def points(self, since: float | None = None) -> list[tuple[float, dict[str, int]]]:
        """Points at or after ``since`` as ``(time, {field: value})``, oldest first."""
        with self._lock:
            picked = self._merged_indices(since)
            return [
                (
                    ring.times[i],
                    dict(
                        zip(
                            self.fields,
                            ring.values[i * ring.width : (i + 1) * ring.width],
                            strict=True,
                        )
                    ),
                )
                for ring, i in picked
            ]
