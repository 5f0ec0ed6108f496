"""The bounded history of readings (arenapool._history.History)."""

from __future__ import annotations

import pytest

from arenapool._history import History


def test_fine_points_are_bounded_and_queried_since() -> None:
    """The fine ring keeps its last N points; since= returns those at or after it."""
    history = History(("rss", "a"), fine_points=10, coarse_points=0)
    for i in range(25):
        history.add(float(i), {"rss": i, "a": 2 * i, "ignored": 0})
    assert 10 == len(history)
    got = history.query(since=20.0)
    assert [20.0, 21.0, 22.0, 23.0, 24.0] == got["time"]
    assert [40, 42, 44, 46, 48] == got["a"]
    assert ["rss", "a"] == got["fields"]


def test_older_points_survive_as_the_peak_of_each_interval() -> None:
    """Past the fine ring, one point per coarse interval remains: the one with the
    highest peak field, whole (so its parts still add up)."""
    history = History(("rss", "part"), fine_points=5, coarse_interval=10.0, peak_field="rss")
    for i in range(40):
        rss = 100 + (50 if i % 10 == 3 else 0)
        history.add(float(i), (rss, i))
    points = history.points()
    coarse = [p for p in points if p[0] < 35.0]
    assert [3.0, 13.0, 23.0] == [t for t, _ in coarse]
    assert {"rss": 150, "part": 13} == coarse[1][1]
    assert [35.0, 36.0, 37.0, 38.0, 39.0] == [t for t, _ in points[-5:]]


def test_storage_is_fixed_at_construction() -> None:
    """nbytes is the preallocated arrays' size, the same empty and full."""
    history = History(("rss", "a", "b"), fine_points=3600, coarse_points=1440)
    empty = history.nbytes
    for i in range(6000):
        history.add(float(i), (i, i, i))
    assert empty == history.nbytes
    assert (3600 + 1440) * 8 * 4 == empty


def test_a_point_needs_every_field() -> None:
    """A point with the wrong number of values is refused."""
    history = History(("rss", "a"))
    with pytest.raises(ValueError, match="needs 2 values"):
        history.add(0.0, (1,))
    with pytest.raises(KeyError):
        history.add(0.0, {"rss": 1})
