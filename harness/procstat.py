"""A process's CPU time and page faults, from ``/proc/PID/stat`` (Linux).

The kernel's own counters for one process (all its threads): minor and major page
faults, user and system CPU time. Benchmarks read them before and after a load and
divide the difference by the requests served.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

__all__ = ["ProcStat", "read_stat", "wait_quiet"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    """Counters of one process at one moment (CPU in seconds)."""

    minflt: int
    majflt: int
    utime: float
    stime: float

    @property
    def cpu(self) -> float:
        return self.utime + self.stime

    def __sub__(self, other: ProcStat) -> ProcStat:
        return ProcStat(
            self.minflt - other.minflt,
            self.majflt - other.majflt,
            self.utime - other.utime,
            self.stime - other.stime,
        )


def read_stat(pid: int) -> ProcStat:
    """``/proc/PID/stat``'s minflt, majflt, utime and stime (fields 10, 12, 14, 15).

    The command name (field 2) is in parentheses and may hold spaces, so the fields
    are counted from the last ``)``.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        text = f.read().decode()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): field n is fields[n - 3]
    return ProcStat(
        minflt=int(fields[7]),
        majflt=int(fields[9]),
        utime=int(fields[11]) / _TICK,
        stime=int(fields[12]) / _TICK,
    )


async def wait_quiet(
    pid: int, *, interval: float = 0.1, busy: float = 0.01, limit: float = 3.0
) -> float | None:
    """Wait until process ``pid`` used at most ``busy`` seconds of CPU over one
    ``interval`` (it has finished what it was doing: the requests a client that stopped
    left in flight); the seconds waited, or ``None`` if it was still busy after
    ``limit`` seconds. A bounded poll of its CPU time (10 ms ticks), no signal."""
    started = time.monotonic()
    last = read_stat(pid).cpu
    while time.monotonic() - started < limit:
        await asyncio.sleep(interval)
        now = read_stat(pid).cpu
        if now - last <= busy:
            return time.monotonic() - started
        last = now
    return None
