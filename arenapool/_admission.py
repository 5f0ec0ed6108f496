"""Admission: a request waits for budget only when it is likely to get it in time.

Theory of operation
-------------------
A request whose body will need ``need`` bytes (its declared length, rounded to the block
it ends in) asks :meth:`Admission.offer` before it reads a byte, with its deadline. The
answer is one of:

- **admitted** at once: nothing is queued ahead and ``unlent + outside + need <= budget``;
- **queued**: it is likely to be admitted before its deadline, or nothing is known yet
  about how fast budget comes back;
- **refused** at once: larger than the whole budget, predicted to miss its deadline, or
  the queue is *standing* (the CoDel guard below).

A ticket is taken when a large declared body outgrows its first step (or before that
step, when lends or bodies already wait for memory: then it is judged on arrival), and
held until the body is read (:meth:`Admission.finish` ends it). Reading a large body
takes budget in steps as bytes arrive (the pool never lends for bytes not yet
received), and a request that holds one step while it waits for the next is the
classic hold-and-wait: under a burst every request held a step and waited for a larger
one that nobody could give, until their timeouts (63% of the issue's burst was refused
so). Admitting whole bodies against the budget means every admitted read can finish: the
pool keeps room for the rest of each admitted body (``unlent``) and lends without a
ticket keep clear of it. Taking the ticket at the first growth step when memory is not
contended keeps the slow-sender defence: a client that declares a large body and sends
little holds one first step, as before, and no ticket.

State, changed by the caller under one lock (the pool's): ``admitted`` (the needs of
open tickets) and ``unlent`` (the part of them not lent yet, moved by :meth:`charge`),
the FIFO of queued tickets and the bytes they need, the rate estimate and the CoDel
state. ``outside`` is read from the caller at each decision: the bytes the pool has lent
now. Every method takes ``now`` from the injected clock, so the logic is tested without
sleeping.

**The prediction** is Little's law read for a queue of bytes. A queued request is
admitted after ``short = queued_ahead + need - (budget - unlent - outside)`` bytes come
back: ``wait = short / rate``, refused when past its ``queue_timeout``. When the request
carries a deadline for the whole of it (a proxy's, see ``docs/scaling.md``), it must
also be *done* by then: everything in the pool now and everything queued up to it has
to pass through first, ``done = (outside + unlent + queued_ahead + need) / rate``. The
rate is measured as bytes of finished requests given back per second *while requests
are queued* (:class:`ReturnRate`), smoothed by an EWMA over ``tau`` seconds. While
requests queue the server is saturated, so that is its capacity; time without
contention does not count, so the estimate survives idle gaps and a burst after a quiet
hour is predicted from the last busy one. The rate is trusted after ``min_samples``
windows (3): one window of a cold burst is noise, and refusing on it turned away half
of a burst that then finished in 9 s (measured). With no trusted rate yet, arrivals
queue, and each later return re-judges the queue in order: a ticket whose prediction
overshoots its remaining time is refused then, not when its timer fires.

**The CoDel guard** (Nichols and Jacobson's CoDel, as Facebook applies it to server
queues in *Fail at Scale*): when tickets stay queued longer than ``target`` for a whole
``interval``, the queue is standing rather than absorbing a burst, and new arrivals are
refused at once until the queue drains. It catches what the prediction misses: a rate
that collapsed (a slow downstream, a stalled disk) shows in sojourn times before it
shows in the EWMA. ``target`` defaults to half the default deadline: a queue whose head
waited that long for a whole interval leaves newcomers less than half their time.

**The deadline** (``queue_timeout``, lowered per request by a proxy's own timeout, see
``docs/scaling.md``) is what the predictor plans against, not a wait everyone pays: what
cannot make it is refused at once, so a long deadline costs the refused nothing, while a
short one refuses work that would have finished (the issue's complaint: a 1 s default
refused 63% of a burst that finishes in 10-14 s). 30 s by default: the issue's burst
(256 x 4 MiB on a 256 MiB budget) queues 10-12 s at its back on this 2-core machine,
and a request admitted at the back of a 30 s queue still finishes inside the 60 s
timeouts of nginx (``proxy_read_timeout``) and AWS load balancers. Behind a shorter
proxy (GCP's 30 s backend timeout, Envoy's 15 s route timeout) set it lower, or let the
proxy say: Envoy sends ``x-envoy-expected-rq-timeout-ms``, which lowers the deadline of
that request.
"""

