"""Refusal on the head: a body that cannot be served is answered by its connection,
before aiohttp makes a request of it.

Theory of operation
-------------------
aiohttp reads every socket that is ready in one turn of the event loop, parsing each
head and feeding the first piece of each body to its stream, and only in the next turn
runs the handlers of those requests. A burst of 2,048 large bodies arriving at once
therefore waits a whole round of reading before the first of them is answered, even by
a handler that refuses without looking (measured: a median 503 of 35-320 ms across
runs on this machine's two cores, ``benchmarks/burst.py``'s ``refuse-floor``). The connection knows
enough before that: the head.

:func:`install` (called by ``setup(app)``, ``refuse_on_head=True``) has the app's server
give each connection a :class:`HeadJudge` as its queue of parsed requests, once the app
has a route to judge (before that, nothing changes and nothing is paid). When aiohttp's
parser appends a head on an idle connection (no request before it still queued or
being served, so answers stay in order), and it declares a body larger than
``FIRST_STEP`` (no chunking, no content coding) for a route whose handler is known to
read its body through arenapool, it is judged at once, as the body read would
(``SlabPool.expect``, the same deadlines): a body over the route's limit is answered
413, one that cannot be admitted in time 503 with ``Retry-After``, in the documented
JSON shape, with ``Connection: close``; the rest of its body is dropped unread and the
connection closed when the client does, or after ``lingering_time``
(``_responses.drop_unread``). No request object, middleware or handler runs for it; the
route's counters and the pool's refusals count it all the same. A body that came whole
in the recv that brought its head is only held to the limit: there is nothing of it
left to refuse before it is read, and its read takes it in one allocation at once, or
queues for room like any other (``_hotpath.read_into_arena``).

A body judged and found admissible is counted as expected (the pool's ``pending``), so
the heads behind it in the same burst see it ahead of them. If every body expected so
far, this one included, fits the budget's free room, its stream reads ahead at aiohttp's
default (``_hotpath.widen_read_ahead``): what those streams buffer is less than their
declared sizes, which the free room bounds. Every other head on a judging connection
(no room, not judged, chunked, queued behind another) is narrowed to ``setup()``'s
64 KiB as it is appended (:func:`narrow_read_ahead`), unless its body is already
whole. A judging connection made after the app's first judged route reads ahead at
aiohttp's default from its start (when
``setup()`` set the 64 KiB, not the app), so a body with room never pauses its reader
for its first recv; what a narrowed head holds is the recv that brought it, as with
64 KiB from the start.
The request takes the count over when the middleware makes its state
(``RequestState.expected``), and gives it back when its body asks for admission or the
request ends. If no middleware takes
it (an earlier middleware answered), the connection gives it back when its next head
arrives or when it closes.

While a burst is refused on its heads, CPython's cyclic garbage collector waits
(:class:`GcHold`): a full collection walks every object the burst's connections made,
and measured on 2,048 x 4 MiB it stopped the event loop for 40-70 ms in the middle of
the refusals, more than the refusals themselves took. It runs again once no head has
been refused for :data:`GC_QUIET` seconds, or after :data:`GC_HOLD_MAX` at the most;
what the burst left in cycles (a cancelled task's traceback) is collected then. A
process that turned the collector off itself is left as it is.

"Known to read its body through arenapool": the body reader (``read_into_arena``)
notes the method, path and limit of each route it reads a large declared body for
(``_config.KNOWN_PATHS`` per app, at most). A path never read that way is never judged on
its head: a handler that streams its body elsewhere is not refused for a budget it
does not use.
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.streams import EmptyStreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .._errors import ArenaPoolError, BudgetExhausted
from ._hotpath import _WIDEN, FIRST_STEP, expect_body, too_large, widen_read_ahead
from ._ready import READ_AHEAD
from ._responses import count_status, drop_unread, error_parts

if TYPE_CHECKING:
    from .._slabpool import SlabPool
    from ._config import ArenaConfig

__all__ = ["GC_HOLD", "GcHold", "HeadJudge", "install"]


#: seconds without a refusal on a head before the cyclic GC runs again
GC_QUIET = 0.2
#: the longest the cyclic GC waits for a burst, in seconds
GC_HOLD_MAX = 2.0


class GcHold:
    """Holds CPython's cyclic GC while heads are being refused (module docstring).

    The end of a hold is watched by a timer thread, not the event loop's timers: the
    collector is the process's, and must run again even if the loop that refused the
    heads stops meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # monotonic time the current hold began
        self.last = 0.0  # monotonic time of the latest refusal
        self.holds = 0  # holds begun
        self.held = 0.0  # seconds held, over ended holds

    def refused(self) -> None:
        """A head was refused: hold the collector (if it runs) until the burst is over."""
        now = self.last = time.monotonic()
        with self._lock:
            if self.since is not None or not gc.isenabled():
                return
            gc.disable()
            self.since = now
            self.holds += 1
        self._watch(GC_QUIET)

    def _watch(self, delay: float) -> None:
        timer = threading.Timer(delay, self._check)
        timer.daemon = True
        timer.start()

    def _check(self) -> None:
        with self._lock:
            since = self.since
            if since is None:
                return
            now = time.monotonic()
            if now - self.last < GC_QUIET and now - since < GC_HOLD_MAX:
                delay = min(GC_QUIET - (now - self.last), GC_HOLD_MAX - (now - since))
            else:
                self.since = None
                self.held += now - since
                gc.enable()
                return
        self._watch(max(delay, 0.001))


