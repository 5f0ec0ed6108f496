"""``GET /_arenapool/ready``: 200 while this worker takes requests, 503 while it sheds.

For a Kubernetes ``readinessProbe`` or a load balancer's health check. It is cheap (two
attribute reads, no reading of memory), needs no token, and its answer says nothing but
the status: the body is ``ready`` or ``shedding`` and nothing about memory, limits or
routes. :func:`~arenapool.aiohttp.setup` installs it whether or not the admin routes are
on. The handler carries the admin mark, so the arena middleware neither sheds it nor
counts it as a request in flight (a probe must not keep the governor from seeing idle).

A worker sheds while either holds:

- the governor is past its hard watermark (on the process, or on the container's
  memory when the workers share a cgroup) and not yet back under soft;
- the pool's admission queue is *standing* (its CoDel guard turns arrivals away).

:func:`install` (what ``setup()`` calls) also does the two other things a worker
among many needs:

- under gunicorn or any pre-fork server with ``PROMETHEUS_MULTIPROC_DIR`` set, it starts
  this worker's metrics publisher (:func:`arenapool.metrics.publish_forever`), so that a
  scrape of any worker shows every worker and the container's totals;
- it caps aiohttp's read-ahead per connection at :data:`READ_AHEAD` (``read_bufsize``,
  unless the app chose one): aiohttp 3.14 reads up to twice its 256 KiB default ahead
  of the handler into the C heap, outside any budget. Under the issue's burst (256
  connections waiting for budget) that was 180 MiB of RSS over the budget, measured;
  at 64 KiB it was 76 MiB. Once the app has routes judged on their heads (``_heads``),
  its new connections read ahead at aiohttp's default, and each head is given its own:
  the default while the budget's free room holds every body expected so far, 64 KiB
  otherwise (set as the head is appended, after the recv that brought it; that one
  recv is what a queued connection holds either way). A body admitted whole (its arena
  block has room for all of it) reads ahead at aiohttp's default as well
  (``_hotpath.widen_read_ahead``): at 64 KiB every recv of a large body paused and
  resumed the socket's reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ._config import ROUTE_STATS_KEY
from ._responses import ADMIN_MARK

if TYPE_CHECKING:
    from .._governor import Governor
    from .._slabpool import SlabPool
    from ._config import ArenaConfig

__all__ = ["READY_PATH", "add_ready_route", "install", "shedding_reason"]

READY_PATH = "/_arenapool/ready"
#: aiohttp's ``read_bufsize`` (bytes read ahead per connection: up to twice this)
READ_AHEAD = 64 * 1024


def shedding_reason(pool: SlabPool, governor: Governor | None) -> str | None:
    """Why this worker sheds now (``"memory"`` or ``"queue"``), or ``None`` if it does not."""
    if governor is not None and governor.shedding:
        return "memory"
    if not pool.accepting():
        return "queue"
    return None


def add_ready_route(app: web.Application, config: ArenaConfig, path: str = READY_PATH) -> None:
    """Serve ``GET``/``HEAD`` ``path`` from ``config``'s pool and governor."""

    async def ready(request: web.Request) -> web.Response:
        if shedding_reason(config.pool, config.governor) is None:
            return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
        retry = config.governor.retry_after if config.governor is not None else 1.0
        return web.Response(
            status=503,
            text="shedding\n",
            headers={"Cache-Control": "no-store", "Retry-After": str(max(1, round(retry)))},
        )

    setattr(ready, ADMIN_MARK, True)
    app.router.add_get(path, ready)


def install(app: web.Application, config: ArenaConfig) -> None:
    """The readiness route, aiohttp's read-ahead cap, and the multiprocess metrics
    publisher when it applies (see the module docstring)."""
    add_ready_route(app, config)
    handler_args = getattr(app, "_handler_args", None)  # web.Application(handler_args=)
    if handler_args is None:
        app._handler_args = {"read_bufsize": READ_AHEAD}
        config.read_ahead_capped = True
    elif isinstance(handler_args, dict) and "read_bufsize" not in handler_args:
        handler_args["read_bufsize"] = READ_AHEAD
        config.read_ahead_capped = True
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        app.cleanup_ctx.append(_publisher(config))


def _publisher(config: ArenaConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    async def publishing(app: web.Application) -> AsyncIterator[None]:
        try:
            from ..metrics import publish_forever  # noqa: PLC0415 - the optional extra
        except ImportError:  # no prometheus_client: nothing to publish to
            yield
            return
        stats = app.get(ROUTE_STATS_KEY)
        task = asyncio.ensure_future(
            publish_forever(
                slab_pools=[config.pool],
                governor=config.governor,
                routes=None if stats is None else stats.snapshot,
            )
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return publishing
