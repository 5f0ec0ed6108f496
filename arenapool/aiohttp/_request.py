"""The per-request state: what the middleware keeps for one request, and how it is found.

A :class:`RequestState` is made by the middleware (or :func:`with_arena`) when a request
comes in, stored in the request under :data:`ARENA_KEY` and set as the provider of
:func:`arenapool.current_arena` for the handler's task. Its arena is made on first use
and released by the middleware when the handler is done; after that (``request`` is
``None``) asking for the arena raises instead of making one nobody would release.

aiohttp keeps a served request alive until its connection's next request arrives, and
what it holds is made by one request and freed by another: under load that sets
CPython's cyclic GC off every few requests (``benchmarks/gc_pressure.py``). So once the
handler is done the request keeps nothing of its own from arenapool: under
:data:`ARENA_KEY` it then holds its route's *served* state (``RouteCounters.served``:
no request, no arena, no body), shared by the route's served requests, and its own
state, arena and body view are freed with the handler's frame.
"""

from __future__ import annotations

from typing import Any, cast

from aiohttp import web

from .. import _arena
from .._arena import Arena
from .._errors import ArenaPoolError, ArenaReleasedError
from ._config import ArenaConfig, RouteCounters


class RequestState:
    """What the middleware keeps per request. The arena is made on first use.

    Made once per request by ``_hotpath.serve_route`` alone, as ``object.__new__``
    and one store per slot, so every slot below is set there. There is no ``__init__``:
    calling the class would run one in a frame of its own (without it,
    ``benchmarks/callgrind_handler.py`` counted about 820 instructions fewer per request).
    """

    __slots__ = (
        "__weakref__",  # (tests see that nothing keeps a served request's state)
        "_arena",
        "body",
        "config",
        "counters",
        "declared",
        "expected",
        "inline",
        "limit",
        "request",
        "route",
    )

    #: the request being served; None once served (no cycle; get no arena after)
    request: web.Request | None
    #: the body's size as declared (None: chunked, content-coded, or no body)
    declared: int | None
    config: ArenaConfig
    counters: RouteCounters
    #: the route's name, as the counters and the arena's name give it
    route: str
    #: the most bytes the request's arena may hold
    limit: int
    _arena: Arena | None
    #: the body read into the arena (``read_body``), once read
    body: memoryview | None
    #: a small body decoded from the bytes aiohttp received it in (``read_json``)
    inline: bytes | None
    #: the body's need counted as expected when its head was judged (``SlabPool.
    #: expect``, by the connection: ``_heads``), handed back by the body's read or
    #: when the request ends
    expected: int

    def release(self, arena: Arena) -> None:
        """Release the request's arena, with the route's arena accounting."""
        counters = self.counters
        counters.observe_arena(arena.high_water)
        escapes_before = arena.escapes
        try:
            arena.release()
        finally:
            counters.escapes += arena.escapes - escapes_before

    @property
    def arena(self) -> Arena:
        arena = self._arena
        if arena is None:
            if self.request is None:  # served: an arena made now would never be released
                msg = (
                    f"the request to {self.route} has finished; its arena is gone. Use "
                    "arenas inside the handler (or a middleware that runs before ours)"
                )
                raise ArenaReleasedError(msg, state="RELEASED", operation="get_arena")
            config = self.config
            arena = self._arena = config.pool.arena(
                limit=self.limit, scrub=config.scrub, name=self.route
            )
        return arena

    def __call__(self) -> Arena:  # the provider current_arena() calls
        return self.arena


_RequestKey = getattr(web, "RequestKey", None)
ARENA_KEY: Any = (
    _RequestKey("arenapool.request", RequestState) if _RequestKey else "arenapool.request"
)


def get_arena(request: web.Request) -> Arena:
    """The arena of this request (from the middleware or :func:`with_arena`)."""
    state = find_state(request)
    if state is None:
        msg = (
            "this request has no arena: call arenapool.aiohttp.setup(app) or decorate the "
            "handler with @with_arena()"
        )
        raise ArenaPoolError(msg)
    return state.arena


def find_state(request: web.Request) -> RequestState | None:
    """This request's state if the middleware or a decorator is serving it.

    The context variable answers for the request being handled in this task (one
    lookup, where ``request.get`` goes through ``Mapping.get`` in Python); the request's
    own slot answers for a request handled elsewhere.
    """
    state = _arena._current.get()
    if type(state) is RequestState and state.request is request:
        return state
    return cast("RequestState | None", request.get(ARENA_KEY))


def require_state(request: web.Request) -> RequestState:
    """This request's state; without one, :class:`ArenaPoolError` says how to get one."""
    state = find_state(request)
    if state is None:
        get_arena(request)  # raises with the explanation
    return state  # type: ignore[return-value]  # get_arena raised
