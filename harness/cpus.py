"""Pinning a server under test and its client to separate CPUs.

Theory of operation
-------------------
On a 2-core machine the scheduler sometimes puts the server and ``wrk`` on the same
core while the other idles: on loopback each one wakes the other with every request,
and the kernel's wake-affine placement pulls the wakee next to the waker.
:func:`split` gives the server one CPU and the client the rest, and :func:`spawn_on`
starts a process on a CPU set: the child inherits the affinity of the thread that forks
it, so the calling thread takes the set for the length of the ``with`` block and gets
its own back after.

Pinning does not stop the larger noise of a shared virtual machine: the hypervisor
running another guest on this guest's CPUs (*steal*). In four A/A runs of 2026-12-03
pinning did not narrow the spread of the rounds, and in a full run the same hour up to
42% of a run's CPU time was stolen (``benchmarks/README.md``, "Pinned rounds, and
steal"). :func:`steal_ticks` reads steal from ``/proc/stat``, so a benchmark can say how
much of each run was stolen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator

__all__ = ["Split", "spawn_on", "split", "steal_ticks"]


class Split:
    """The CPUs for the server under test and for its client (disjoint sets)."""

    __slots__ = ("client", "server")

    def __init__(self, server: frozenset[int], client: frozenset[int]) -> None:
        self.server = server
        self.client = client

    def to_dict(self) -> dict[str, list[int]]:
        """The two sets as sorted lists, for a benchmark's JSON."""
        return {"server": sorted(self.server), "client": sorted(self.client)}


def split() -> Split | None:
    """The last CPU this process may run on for the server, the others for the client;
    ``None`` where there is one CPU only (or no affinity call), so nothing is pinned."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return Split(frozenset(allowed[-1:]), frozenset(allowed[:-1]))


@contextlib.contextmanager
def spawn_on(cpus: Collection[int] | None) -> Iterator[None]:
    """Processes started in the block run on ``cpus`` (``None``: no change).

    The calling thread runs on ``cpus`` meanwhile; start only the processes meant for
    them inside the block.
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def steal_ticks(cpus: Collection[int] | None = None) -> tuple[int, int]:
    """(steal, all) clock ticks so far on ``cpus`` (``None``: every CPU), from
    ``/proc/stat``: the time the hypervisor ran something else while these virtual CPUs
    had work, and all their time. Two readings' difference gives a run's steal share."""
    want = None if cpus is None else {f"cpu{c}" for c in cpus}
    steal = total = 0
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            if (want is None and name == "cpu") or (want is not None and name in want):
                # user nice system idle iowait irq softirq steal (guest time is in user)
                ticks = [int(x) for x in fields[:8]]
                steal += ticks[7]
                total += sum(ticks)
    return steal, total
