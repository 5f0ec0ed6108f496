"""The governor's trims under load: worth it, paid, backed off (issue 11)."""

from __future__ import annotations

import dataclasses

import pytest
from _memhelpers import MiB, allocate

from arenapool._errors import InvalidSize
from arenapool._governor import Governor, GovernorConfig
from arenapool._trimpolicy import TrimPolicy


def test_a_trim_is_due_only_past_the_threshold() -> None:
    """Below the threshold nothing is due; at it, a trim is due at once (no back-off yet)."""
    policy = TrimPolicy(8 * MiB)
    assert (False, True) == (policy.due(0.0, 8 * MiB - 1), policy.due(0.0, 8 * MiB))


def test_a_trim_that_pays_keeps_the_shortest_interval() -> None:
    """A trim that returned at least min_yield, quickly, lets the next come min_interval later."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    assert policy.record(100.0, freed=4 * MiB, seconds=0.002) is True
    assert (1.0, False, True) == (
        policy.interval,
        policy.due(100.5, 10 * MiB),
        policy.due(101.0, 10 * MiB),
    )


def test_trims_that_do_not_pay_double_the_wait_up_to_the_cap() -> None:
    """Each trim that frees too little doubles the interval, up to max_interval; one that
    pays brings it back to min_interval."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    intervals = []
    for i in range(5):
        policy.record(float(i), freed=1000, seconds=0.001)
        intervals.append(policy.interval)
    assert [2.0, 4.0, 8.0, 8.0, 8.0] == intervals
    stats = policy.stats()
    assert (8.0, 1.0, 8.0) == (stats["interval"], stats["min_interval"], stats["max_interval"])
    assert policy.due(4.0 + 7.9, 10 * MiB) is False
    policy.record(20.0, freed=2 * MiB, seconds=0.001)
    assert (1.0, 1, 6) == (policy.interval, policy.paid, policy.trims)