#: the one hold (the collector is the process's)
GC_HOLD = GcHold()


_append = collections.deque.append
_STEP_DIGITS = len(str(FIRST_STEP))


class HeadJudge(collections.deque):  # type: ignore[type-arg]
    """A connection's queue of parsed requests (aiohttp's ``RequestHandler._messages``)
    that judges a large declared body's head as aiohttp's parser appends it.

    aiohttp parses what a socket brings and appends each request to this queue, then
    wakes the connection's task, which serves them in order. On an idle connection
    (nothing queued, its task waiting for a request) a head that :meth:`_refused`
    answers is not appended: the connection's task is ended (it would wait for a
    request that never comes) and the connection drops what follows. Anything else is
    appended as aiohttp would. Costs one Python call per request, and only on the
    connections of an app that has routes to judge (:func:`install`).
    """

    __slots__ = ("config", "expected", "protocol", "wide")

    def __init__(
        self, protocol: RequestHandler, config: ArenaConfig, *, wide: bool = False
    ) -> None:
        super().__init__()
        self.protocol: RequestHandler | None = protocol  # None once it has closed
        self.config = config
        #: (pool, need) of the head judged admissible, until its request takes it
        self.expected: tuple[SlabPool, int] | None = None
        #: its connection reads ahead at aiohttp's default: each head that is not given
        #: room is narrowed to setup()'s read-ahead as it is appended
        self.wide = wide

    def append(self, item: Any) -> None:
        protocol = self.protocol
        if self or protocol is None or protocol._waiter is None or protocol._force_close:
            if self.wide:
                narrow_read_ahead(item[1])
            _append(self, item)  # not idle: answered in order, after what is ahead
            return
        if self.expected is not None:
            self.give_back()  # a head before this one that no request took
        payload = item[1]
        if type(payload) is EmptyStreamReader or (
            getattr(payload, "_eof", False) and payload._size <= FIRST_STEP
        ):
            # no body, or one of at most a first step that came whole with its head (the
            # common small request): _refused() would let it through and there is
            # nothing to narrow; two Python calls fewer per request
            _append(self, item)
            return
        if not self._refused(item[0], protocol, payload):
            expected = self.expected
            if expected is not None and expected[0].expected_fit():
                # judged admissible, and every body expected so far fits the budget's
                # free room now: it reads ahead at aiohttp's default from its first byte
                # (what it buffers ahead is less than its own size, and the free room
                # bounds the sum of those)
                widen_read_ahead(payload)
            elif self.wide:
                narrow_read_ahead(payload)
            _append(self, item)
            return
        waiter = protocol._waiter
        protocol._waiter = None  # (so aiohttp does not wake the task for it)
        waiter.cancel()  # the task waits for no request now: it ends

    def take_expected(self, pool: SlabPool) -> int:
        """The need judged on this request's head, for its request to give back (0 if
        none, or if it was judged by another pool: given back here)."""
        held = self.expected
        if held is not None and held[0] is pool:
            self.expected = None
            return held[1]
        self.give_back()
        return 0

    def give_back(self) -> None:
        held = self.expected
        if held is not None:
            self.expected = None
            held[0].unexpect(held[1])

    def _refused(self, message: Any, protocol: RequestHandler, payload: Any) -> bool:
        """Judge ``message``'s head; True when it was answered here. (``payload``: its
        body's stream, which holds what the recv that brought the head brought of it.)"""
        headers = getattr(message, "headers", None)  # None: a parse error's stand-in
        if headers is None:
            return False
        length = headers.get("Content-Length")
        # (fewer digits than FIRST_STEP has: a small body, the common case, ends here)
        if length is None or len(length) < _STEP_DIGITS or not length.isdigit():
            return False
        declared = int(length)
        if declared <= FIRST_STEP or message.chunked or "Content-Encoding" in headers:
            return False
        config = self.config
        route = config.heads.get((message.method, message.url.raw_path))
        # a body that came whole with its head is held to the limit only: nothing of it
        # is left to refuse before it is read, and its read takes it in one allocation
        # at once (or queues for room)
        if route is None or (declared <= route.limit and getattr(payload, "_size", 0) >= declared):
            return False
        error: ArenaPoolError
        if declared > route.limit:
            error = too_large(declared, route.limit, declared=True)
        else:
            pool = config.pool
            try:
                need = expect_body(pool, declared, config.queue_timeout, headers)
            except BudgetExhausted as exc:
                error = exc
            else:
                self.expected = (pool, need)
                return False
        route.counters.requests += 1
        count_status(route.counters, error.status_hint)
        GC_HOLD.refused()
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.write(raw_answer(*error_parts(error)))
            drop_unread(protocol, transport)
        return True


