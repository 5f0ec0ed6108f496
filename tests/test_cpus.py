"""Pinning a server under test and its client to separate CPUs (``harness.cpus``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import psutil  # type: ignore[import-untyped]

from harness.cpus import spawn_on, split, steal_ticks
from harness.modes import resolve_modes
from harness.server import Server
from harness.workload import make_body
from harness.wrk import deck_files, run_wrk

AFFINITY = "import os; print(' '.join(map(str, sorted(os.sched_getaffinity(0)))))"


def test_split_gives_the_server_one_cpu_and_the_client_the_rest() -> None:
    """The server's set and the client's are disjoint, cover every CPU this process may
    use, and the server has one; with a single CPU nothing is pinned."""
    allowed = os.sched_getaffinity(0)
    cpus = split()
    if len(allowed) < 2:
        assert cpus is None
        return
    assert cpus is not None
    assert 1 == len(cpus.server)
    assert not cpus.server & cpus.client
    assert allowed == cpus.server | cpus.client
    assert {"server": sorted(cpus.server), "client": sorted(cpus.client)} == cpus.to_dict()


def test_a_process_started_in_spawn_on_runs_on_those_cpus() -> None:
    """A child started inside the block runs on the given set; the caller gets its own
    set back after, and a child started after it is not pinned."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    with spawn_on({cpu}):
        inside = subprocess.run([sys.executable, "-c", AFFINITY], capture_output=True, check=True)
    after = subprocess.run([sys.executable, "-c", AFFINITY], capture_output=True, check=True)
    assert [cpu] == [int(c) for c in inside.stdout.split()]
    assert allowed == os.sched_getaffinity(0)
    assert sorted(allowed) == [int(c) for c in after.stdout.split()]


def test_spawn_on_none_changes_nothing() -> None:
    """``None`` leaves the affinity as it is."""
    allowed = os.sched_getaffinity(0)
    with spawn_on(None):
        assert allowed == os.sched_getaffinity(0)
    assert allowed == os.sched_getaffinity(0)


async def test_a_pinned_server_serves_from_its_cpu_and_wrk_from_the_others() -> None:
    """A Server given CPUs runs there, every thread of it, and answers; wrk run with the
    client's set drives it with no errors (bodies over the inline size go through the
    slab pool, whose maintenance ticks on the server's loop: one thread in all)."""
    cpus = split()
    server_cpus = cpus.server if cpus is not None else frozenset(os.sched_getaffinity(0))
    client_cpus = cpus.client if cpus is not None else None
    mode = resolve_modes(["arenapool"])[0][0]
    with Server(mode, limit="1MiB", cpus=server_cpus) as running:
        assert running.proc is not None  # started, and answered /health
        pid = running.proc.pid
        process = psutil.Process(pid)
        deck = [make_body(size, random.Random(size)) for size in (300, 100_000)]
        with deck_files(deck) as (script, bodies):
            result = await run_wrk(
                running.port, script, bodies, duration=1, connections=2, cpus=client_cpus
            )
        threads = [t.id for t in process.threads()]
        affinities = {tid: frozenset(os.sched_getaffinity(tid)) for tid in threads}
    assert (0, 0) == (result.status_errors, result.socket_errors)
    assert result.requests > 0
    assert [pid] == threads  # no thread besides the loop's (test_threads.py)
    assert all(server_cpus == a for a in affinities.values()), affinities


def test_steal_ticks_count_up_and_stay_within_the_cpus_time() -> None:
    """Steal is part of the CPUs' time, both only grow, and one CPU's time is part of
    every CPU's."""
    cpu = max(os.sched_getaffinity(0))
    steal, total = steal_ticks()
    one_steal, one_total = steal_ticks({cpu})
    sum(range(200_000))  # let the clock tick on
    later_steal, later_total = steal_ticks()
    assert 0 <= steal <= total
    assert 0 <= one_steal <= one_total <= total
    assert later_total >= total
    assert later_steal >= steal