def test_a_slow_trim_does_not_pay_even_when_it_frees_enough() -> None:
    """A trim that takes more than max_duty of the interval backs off like a fruitless one."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_duty=0.05, min_yield=MiB)
    assert policy.record(0.0, freed=64 * MiB, seconds=0.2) is False
    assert 2.0 == policy.interval


def test_a_paid_trim_whose_return_comes_back_is_revoked() -> None:
    """Settled one reading on: a trim counted as paid whose RSS drop, net of what the heap
    holds again, is under min_yield did not pay. It is revoked and backs off from the
    interval it followed, from when it ended."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    policy.record(10.0, freed=1000, seconds=0.001)  # unpaid: 1 -> 2
    assert policy.record(20.0, freed=4 * MiB, seconds=0.001) is True  # paid: back to 1
    assert policy.settle(back=3 * MiB + MiB // 2) is True  # 0.5 MiB stayed out
    assert (0, 1, 4.0) == (policy.paid, policy.revoked, policy.interval)
    assert (False, True) == (policy.due(23.9, 10 * MiB), policy.due(24.0, 10 * MiB))
    assert 1 == policy.stats()["revoked"]


def test_a_paid_trim_whose_return_stays_out_stays_paid() -> None:
    """A trim whose yield net of what came back is still min_yield stays paid: the next
    may come min_interval later."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    policy.record(0.0, freed=4 * MiB, seconds=0.001)
    assert policy.settle(back=3 * MiB) is False
    assert (1, 0, 1.0, 1.0) == (policy.paid, policy.revoked, policy.interval, policy.next_at)


def test_settling_is_once_and_only_for_a_paid_trim() -> None:
    """An unpaid trim has backed off already: settling it changes nothing; nor does a
    second settle of the same trim, nor one before any trim."""
    policy = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    assert policy.settle(back=0) is False
    policy.record(0.0, freed=1000, seconds=0.001)
    assert (False, 2.0) == (policy.settle(back=0), policy.interval)
    policy.record(5.0, freed=4 * MiB, seconds=0.001)
    assert policy.settle(back=4 * MiB) is True
    assert (False, 4.0, 1) == (policy.settle(back=4 * MiB), policy.interval, policy.revoked)


def test_a_steady_stream_whose_trims_come_back_backs_off() -> None:
    """Every trim returns 4 MiB that the traffic takes straight back: settled, the trims
    back off to max_interval, where unsettled they would come every min_interval."""
    settled = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    unsettled = TrimPolicy(MiB, min_interval=1.0, max_interval=8.0, min_yield=MiB)
    intervals = []
    for policy in (settled, unsettled):
        now = 0.0
        for _ in range(5):
            policy.record(now, freed=4 * MiB, seconds=0.001)
            if policy is settled:
                policy.settle(back=4 * MiB)
            now = policy.next_at
        intervals.append(policy.interval)
    assert [8.0, 1.0] == intervals
    assert (0, 5) == (settled.paid, unsettled.paid)


def test_a_revoked_trim_holds_the_next_until_the_free_heap_outgrows_its_swing() -> None:
    """What the traffic took back of a revoked trim's return is how far its free heap
    swings. For max_interval after it, a trim is due only once the free heap has grown
    past the floor by the threshold plus that swing, at two readings in a row; a trim
    that paid meanwhile (the traffic paused for a moment) does not bring the trims back
    within it. Then the swing is forgotten (and one reading past the threshold will do)."""
    policy = TrimPolicy(2 * MiB, min_interval=1.0, max_interval=32.0, min_yield=MiB)
    policy.record(10.0, freed=12 * MiB, seconds=0.001)
    assert policy.settle(back=12 * MiB, now=11.0) is True
    policy.record(15.0, freed=12 * MiB, seconds=0.001)  # paid: interval back to 1 s
    assert policy.settle(back=0, now=16.0) is False  # stays paid, the swing stays
    readings = [
        policy.due(float(now), free)
        for now, free in enumerate((14 * MiB - 1, 14 * MiB, 4 * MiB, 14 * MiB, 14 * MiB), start=20)
    ]
    # past the bar at one reading (nothing in flight for an instant) is not enough: two
    # in a row are
    assert ([False, False, False, False, True], 4, 12 * MiB) == (
        readings,
        policy.stats()["held_off"],
        policy.stats()["swing_bytes"],
    )
    assert (False, True) == (policy.due(42.9, 4 * MiB), policy.due(43.0, 4 * MiB))


def test_a_policy_told_not_to_learn_the_swing_keeps_none() -> None:
    """learn_swing=False (GovernorConfig(busy_trim_swing=False)): a revoked trim backs
    off as before, and trims past the threshold are due once the back-off allows."""
    policy = TrimPolicy(2 * MiB, min_interval=1.0, max_interval=32.0, learn_swing=False)
    policy.record(10.0, freed=12 * MiB, seconds=0.001)
    assert policy.settle(back=12 * MiB, now=11.0) is True
    assert (0, False, True) == (policy.swing, policy.due(11.9, 2 * MiB), policy.due(12.0, 2 * MiB))


def test_the_swing_is_the_most_that_came_back_lately() -> None:
    """A trim that stays paid sets a swing too, if more came back of it than the swing
    of the last max_interval seconds; less leaves it; after max_interval, any does."""
    policy = TrimPolicy(2 * MiB, min_interval=1.0, max_interval=32.0, min_yield=MiB)
    swings = []
    for now, back in ((10.0, 6 * MiB), (20.0, 3 * MiB), (30.0, 8 * MiB), (70.0, 2 * MiB)):
        policy.record(now, freed=12 * MiB, seconds=0.001)
        assert policy.settle(back=back, now=now + 1) is False  # 4 MiB stayed out at least
        swings.append(policy.swing // MiB)
    assert [6, 6, 8, 2] == swings


def test_policy_rejects_nonsense() -> None:
    """Negative sizes, an empty interval range and a duty outside (0, 1] are refused."""
    for kwargs in (
        {"threshold": -1},
        {"threshold": 1, "min_interval": 0.0},
        {"threshold": 1, "min_interval": 2.0, "max_interval": 1.0},
        {"threshold": 1, "max_duty": 0.0},
    ):
        with pytest.raises(ValueError):
            TrimPolicy(**kwargs)  # type: ignore[arg-type]


def test_config_rejects_a_busy_interval_above_its_cap() -> None:
    """busy_trim_interval must be positive and at most busy_trim_max_interval."""
    with pytest.raises(InvalidSize):
        GovernorConfig(busy_trim_interval=10.0, busy_trim_max_interval=5.0, use_cgroup=False)


def busy_config(busy_trim_interval: float = 60) -> GovernorConfig:
    """A governor that trims busy past 8 MiB of free heap, never idle (an interval of
    60 s leaves room for a trim's time under max_duty on a slow machine)."""
    return GovernorConfig(
        interval=1,
        idle_after=3600,
        use_cgroup=False,
        busy_trim_threshold="8MiB",
        busy_trim_interval=busy_trim_interval,
        busy_trim_max_interval=3600,
    )


async def test_busy_server_is_trimmed_when_the_free_heap_is_worth_it() -> None:
    """With a request in flight, free heap past busy_trim_threshold is trimmed (reason
    "busy"), its yield and time recorded; the next busy trim waits for the interval."""
    governor = Governor(busy_config(busy_trim_interval=3600))
    governor.note_request_start()
    allocate(64 * MiB)  # freed at once, the pins keep the holes in the heap
    await governor.check()
    stats = governor.stats()
    assert (1, "busy") == (stats["trims"], stats["actions"][-1]["reason"])
    busy = stats["busy_trim"]
    assert (1, busy["last_yield"]) == (busy["trims"], stats["actions"][-1]["freed"])
    allocate(64 * MiB)
    await governor.check()  # worth it again, but inside the interval: no trim
    assert 1 == governor.stats()["trims"]
    governor.note_request_end()


async def test_busy_trims_off_means_idle_only() -> None:
    """busy_trim_threshold=None: no busy trims and no busy_trim stats."""
    governor = Governor(GovernorConfig(idle_after=3600, use_cgroup=False, busy_trim_threshold=None))
    governor.note_request_start()
    allocate(64 * MiB)
    await governor.check()
    assert (0, None) == (governor.stats()["trims"], governor.stats()["busy_trim"])
    governor.note_request_end()


async def test_a_busy_trim_whose_pages_the_traffic_takes_back_backs_off() -> None:
    """A real busy trim returns the holes a burst left in the heap; the same allocation
    again (the next requests) faults them back in. The next reading settles the trim:
    revoked, and the next busy trim waits twice the interval. Left alone, it stays paid;
    and with ``settle_busy_trims=False`` it stays paid whatever comes back."""
    config = busy_config()
    taken_back, left = Governor(config), Governor(config)
    unsettled = Governor(dataclasses.replace(config, settle_busy_trims=False))
    held: list[bytes] = []
    for governor in (taken_back, left, unsettled):
        governor.note_request_start()
        allocate(64 * MiB)  # freed at once, the pins keep the holes in the heap
        await governor.check()
        busy = governor.stats()["busy_trim"]
        assert (1, 1, 60.0) == (busy["trims"], busy["paid"], busy["interval"])
        if governor is not left:
            allocate(64 * MiB, keep=held)  # the traffic takes the pages again
        await governor.check()
        governor.note_request_end()
        held.clear()
    revoked = taken_back.stats()
    assert (0, 1, 120.0) == (
        revoked["busy_trim"]["paid"],
        revoked["busy_trim"]["revoked"],
        revoked["busy_trim"]["interval"],
    )
    returns = revoked["heap_returns"]["busy"]
    assert returns["back_bytes"] * 2 > returns["judged_bytes"] > 0
    kept = left.stats()["busy_trim"]
    assert (1, 0, 60.0) == (kept["paid"], kept["revoked"], kept["interval"])
    # settle_busy_trims=False: the rule before, judged by the RSS drop alone
    before = unsettled.stats()
    assert (1, 0, 60.0) == (
        before["busy_trim"]["paid"],
        before["busy_trim"]["revoked"],
        before["busy_trim"]["interval"],
    )
    assert (
        before["heap_returns"]["busy"]["back_bytes"] * 2
        > before["heap_returns"]["busy"]["judged_bytes"]
    )


async def test_a_busy_trim_waits_for_the_free_heap_to_outgrow_its_swing() -> None:
    """A real heap: a busy trim returns 64 MiB of holes and the traffic takes them again
    (revoked: the free heap swings by 64 MiB). Freed once more, the same pages would be
    worth a trim by the threshold alone, but they are the swing: with the back-off
    waived, the governor still holds the trim off. Once 128 MiB more is freed, and
    stays free for a second reading, it trims."""
    governor = Governor(busy_config())
    policy = governor._busy
    assert policy is not None
    held: list[bytes] = []
    governor.note_request_start()
    try:
        allocate(64 * MiB)  # freed at once, the pins keep the holes in the heap
        await governor.check()  # the busy trim
        allocate(64 * MiB, keep=held)  # the traffic takes the pages again
        await governor.check()  # settles it: revoked
        revoked = (policy.revoked, policy.swing >= 32 * MiB)
        held.clear()  # free again: the swing
        policy.next_at = float("-inf")  # waive the back-off: the swing alone holds
        await governor.check()
        held_off = (governor.stats()["trims"], policy.held_off)
        allocate(192 * MiB)  # 128 MiB more than the swing, freed
        await governor.check()  # one reading past it: it might be the swing at its low
        once = governor.stats()["trims"]
        await governor.check()
        grown = governor.stats()["trims"]
    finally:
        governor.note_request_end()
        held.clear()

    assert ((1, True), (1, 1), 1, 2) == (revoked, held_off, once, grown)
