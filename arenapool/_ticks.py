"""A pool's periodic work: on the event loop that uses the pool, or on a thread of its own.

Theory of operation
-------------------
A slab pool has two kinds of periodic work: its maintenance (decay, retain and
calibration, :mod:`arenapool._decay`) and, with ``budget="auto"``, reading the
container's limit again. Both can run on a daemon thread, and both did. A thread costs
the whole process, not only its own work. Once a process has started a thread, glibc
counts it as multi-threaded for the rest of its life (``__libc_single_threaded`` never
goes back to true), and from then on every ``malloc`` and ``free`` that misses the
thread cache takes its arena's lock with an atomic instruction. A server decoding JSON
makes many such calls: CPython hands strings over 512 bytes and every list's item
array of more than 64 items to ``malloc``. On servers decoding 1 MiB bodies,
``malloc`` and ``_int_free`` took 173-192 us of a request of about 7.9 ms in a process
that had started one idle thread, against 57-71 us in one that had not
(``benchmarks/cpu_split.py`` with the ``+thread`` modes; benchmarks/README.md, "No
threads while serving").

So :func:`every` runs the work as timer callbacks of the event loop running in the
calling thread (:class:`LoopTicks`), and starts a thread only when no loop runs there
(a pool used from plain threads). Loop ticks hold the pool weakly and stop when it
closes or is gone, when ``stop`` is set, or when the pool has handed its work to
another runner (each tick checks that it is still the pool's). A loop that stops
running takes its ticks with it; :func:`serving` then says no, and the pool starts the
work again where it is next needed (see ``SlabPool._start_periodic``).

The ticks run between the loop's other callbacks, so a tick never interrupts a
request: it waits for the callback before it to return. The work is short (a decay
pass walks the pool's idle blocks; reading the limit reads two or three cgroup files).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["LoopTicks", "Runner", "every", "serving"]

log = logging.getLogger("arenapool")


class LoopTicks:
    """``work(owner, now)`` every ``interval`` seconds on ``loop``, while ``owner`` lives.

    ``owner`` is held weakly. The ticks stop when it is gone or ``closed``, when
    ``stop`` is set, or when ``current(owner)`` no longer returns this object (the owner
    gave its work to another runner). An exception in ``work`` is logged and the ticks
    go on, as the thread's loop does.
    """

    __slots__ = (
        "_context",
        "_current",
        "_interval",
        "_owner",
        "_stop",
        "_work",
        "loop",
        "name",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: Any,
        work: Callable[[Any, float], object],
        interval: float,
        *,
        stop: threading.Event,
        current: Callable[[Any], object],
        name: str,
    ) -> None:
        #: the loop the ticks run on
        self.loop = loop
        #: what the ticks do, for ``repr`` and logs
        self.name = name
        self._owner = weakref.ref(owner)
        self._work = work
        self._interval = interval
        self._stop = stop
        self._current = current
        # an empty context: the one current here (a request's, whose return started the
        # ticks) would otherwise be kept alive by every tick, for the pool's life
        self._context = contextvars.Context()
        loop.call_later(interval, self._tick, context=self._context)

    def _tick(self) -> None:
        owner = self._owner()
        if owner is None or owner.closed or self._stop.is_set() or self._current(owner) is not self:
            return
        try:
            self._work(owner, time.monotonic())
        except Exception:  # the thread's loop logs and goes on; so do the ticks
            log.exception("%s: a periodic pass failed", self.name)
        del owner
        self.loop.call_later(self._interval, self._tick, context=self._context)

    def __repr__(self) -> str:
        return f"<LoopTicks {self.name} every {self._interval:g}s>"


#: What runs a pool's periodic work: ticks on a loop, or a thread of its own.
Runner = LoopTicks | threading.Thread


def serving(runner: Runner | None) -> bool:
    """True when ``runner`` will run its work again: a thread, or ticks whose loop runs."""
    if runner is None:
        return False
    if type(runner) is LoopTicks:
        return runner.loop.is_running()
    return True


def every(
    owner: Any,
    interval: float,
    work: Callable[[Any, float], object],
    *,
    stop: threading.Event,
    current: Callable[[Any], object],
    name: str,
    thread: Callable[[], threading.Thread],
) -> Runner:
    """Run ``work(owner, now)`` every ``interval`` seconds: as :class:`LoopTicks` on the
    event loop running in this thread, or, with none running, on the thread that
    ``thread()`` starts and returns."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return thread()
    return LoopTicks(loop, owner, work, interval, stop=stop, current=current, name=name)