from __future__ import annotations

import contextvars
import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_QUEUE_TIMEOUT",
    "Admission",
    "ReturnRate",
    "Ticket",
    "TicketState",
    "current_ticket",
]

#: Seconds a request may wait for budget by default (see the module docstring).
DEFAULT_QUEUE_TIMEOUT = 30.0

#: The ticket of the body being read in this context: ``SlabPool.lend_async`` lends
#: under it when no ``ticket=`` is given (the body path sets it around its growth
#: steps, which may run in tasks it spawns: they copy the context).
current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "arenapool_ticket", default=None
)


class TicketState(enum.Enum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    REFUSED = "refused"
    RELEASED = "released"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Ticket:
    """One request's claim on the budget, and what was decided about it."""

    need: int
    deadline: float
    """Absolute time (by the admission's clock) after which waiting is pointless."""
    enqueued: float
    done_by: float = math.inf
    """Absolute time by which the whole request must be done (a proxy's deadline)."""
    state: TicketState = TicketState.QUEUED
    reason: str = ""
    """Why it was refused: ``too-large``, ``no-wait``, ``predicted``, ``standing-queue``,
    ``expired``."""
    predicted_wait: float | None = None
    """The wait predicted when last judged (seconds), ``None`` when unknown."""
    retry_after: float = 1.0
    """For a refused ticket: when the queue ahead of it should have drained (seconds)."""
    admitted_at: float | None = None
    held: int = 0
    """Bytes the pool has lent under this ticket now (see :meth:`Admission.charge`)."""
    waiter: object = field(default=None, repr=False)
    """Whatever the caller needs to wake this ticket (a future, a waiter)."""


class ReturnRate:
    """Bytes given back per second while requests queue, smoothed by a time-based EWMA.

    :meth:`returned` records each return and whether requests were queued then. A
    window opens at a return made under contention and closes into a sample once
    ``window`` seconds have passed; the sample moves the estimate by
    ``1 - exp(-elapsed / tau)``, so the past fades with contended time, not with the
    number of samples. A return without contention closes the window unsampled: time
    without a queue says nothing about capacity; so does a gap of more than ``gap``
    seconds between two returns (the caller may not report uncontended ones).

    Opening the window *at* a completion (a return of ``nbytes > 0``; the pool reports
    the steps a growing body outgrows as 0), not when the burst began, keeps the fill
    out of it: the first requests of a burst take their whole read time to come back,
    and a window opened at the burst's start made the rate look 50 times lower than it
    was (measured: 2 MB/s for a server doing 100).
    """

    def __init__(self, *, tau: float = 2.0, window: float = 0.2, gap: float = 2.0) -> None:
        self.tau = tau
        self.window = window
        self.gap = gap
        self.value: float | None = None
        self.samples = 0
        #: when the open window began (``None``: none open); the pool sets it to ``None``
        #: itself on a return without contention, which costs less than a call
        self.start: float | None = None
        self._bytes = 0

    def returned(self, nbytes: int, now: float, *, contended: bool) -> None:
        if not contended:
            self.start = None
            self._bytes = 0
            return
        if self.start is None:
            if nbytes > 0:  # a request done: the window opens at a completion
                self.start = now
            return
        elapsed = now - self.start
        if elapsed > self.gap:  # contention paused in between: start over
            self.start = now
            self._bytes = 0
            return
        self._bytes += nbytes
        if elapsed >= self.window:
            sample = self._bytes / elapsed
            if self.value is None:
                self.value = sample
            else:
                self.value += (1.0 - math.exp(-elapsed / self.tau)) * (sample - self.value)
            self.samples += 1
            self._bytes = 0
            self.start = now


class Admission:
    """The admission ledger, queue, predictor and CoDel guard of one pool (see module).

    ``outside`` returns the bytes the pool has lent now (read at every decision).
    Not thread-safe by itself: the caller holds its pool's lock around every call.
    Methods that change the queue return the tickets whose state changed, for the
    caller to wake.
    """

    def __init__(
        self,
        budget: int,
        *,
        outside: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        target: float | None = None,
        interval: float = 1.0,
        tau: float = 2.0,
        window: float = 0.2,
        min_samples: int = 3,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.budget = budget
        self.outside = outside
        self.clock = clock
        self.target = DEFAULT_QUEUE_TIMEOUT / 2 if target is None else target
        self.interval = interval
        self.rate = ReturnRate(tau=tau, window=window)
        #: samples the rate needs before it is trusted: one window alone is noise
        self.min_samples = min_samples
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.admitted = 0
        self.unlent = 0
        self.queued = 0
        #: the needs of declared bodies judged on arrival (:meth:`judge`) that have not
        #: asked for their ticket yet: they will queue ahead of anything arriving now
        self.pending = 0
        self.queue: deque[Ticket] = deque()
        self.shedding = False
        self._first_above: float | None = None
        # counters
        self.admits = 0
        self.waits = 0
        self.tries = 0
        self.rejudged = 0
        self.refusals: dict[str, int] = {}
        self.sojourn_max = 0.0

    # ------------------------------------------------------------------ the decisions

    def free(self) -> int:
        """Bytes neither lent nor promised to an admitted ticket."""
        return self.budget - self.unlent - self.outside()

    def charge(self, ticket: Ticket, delta: int) -> None:
        """The pool lent (``delta > 0``) or took back (``< 0``) bytes under ``ticket``.

        ``unlent`` is the part of admitted tickets' needs not lent yet: what the pool must
        keep for them. Bytes lent under a ticket count in ``outside`` instead.
        """
        if ticket.state is not TicketState.ADMITTED:
            return
        before = max(0, ticket.need - ticket.held)
        ticket.held += delta
        self.unlent += max(0, ticket.need - ticket.held) - before

    def unlent_of(self, ticket: Ticket | None) -> int:
        """The part of ``ticket``'s need not lent yet (0 for ``None`` or a closed one)."""
        if ticket is None or ticket.state is not TicketState.ADMITTED:
            return 0
        return max(0, ticket.need - ticket.held)

    def head_need(self) -> int:
        """What the first queued ticket needs (0 with nobody queued): lends outside any
        ticket keep that much free, so first steps of bodies still waiting for admission
        cannot eat the room the queue head is waiting for."""
        return self.queue[0].need if self.queue else 0

    def offer(self, need: int, timeout: float | None, within: float | None = None) -> Ticket:
        """Judge a new request needing ``need`` bytes that may wait ``timeout`` seconds
        for memory and, if ``within`` is given, must be done within that many seconds
        (a proxy's or client's own deadline for the whole request)."""
        ticket = self._ticket(need, timeout, within)
        now = ticket.enqueued
        if need > self.budget:
            return self._refuse(ticket, "too-large", now)
        if not self.queue and need <= self.free():
            self._admit(ticket, now)
            return ticket
        if timeout is not None and timeout <= 0:
            return self._refuse(ticket, "no-wait", now)
        self._update_codel(now)
        if self.shedding:
            return self._refuse(ticket, "standing-queue", now)
        if self._hopeless(ticket, self.queued + need, now):
            return self._refuse(ticket, "predicted", now)
        self.queue.append(ticket)
        self.queued += need
        self.waits += 1
        return ticket

    def judge(self, need: int, timeout: float | None, within: float | None = None) -> Ticket | None:
        """Judge a declared body on arrival, before it has sent enough to ask for its
        ticket: the refused ticket if it cannot make its deadline, else ``None`` (the
        caller then adds ``need`` to :attr:`pending` until it asks :meth:`offer`).

        What is ahead of it is everything queued and everything judged before it and
        not yet queued (``pending``): those bodies ask for their tickets first. Nothing
        is reserved, so a slow sender judged here holds no budget; a burst's hopeless
        tail is refused as its heads arrive, not after a round of reading every body's
        first step (measured on 2,048 x 4 MiB: refusals came 1.4 s after arrival).
        """
        ticket = self._ticket(need, timeout, within)
        now = ticket.enqueued
        if need > self.budget:
            return self._refuse(ticket, "too-large", now)
        self._update_codel(now)
        if self.shedding:
            return self._refuse(ticket, "standing-queue", now)
        if self._hopeless(ticket, self.queued + self.pending + need, now):
            return self._refuse(ticket, "predicted", now)
        return None

    def predict(self, bytes_needed: int) -> float | None:
        """Seconds until ``bytes_needed`` bytes fit (``None``: no rate known yet)."""
        short = bytes_needed - self.free()
        if short <= 0:
            return 0.0
        rate = self.trusted_rate()
        return None if rate is None else short / rate

    def predict_done(self, bytes_ahead: int) -> float | None:
        """Seconds until a request with ``bytes_ahead`` queued before it and including
        it is done: everything in the pool now (lent, and kept for admitted bodies) and
        everything queued up to it must pass through at the measured rate first
        (Little's law over the whole pool; ``None``: no rate known yet)."""
        rate = self.trusted_rate()
        return None if rate is None else (self.outside() + self.unlent + bytes_ahead) / rate

    def trusted_rate(self) -> float | None:
        rate = self.rate.value
        if rate is None or rate <= 0 or self.rate.samples < self.min_samples:
            return None
        return rate

    def returned(self, nbytes: int, *, contended: bool = False) -> list[Ticket]:
        """The pool took ``nbytes`` back (``contended``: lends were waiting for memory
        too). Returns the tickets that changed."""
        self.rate.returned(nbytes, self.clock(), contended=contended or bool(self.queue))
        return self.settle() if self.queue else []

    def finish(self, ticket: Ticket) -> list[Ticket]:
        """The ticket's request is done with it: admitted, its read ended (its blocks are
        now counted in ``outside``); queued, its client left. Returns what changed."""
        if ticket.state is TicketState.ADMITTED:
            self.unlent -= max(0, ticket.need - ticket.held)
            ticket.state = TicketState.RELEASED
            self.admitted -= ticket.need
            return self.settle()
        return self.cancel(ticket)

    def cancel(self, ticket: Ticket, *, expired: bool = False) -> list[Ticket]:
        """A queued ticket's time ran out (``expired``) or its client left.

        An admitted ticket is finished instead. Returns the tickets that changed.
        """
        if ticket.state is TicketState.ADMITTED:
            return self.finish(ticket)
        if ticket.state is not TicketState.QUEUED:
            return []
        now = self.clock()
        self._unqueue(ticket)
        if expired:
            self._refuse(ticket, "expired", now)
        else:
            ticket.state = TicketState.CANCELLED
        return [ticket, *self.settle()]

    def settle(self) -> list[Ticket]:
        """Admit queue heads that fit, then refuse queued tickets that can no longer
        make their deadline. Returns the tickets admitted or refused, in order."""
        now = self.clock()
        changed: list[Ticket] = []
        queue = self.queue
        while queue and queue[0].need <= self.free():
            ticket = queue.popleft()
            self.queued -= ticket.need
            self._note_sojourn(now - ticket.enqueued, now)
            self._admit(ticket, now)
            changed.append(ticket)
        if self.trusted_rate() is not None:
            ahead = 0
            for ticket in list(queue):
                if self._hopeless(ticket, ahead + ticket.need, now):
                    self._unqueue(ticket)
                    self.rejudged += 1  # refused after queueing, not on arrival
                    changed.append(self._refuse(ticket, "predicted", now))
                else:
                    ahead += ticket.need
        if not queue:
            self.shedding = False
            self._first_above = None
        return changed

    def resize(self, budget: int) -> list[Ticket]:
        """The budget changed (``budget="auto"`` re-read the limit). Returns changes."""
        self.budget = budget
        changed = []
        for ticket in [t for t in self.queue if t.need > budget]:
            self._unqueue(ticket)
            changed.append(self._refuse(ticket, "too-large", self.clock()))
        return changed + self.settle()

    # ------------------------------------------------------------------ reporting

    def accepting(self) -> bool:
        """False while the CoDel guard sheds new arrivals."""
        self._update_codel(self.clock())
        return not self.shedding

    def stats(self) -> dict[str, object]:
        return {
            "admitted_bytes": self.admitted,
            "reserved_bytes": self.unlent,
            "queued": len(self.queue),
            "queued_bytes": self.queued,
            "pending_bytes": self.pending,
            "return_rate": self.rate.value,
            "rate_samples": self.rate.samples,
            "shedding": self.shedding,
            "admits": self.admits,
            "waits": self.waits,
            "tries": self.tries,
            "rejudged": self.rejudged,
            "refusals": dict(self.refusals),
            "sojourn_max": self.sojourn_max,
        }

    # ------------------------------------------------------------------ internals

    def _ticket(self, need: int, timeout: float | None, within: float | None) -> Ticket:
        """A new ticket dated now, with its deadlines (``offer`` and ``judge``)."""
        now = self.clock()
        deadline = math.inf if timeout is None else now + max(0.0, timeout)
        ticket = Ticket(need, deadline, now)
        if within is not None:
            ticket.done_by = now + max(0.0, within)
        return ticket

    def _hopeless(self, ticket: Ticket, bytes_ahead: int, now: float) -> bool:
        """Predicted to wait past its deadline, or to be done past ``done_by``."""
        wait = ticket.predicted_wait = self.predict(bytes_ahead)
        if wait is not None and now + wait > ticket.deadline:
            return True
        if ticket.done_by == math.inf:
            return False
        done = self.predict_done(bytes_ahead)
        return done is not None and now + done > ticket.done_by

    def _admit(self, ticket: Ticket, now: float) -> None:
        ticket.state = TicketState.ADMITTED
        ticket.admitted_at = now
        if ticket.predicted_wait is None:
            ticket.predicted_wait = 0.0
        self.admitted += ticket.need
        self.unlent += max(0, ticket.need - ticket.held)
        self.admits += 1

    def _refuse(self, ticket: Ticket, reason: str, now: float) -> Ticket:
        ticket.state = TicketState.REFUSED
        ticket.reason = reason
        if reason == "no-wait":  # asked not to wait: a try, not a refusal (the caller
            self.tries += 1  # usually asks again, willing to wait)
        else:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
        drain = self.predict(self.queued + ticket.need)
        retry = self.retry_min if drain is None else drain
        ticket.retry_after = min(self.retry_max, max(self.retry_min, math.ceil(retry)))
        return ticket

    def _unqueue(self, ticket: Ticket) -> None:
        try:
            self.queue.remove(ticket)
        except ValueError:
            return
        self.queued -= ticket.need

    def _note_sojourn(self, sojourn: float, now: float) -> None:
        """CoDel's rule, applied when a ticket leaves the queue admitted."""
        self.sojourn_max = max(self.sojourn_max, sojourn)
        if sojourn < self.target:
            self._first_above = None
            self.shedding = False
        elif self._first_above is None:
            self._first_above = now + self.interval
        elif now >= self._first_above:
            self.shedding = True

    def _update_codel(self, now: float) -> None:
        """The head still waiting counts too: a stuck queue admits nobody to measure."""
        if not self.queue:
            self.shedding = False
            self._first_above = None
            return
        age = now - self.queue[0].enqueued
        if age < self.target:
            return
        if self._first_above is None:
            self._first_above = self.queue[0].enqueued + self.target + self.interval
        if now >= self._first_above:
            self.shedding = True
