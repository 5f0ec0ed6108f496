"""The admission predictor: pure logic on an injected clock, no sleeping.

``Sim`` plays the pool: a ticket admitted, its body read (its bytes then lent, counted in
``outside``), and later given back.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from arenapool import BudgetExhausted, SlabPool
from arenapool._admission import Admission, ReturnRate, Ticket, TicketState
from arenapool._errors import PoolClosedError

MiB = 1024 * 1024


class Sim:
    def __init__(self, budget: int, **options: float) -> None:
        self.now = 100.0
        self.lent = 0
        options.setdefault("window", 0.05)  # samples over two returns 40 ms apart
        options.setdefault("min_samples", 1)
        self.admission = Admission(
            budget, outside=lambda: self.lent, clock=lambda: self.now, **options
        )

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def offer(
        self, need: int = 4 * MiB, timeout: float | None = 10.0, within: float | None = None
    ) -> Ticket:
        return self.admission.offer(need, timeout, within)

    def read(self, ticket: Ticket) -> list[Ticket]:
        """The body is in: its bytes are lent, the ticket is done."""
        self.lent += ticket.need
        return self.admission.finish(ticket)

    def serve(self, need: int = 4 * MiB) -> Ticket:
        """Admit and read a request at once (it must fit)."""
        ticket = self.offer(need)
        assert TicketState.ADMITTED == ticket.state
        self.read(ticket)
        return ticket

    def give_back(self, nbytes: int = 4 * MiB) -> list[Ticket]:
        self.lent -= nbytes
        return self.admission.returned(nbytes)

    def warm(self, *, every: float) -> None:
        """Measure a rate of 4 MiB per ``every`` seconds under contention, then drain."""
        budget = self.admission.budget
        while self.lent + 4 * MiB <= budget:
            self.serve()
        queued = [self.offer(timeout=None) for _ in range(4)]
        for ticket in queued:
            self.advance(every)
            self.give_back()
            assert TicketState.ADMITTED == ticket.state
            self.read(ticket)
        while self.lent:
            self.give_back()
        assert not self.admission.queue


def test_fits_is_admitted_at_once() -> None:
    """A request that fits with nothing queued is admitted, with no wait predicted."""
    sim = Sim(16 * MiB)
    ticket = sim.offer(4 * MiB)
    assert (TicketState.ADMITTED, 0.0, 4 * MiB) == (
        ticket.state,
        ticket.predicted_wait,
        sim.admission.admitted,
    )


def test_lent_bytes_count_against_the_budget() -> None:
    """Bytes the pool has lent (bodies read, handlers' allocations) leave less room."""
    sim = Sim(16 * MiB)
    sim.lent = 14 * MiB
    assert TicketState.QUEUED == sim.offer(4 * MiB).state


def test_larger_than_budget_is_refused() -> None:
    """A request larger than the whole budget can never be admitted: refused at once."""
    ticket = Sim(16 * MiB).offer(17 * MiB)
    assert (TicketState.REFUSED, "too-large") == (ticket.state, ticket.reason)


def test_cold_pool_queues_when_no_rate_is_known() -> None:
    """With no return rate measured yet, a request that does not fit waits."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    ticket = sim.offer(4 * MiB)
    assert (TicketState.QUEUED, None) == (ticket.state, ticket.predicted_wait)


def test_rate_is_measured_under_contention_only() -> None:
    """Returns while requests queue give the rate; the window opens at the first one."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.04)
    assert (100 * MiB, 1) == (pytest.approx(sim.admission.rate.value), sim.admission.rate.samples)


def test_returns_without_a_queue_leave_the_rate_alone() -> None:
    """An idle server's returns (nobody waiting) say nothing about its capacity."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.04)
    for _ in range(10):
        sim.serve()
        sim.advance(5.0)
        sim.give_back()
    assert 100 * MiB == pytest.approx(sim.admission.rate.value)


def test_predicted_wait_is_bytes_short_over_rate() -> None:
    """Little's law: the wait is the bytes that must come back first, over the rate."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.04)  # 100 MiB/s
    for _ in range(4):
        sim.serve()
    ahead = sim.offer()
    ticket = sim.offer()
    # 8 MiB queued including itself, nothing free: 8 MiB at 100 MiB/s
    assert (TicketState.QUEUED, 0.04) == (ahead.state, pytest.approx(ahead.predicted_wait))
    assert 0.08 == pytest.approx(ticket.predicted_wait)


def test_predicted_miss_is_refused_at_once() -> None:
    """A request predicted to wait for memory past its timeout is refused without waiting."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.4)  # 10 MiB/s
    for _ in range(4):
        sim.serve()
    verdicts = [sim.offer(timeout=1.0) for _ in range(4)]
    # 4, 8, 12, 16 MiB short at 10 MiB/s: 0.4, 0.8 s fit a 1 s timeout; 1.2, 1.6 s do not
    assert [TicketState.QUEUED] * 2 + [TicketState.REFUSED] * 2 == [v.state for v in verdicts]
    assert ["predicted", "predicted"] == [v.reason for v in verdicts[2:]]


def test_whole_request_deadline_counts_everything_ahead() -> None:
    """With a deadline for the whole request (``within``, a proxy's), it must be done in
    time: all bytes in the pool and queued up to it pass through at the rate first."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.4)  # 10 MiB/s
    sim.serve(4 * MiB)
    assert TicketState.QUEUED == sim.offer(16 * MiB).state
    verdicts = [sim.offer(timeout=30.0, within=3.0) for _ in range(4)]
    # done in (4 + 16 + 4k) / 10 = 2.4, 2.8, 3.2, 3.6 s: the first two make 3 s
    assert [TicketState.QUEUED] * 2 + [TicketState.REFUSED] * 2 == [v.state for v in verdicts]
    assert [0.8, 1.2] == [pytest.approx(v.predicted_wait) for v in verdicts[:2]]  # admitted


def test_arrivals_are_judged_behind_the_bodies_expected_before_them() -> None:
    """A declared body judged as it arrives (``judge``) counts the bodies judged before
    it that have not asked for their tickets yet (``pending``): a burst's tail is refused
    as its heads arrive. Nothing is reserved by a judgement."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.4)  # 10 MiB/s
    admission = sim.admission
    verdicts = []
    for _ in range(6):
        refused = admission.judge(4 * MiB, 1.0)
        verdicts.append(refused)
        if refused is None:
            admission.pending += 4 * MiB
    # 16 MiB free: the first four fit; the fifth and sixth are 4 and 8 MiB short, at
    # 10 MiB/s 0.4 s and 0.8 s, inside the 1 s timeout; the seventh is 12 MiB short: 1.2 s
    assert [None] * 6 == verdicts
    seventh = admission.judge(4 * MiB, 1.0)
    assert seventh is not None
    assert (TicketState.REFUSED, "predicted") == (seventh.state, seventh.reason)
    assert (0, 0) == (admission.unlent, admission.queued)  # judged, nothing reserved


def test_judging_without_a_rate_refuses_only_the_impossible() -> None:
    """A cold pool knows no rate: every arrival goes on to its first step, except one
    larger than the whole budget."""
    admission = Admission(16 * MiB, clock=lambda: 100.0)
    admission.pending = 1024 * MiB
    assert admission.judge(4 * MiB, 1.0) is None
    too_large = admission.judge(32 * MiB, 1.0)
    assert too_large is not None
    assert "too-large" == too_large.reason


def test_refused_ticket_carries_retry_after_of_the_drain() -> None:
    """Retry-After is when the queue ahead of it should have drained, at least 1 s."""
    sim = Sim(16 * MiB)
    sim.warm(every=0.4)  # 10 MiB/s
    for _ in range(4):
        sim.serve()
    for _ in range(6):
        sim.offer()  # 24 MiB queued: 2.4 s
    refused = sim.offer(timeout=0.5)  # 28 MiB short: 2.8 s
    assert (TicketState.REFUSED, 3.0) == (refused.state, refused.retry_after)


def test_return_admits_queue_heads_in_order() -> None:
    """Returned budget goes to the queue head first; the next waits for more."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    big = sim.offer(8 * MiB)
    small = sim.offer(1 * MiB)
    changed = sim.give_back(8 * MiB)
    assert [big] == changed
    assert (TicketState.ADMITTED, TicketState.QUEUED) == (big.state, small.state)


def test_no_overtaking_by_small_requests() -> None:
    """A small request that would fit does not jump a queued larger one."""
    sim = Sim(8 * MiB)
    sim.serve(6 * MiB)
    sim.offer(4 * MiB)
    assert TicketState.QUEUED == sim.offer(1 * MiB).state


def test_admitted_reads_always_fit_together() -> None:
    """Admitted needs plus lent bytes never pass the budget: no admitted read can be
    stuck waiting for another's (the hold-and-wait the issue's burst died of)."""
    sim = Sim(64 * MiB)
    tickets = [sim.offer(4 * MiB, None) for _ in range(40)]
    admitted = [t for t in tickets if t.state is TicketState.ADMITTED]
    assert (16, 64 * MiB) == (len(admitted), sim.admission.admitted + sim.lent)
    while sim.admission.queue or sim.lent or sim.admission.admitted:
        for ticket in [t for t in tickets if t.state is TicketState.ADMITTED]:
            sim.read(ticket)
        assert sim.admission.admitted + sim.lent <= 64 * MiB
        sim.advance(0.01)
        sim.give_back()
    assert {TicketState.RELEASED} == {t.state for t in tickets}


def test_cold_queue_is_judged_once_a_rate_is_measured() -> None:
    """Queued on a cold pool, tickets that cannot make it are refused as soon as the
    returns show the rate, well before their deadline."""
    sim = Sim(8 * MiB)
    sim.serve()
    sim.serve()
    queued = [sim.offer(timeout=2.0) for _ in range(10)]
    assert {TicketState.QUEUED} == {t.state for t in queued}
    sim.advance(0.5)
    sim.give_back()  # the window opens: no rate yet
    sim.read(queued[0])
    sim.advance(0.4)
    changed = sim.give_back()  # 4 MiB in 0.4 s: 10 MiB/s
    refused = [t for t in changed if t.state is TicketState.REFUSED]
    # queued[1] is admitted now, 1.1 s left: at 10 MiB/s 11 MiB more come back in time
    assert (["predicted"] * 6, queued[4:]) == ([t.reason for t in refused], refused)


def test_expired_ticket_is_refused_and_leaves_the_queue() -> None:
    """A queued ticket whose timer fired leaves the queue refused as ``expired``."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    ticket = sim.offer(4 * MiB, 1.0)
    sim.advance(1.0)
    assert [ticket] == sim.admission.cancel(ticket, expired=True)
    assert ("expired", 0, 0) == (ticket.reason, len(sim.admission.queue), sim.admission.queued)


def test_client_leaving_the_queue_lets_the_next_in() -> None:
    """A client leaving the queue frees its place; the one behind it can be admitted."""
    sim = Sim(8 * MiB)
    sim.serve(2 * MiB)
    big = sim.offer(8 * MiB)
    small = sim.offer(4 * MiB)
    assert [big, small] == sim.admission.finish(big)
    assert (TicketState.CANCELLED, TicketState.ADMITTED) == (big.state, small.state)


def test_standing_queue_sheds_new_arrivals() -> None:
    """CoDel: the head queued longer than target for a whole interval: arrivals refused."""
    sim = Sim(8 * MiB, target=0.5, interval=1.0)
    sim.serve(8 * MiB)
    sim.offer(4 * MiB, None)
    sim.advance(1.4)  # above target for 0.9 s: not yet
    assert TicketState.QUEUED == sim.offer(1 * MiB, None).state
    assert sim.admission.accepting()
    sim.advance(0.2)  # above target for 1.1 s
    shed = sim.offer(1 * MiB, None)
    assert (TicketState.REFUSED, "standing-queue") == (shed.state, shed.reason)
    assert not sim.admission.accepting()


def test_shedding_stops_when_the_queue_drains() -> None:
    """Once the queue has drained, the guard lets arrivals in again."""
    sim = Sim(8 * MiB, target=0.5, interval=1.0)
    sim.serve(8 * MiB)
    queued = sim.offer(8 * MiB, None)
    sim.advance(2.0)
    assert not sim.admission.accepting()
    sim.give_back(8 * MiB)
    assert TicketState.ADMITTED == queued.state
    assert sim.admission.accepting()


def test_zero_timeout_never_waits() -> None:
    """``timeout=0``: admitted if it fits now, else refused at once."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    ticket = sim.offer(1 * MiB, 0)
    assert (TicketState.REFUSED, "no-wait") == (ticket.state, ticket.reason)


def test_resize_applies_at_once() -> None:
    """A re-read budget: a larger one admits queued heads, a smaller one refuses tickets
    larger than it."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    queued = sim.offer(4 * MiB)
    assert ([queued], TicketState.ADMITTED) == (sim.admission.resize(12 * MiB), queued.state)
    huge = sim.offer(12 * MiB)
    assert ([huge], "too-large") == (sim.admission.resize(10 * MiB), huge.reason)


def test_rate_ewma_weighs_by_elapsed_time() -> None:
    """A new sample moves the estimate by 1 - exp(-elapsed / tau) of the difference."""
    rate = ReturnRate(tau=1.0, window=0.05)
    rate.returned(10, 0.0, contended=True)  # opens the window
    rate.returned(10, 1.0, contended=True)
    assert 10.0 == rate.value
    rate.returned(30, 2.0, contended=True)
    assert 10.0 + (1 - math.exp(-1.0)) * 20.0 == pytest.approx(rate.value)


def test_stats_count_every_decision() -> None:
    """Admits, waits, tries (asked not to wait) and refusals by reason are counted."""
    sim = Sim(8 * MiB)
    sim.serve(8 * MiB)
    sim.offer(4 * MiB)
    sim.offer(9 * MiB)
    sim.offer(1 * MiB, 0)
    stats = sim.admission.stats()
    assert (1, 1, 1, {"too-large": 1}) == (
        stats["admits"],
        stats["waits"],
        stats["tries"],
        stats["refusals"],
    )


# --------------------------------------------------------------------------- in the pool


async def _read_body(pool: SlabPool, declared: int, done: list[int]) -> None:
    """What the body path does with a large declared body: a first step, then a ticket for
    the whole body before it grows, the growth steps under the ticket, then release."""
    first = await pool.lend_async(256 * 1024, timeout=None)
    ticket = await pool.admit(declared, timeout=None)
    try:
        step = await pool.lend_async(MiB, timeout=None, ticket=ticket)
        pool.give_back([first])
        whole = await pool.lend_async(declared, timeout=None, ticket=ticket)
        pool.give_back([step])
    finally:
        pool.finish(ticket)
    await asyncio.sleep(0)  # the handler runs
    pool.give_back([whole])
    done.append(declared)


async def test_burst_of_growing_bodies_all_finish(make_pool: Callable[..., SlabPool]) -> None:
    """40 bodies of 4 MiB at once on a 32 MiB budget, each holding its first step while it
    asks for more: with admission every one finishes (without, hold-and-wait stalls them
    all until their timeouts), and the pool ends with nothing lent or reserved."""
    pool = make_pool("32MiB")
    done: list[int] = []
    await asyncio.wait_for(
        asyncio.gather(*(_read_body(pool, 4 * MiB, done) for _ in range(40))), 30.0
    )
    stats = pool.stats()
    assert (40, 0, 0, 0) == (
        len(done),
        stats["lent_bytes"],
        stats["admission"]["reserved_bytes"],
        stats["admission"]["queued"],
    )


async def test_expect_counts_until_unexpected(make_pool: Callable[..., SlabPool]) -> None:
    """``SlabPool.expect`` counts a judged body as pending (what ``admit`` will ask for
    it) until ``unexpect``; one larger than the budget is refused at once."""
    pool = make_pool("32MiB")
    need = pool.expect(4 * MiB, timeout=1.0)
    assert need >= 4 * MiB
    assert need == pool.stats()["admission"]["pending_bytes"]
    pool.unexpect(need)
    assert 0 == pool.stats()["admission"]["pending_bytes"]
    with pytest.raises(BudgetExhausted):
        pool.expect(64 * MiB, timeout=1.0)
    assert 0 == pool.stats()["admission"]["pending_bytes"]


async def test_room_kept_for_a_ticket_is_not_lent_to_others(
    make_pool: Callable[..., SlabPool],
) -> None:
    """An admitted body's room stays free for it: a lend without the ticket is refused,
    the same lend under the ticket is served."""
    pool = make_pool("8MiB")
    ticket = await pool.admit(8 * MiB, timeout=0)
    with pytest.raises(BudgetExhausted):
        await pool.lend_async(MiB, timeout=0)
    block = await pool.lend_async(MiB, timeout=0, ticket=ticket)
    assert (MiB, 7 * MiB) == (pool.lent_bytes, pool.stats()["admission"]["reserved_bytes"])
    pool.give_back([block])
    pool.finish(ticket)
    assert 0 == pool.stats()["admission"]["reserved_bytes"]


async def test_ticket_lend_goes_ahead_of_queued_lends(make_pool: Callable[..., SlabPool]) -> None:
    """A lend under a ticket is served before lends without one that queued earlier."""
    pool = make_pool("8MiB")
    ticket = await pool.admit(4 * MiB, timeout=0)
    step = await pool.lend_async(MiB, timeout=0, ticket=ticket)
    held = pool.lend(4 * MiB)  # a handler's own allocation: no ticket, no wait
    other = asyncio.ensure_future(pool.lend_async(4 * MiB, timeout=None))
    await asyncio.sleep(0)
    mine = asyncio.ensure_future(pool.lend_async(4 * MiB, timeout=None, ticket=ticket))
    await asyncio.sleep(0)
    assert (False, False, 2) == (other.done(), mine.done(), pool.stats()["waiting"])
    pool.give_back([held])
    block = await asyncio.wait_for(mine, 5.0)
    assert (False, 1) == (other.done(), pool.stats()["waiting"])
    pool.give_back([step])
    pool.finish(ticket)
    pool.give_back([block, await asyncio.wait_for(other, 5.0)])


async def test_admit_larger_than_budget_is_refused(make_pool: Callable[..., SlabPool]) -> None:
    """A body larger than the whole budget is refused at once with 503's error."""
    pool = make_pool("8MiB")
    with pytest.raises(BudgetExhausted, match="more than the whole budget"):
        await pool.admit(9 * MiB, timeout=10.0)


async def test_queued_admission_left_by_its_client(make_pool: Callable[..., SlabPool]) -> None:
    """A queued admission whose task is cancelled leaves the queue; nothing stays reserved."""
    pool = make_pool("8MiB")
    ticket = await pool.admit(8 * MiB, timeout=0)
    waiting = asyncio.ensure_future(pool.admit(4 * MiB, timeout=None))
    await asyncio.sleep(0)
    assert 1 == pool.stats()["admission"]["queued"]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    pool.finish(ticket)
    assert (0, 0) == (
        pool.stats()["admission"]["queued"],
        pool.stats()["admission"]["reserved_bytes"],
    )


async def test_close_fails_queued_admissions(make_pool: Callable[..., SlabPool]) -> None:
    """Closing the pool fails a queued admission with PoolClosedError."""
    pool = make_pool("8MiB")
    await pool.admit(8 * MiB, timeout=0)
    waiting = asyncio.ensure_future(pool.admit(4 * MiB, timeout=None))
    await asyncio.sleep(0)
    pool.close()
    with pytest.raises(PoolClosedError):
        await asyncio.wait_for(waiting, 5.0)


async def test_accepting_follows_the_codel_guard(make_pool: Callable[..., SlabPool]) -> None:
    """The pool accepts while its admission queue is not standing."""
    pool = make_pool("8MiB")
    assert pool.accepting()
