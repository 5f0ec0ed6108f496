"""A hypothesis state machine over three arenas sharing one small pool.

Rules allocate, copy, keep escaped slices, drop them, reset and release arenas, in any
order. After every step: no two live views (escaped slices included) share a byte,
every live view still holds exactly what was written through it, the pool's
accounting balances (lent + idle + quarantined == mapped), the budget holds and no
arena reserves more than a few times what it handed out.
BudgetExhausted is only accepted when the budget really had no room.
"""

from __future__ import annotations

import ctypes
import warnings
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from arenapool import (
    Arena,
    ArenaLimitExceeded,
    BudgetExhausted,
    SlabPool,
    ViewEscapedWarning,
)
from arenapool._arena import FIRST_CHUNK
from arenapool.testing import assert_no_leaks

KiB = 1024
BUDGET = 128 * KiB
LIMIT = 72 * KiB
ARENAS = 3

sizes = st.one_of(
    st.integers(1, 256),
    st.integers(257, 8 * KiB),
    st.integers(8 * KiB, 70 * KiB),  # up to past max_class: dedicated mappings too
)


def address(view: memoryview) -> int:
    probe = ctypes.c_char.from_buffer(view)
    addr = ctypes.addressof(probe)
    del probe
    return addr


@dataclass
class Live:
    """A view we hold, the bytes written through it, and where it lives."""

    view: memoryview
    pattern: bytes
    start: int
    arena: int

    @property
    def end(self) -> int:
        return self.start + len(self.pattern)


class ArenaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = SlabPool(BUDGET, max_class="64KiB", decay=None)
        self.arenas: list[Arena] = [self.pool.arena(limit=LIMIT) for _ in range(ARENAS)]
        self.views: list[Live] = []
        self.escaped: list[Live] = []
        self.counter = 0

    # -- helpers --------------------------------------------------------------------

    def pattern(self, nbytes: int) -> bytes:
        self.counter += 1
        tag = self.counter.to_bytes(4, "little")
        return (tag * (nbytes // 4 + 1))[:nbytes]

    def adopt(self, index: int, view: memoryview, pattern: bytes) -> None:
        live = Live(view, pattern, address(view), index)
        for other in self.views + self.escaped:
            assert live.end <= other.start or other.end <= live.start, "views overlap"
        self.views.append(live)

    def attempt(self, index: int, nbytes: int, action: str) -> None:
        arena = self.arenas[index]
        used, available = arena.used, self.pool.available
        pattern = self.pattern(nbytes)
        failure: Exception | None = None
        try:
            if action == "copy":
                view = arena.copy(pattern)
            else:
                view = arena.alloc(nbytes)
                view[:] = pattern
        except (ArenaLimitExceeded, BudgetExhausted) as exc:
            failure = exc
        if isinstance(failure, ArenaLimitExceeded):
            assert used + nbytes > LIMIT
            event("arena limit exceeded")
            return
        if isinstance(failure, BudgetExhausted):
            assert self.pool.block_size(failure.requested) > available
            assert used == arena.used
            event("budget exhausted")
            return
        assert nbytes == view.nbytes
        self.adopt(index, view, pattern)

    def finish(self, index: int, how: str) -> None:
        arena = self.arenas[index]
        mine = [live for live in self.views if live.arena == index]
        expect_escape = any(live.arena == index for live in self.escaped)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if how == "reset":
                arena.reset()
            else:
                arena.release()
        escaped_warned = any(issubclass(w.category, ViewEscapedWarning) for w in caught)
        assert expect_escape == escaped_warned
        if escaped_warned:
            event("escape quarantined")
        for live in mine:
            with pytest.raises(ValueError):
                live.view[0]
        self.views = [live for live in self.views if live.arena != index]
        for live in self.escaped:
            if live.arena == index:
                live.arena = -1  # now owned by nobody: its block is quarantined
        if how == "release":
            self.arenas[index] = self.pool.arena(limit=LIMIT)

    # -- rules ----------------------------------------------------------------------

    @rule(index=st.integers(0, ARENAS - 1), nbytes=sizes)
    def alloc(self, index: int, nbytes: int) -> None:
        self.attempt(index, nbytes, "alloc")

    @rule(index=st.integers(0, ARENAS - 1), nbytes=sizes)
    def copy(self, index: int, nbytes: int) -> None:
        self.attempt(index, nbytes, "copy")

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def escape(self, data: st.DataObject) -> None:
        """Keep a sub-slice of a live view past its arena's release."""
        live = data.draw(st.sampled_from(self.views))
        cut = data.draw(st.integers(0, len(live.pattern) - 1))
        piece = live.view[cut:]
        self.escaped.append(Live(piece, live.pattern[cut:], live.start + cut, live.arena))

    @precondition(lambda self: self.escaped)
    @rule(data=st.data())
    def drop_escaped(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.escaped) - 1))
        del self.escaped[index]

    @rule(index=st.integers(0, ARENAS - 1))
    def reset(self, index: int) -> None:
        self.finish(index, "reset")

    @rule(index=st.integers(0, ARENAS - 1))
    def release(self, index: int) -> None:
        self.finish(index, "release")

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def contents_are_intact(self) -> None:
        for live in self.views + self.escaped:
            assert live.pattern == bytes(live.view)

    @invariant()
    def accounting_balances(self) -> None:
        stats = self.pool.stats()
        total = stats["lent_bytes"] + stats["idle_bytes"] + stats["quarantined_bytes"]
        assert stats["mapped_bytes"] == total
        assert stats["lent_bytes"] + stats["quarantined_bytes"] <= BUDGET
        assert stats["high_water_lent_bytes"] <= BUDGET
        assert ARENAS == stats["arenas_open"]

    @invariant()
    def arenas_stay_within_limits(self) -> None:
        for arena in self.arenas:
            assert arena.used <= LIMIT
            assert arena.reserved >= arena.used

    @invariant()
    def chunk_waste_is_bounded(self) -> None:
        """Doubling chunks and class rounding hold at most a few times what is used."""
        for arena in self.arenas:
            assert arena.reserved <= 4 * (arena.used + FIRST_CHUNK)

    def teardown(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ViewEscapedWarning)
            for arena in self.arenas:
                arena.release()
        self.views.clear()
        self.escaped.clear()
        assert_no_leaks(self.pool)
        self.pool.close()


ArenaMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_arena_machine = ArenaMachine.TestCase