def narrow_read_ahead(content: Any) -> None:
    """setup()'s read-ahead (``_ready.READ_AHEAD``) for a body that was not given room
    on its head; its reader pauses now if the recv that brought its head brought more.

    Not for a body that came whole with its head (its stream at EOF): nothing of it is
    left to read ahead, and the pause it set off cost the reader dearly (aiohttp 3.14
    pauses its parser with the transport): in an ad-hoc A/B under wrk, 200 KiB bodies
    whose heads were not judged, narrowed so, went at about 0.6x the baseline's rate.
    """
    if getattr(content, "_low_water", 0) > READ_AHEAD and not getattr(content, "_eof", False):
        content._low_water = READ_AHEAD
        content._high_water = 2 * READ_AHEAD
        protocol = content._protocol
        if content._size > content._high_water and not protocol._reading_paused:
            protocol.pause_reading()


def raw_answer(status: int, headers: dict[str, str], body: bytes) -> bytes:
    """An error answer (``_responses.error_parts``: its status, its headers beside the
    JSON content type, its JSON body) as HTTP/1.1 bytes, closing the connection: the
    bytes aiohttp would write for ``error_answer``'s response, with no response object
    made (in a burst every refused head pays for it)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {_date()}")
    lines.append(f"Server: {SERVER_SOFTWARE}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: status -> reason phrase, as aiohttp's responses give them
_REASONS = {status.value: status.phrase for status in HTTPStatus}

_DATE: list[Any] = [0, ""]


def _date() -> str:
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0] = now
        _DATE[1] = formatdate(now, usegmt=True)
    return str(_DATE[1])


class _HeadJudgingServer(Server):
    """aiohttp's ``Server`` (the protocol factory), whose connections judge heads once
    the app has routes to judge (:func:`install`)."""

    def __call__(self) -> RequestHandler:
        config: ArenaConfig = self._arenapool_config  # type: ignore[attr-defined]
        if not config.heads:
            return super().__call__()
        wide: dict[str, Any] | None = self._arenapool_wide  # type: ignore[attr-defined]
        if wide is None:
            handler = super().__call__()
        else:  # without setup()'s read_bufsize: aiohttp's own
            kwargs = self._kwargs
            self._kwargs = wide
            try:
                handler = super().__call__()
            finally:
                self._kwargs = kwargs
        handler._messages = HeadJudge(handler, config, wide=wide is not None)
        return handler

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        messages = handler._messages
        if type(messages) is HeadJudge:
            messages.give_back()
            messages.protocol = None  # (the queue and its connection held each other)
        super().connection_lost(handler, exc)

    def judge_heads(self) -> None:
        """The app has its first route to judge: its idle connections judge from now."""
        config: ArenaConfig = self._arenapool_config  # type: ignore[attr-defined]
        for handler in self.connections:
            messages = handler._messages
            if type(messages) is not HeadJudge and not messages:
                handler._messages = HeadJudge(handler, config)


def install(app: web.Application, config: ArenaConfig) -> None:
    """Have the server that runs ``app`` (``AppRunner``, ``run_app``, gunicorn's
    worker, the test server) judge heads on its connections.

    aiohttp has no setting for this: the app's server factory
    (``Application._make_handler``) is wrapped, on this app only, and the server it
    makes gets this module's subclass, which changes nothing until the app has a route
    to judge (the first large body read through arenapool, ``_config.learn``): from then
    on each connection's queue of requests is a :class:`HeadJudge`. A sub-app's setup
    does not reach its parent's server: there the body read judges.
    """
    make = app._make_handler

    def make_handler(**kwargs: Any) -> Server:
        server = make(**kwargs)
        if type(server) is Server:
            server.__class__ = _HeadJudgingServer
            server._arenapool_config = config  # type: ignore[attr-defined]
            wide = None
            if config.read_ahead_capped and _WIDEN:
                wide = {k: v for k, v in server._kwargs.items() if k != "read_bufsize"}
            server._arenapool_wide = wide  # type: ignore[attr-defined]
            config.first_head.append(server.judge_heads)  # type: ignore[attr-defined]
        return server

    # object.__setattr__: aiohttp's debug mode warns on attributes it does not list
    object.__setattr__(app, "_make_handler", make_handler)
