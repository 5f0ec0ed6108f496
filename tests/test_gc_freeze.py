"""The governor freezes what a server holds at start out of the cyclic collector's sight.

``GovernorConfig(freeze_gc=True)`` (the default) calls
``arenapool.memory.freeze_startup_objects`` as the governor starts: one collection, then
``gc.freeze()``, once per process. Freezing is process-wide and cannot be undone for the
objects it moved, so each case runs in a fresh interpreter: an aiohttp app with
arenapool on 127.0.0.1, one request over a socket, and what the collector sees reported
back as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from _governed import run_python

# Run in a fresh interpreter with the governor config's keywords as argv[1] (JSON).
SERVER = """
import asyncio, gc, json, sys, weakref
import aiohttp
from aiohttp import web
import arenapool, arenapool.aiohttp
from arenapool.memory import freeze_startup_objects


class Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it


made_by_requests = []


async def handler(request):
    node = Node()
    made_by_requests.append(weakref.ref(node))
    return web.json_response({"ok": True})


def seen(obj):
    return any(o is obj for o in gc.get_objects())


async def main():
    app = web.Application()
    app.router.add_get("/work", handler)
    arenapool.aiohttp.setup(app, governor=arenapool.GovernorConfig(**json.loads(sys.argv[1])))
    startup = Node()  # held for the process's life, as a server's own objects are
    before = {"frozen": gc.get_freeze_count(), "seen": seen(startup)}
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/work") as response:
            status = response.status
    gov = app[arenapool.aiohttp.CONFIG_KEY].governor
    stats = gov.stats()
    later = Node()
    gc.collect()
    report = {
        "before": before,
        "status": status,
        "frozen": gc.get_freeze_count(),
        "stats": stats["gc_frozen"],
        "startup_seen": seen(startup),
        "app_seen": seen(app),
        "later_seen": seen(later),
        "request_cycles_left": sum(ref() is not None for ref in made_by_requests),
    }
    # once per process: after the governor's freeze this one freezes nothing more
    report["again"] = freeze_startup_objects()
    report["frozen_after_again"] = gc.get_freeze_count()
    await runner.cleanup()
    print(json.dumps(report))


asyncio.run(main())
"""


def serve(**config: Any) -> dict[str, Any]:
    return run_python(SERVER, json.dumps(config))


def test_the_governor_freezes_what_the_server_holds_at_start() -> None:
    """At start the app and what was made before it leave the collector's sight,
    once: objects made later, and cycles requests leave, are collected as usual."""
    seen = serve()

    assert {"frozen": 0, "seen": True} == seen["before"]
    assert 200 == seen["status"]
    assert seen["frozen"] > 1000  # modules, classes, functions: the interpreter's own too
    # the count the governor recorded, which a second call returns; frozen objects
    # that refcounting frees meanwhile leave the count, nothing new joins it
    assert seen["stats"] == seen["again"] >= seen["frozen"] == seen["frozen_after_again"]
    assert (False, False) == (seen["startup_seen"], seen["app_seen"])
    assert seen["later_seen"]
    assert 0 == seen["request_cycles_left"]


def test_freeze_gc_false_leaves_the_collector_as_it_is() -> None:
    seen = serve(freeze_gc=False)

    assert 200 == seen["status"]
    assert None is seen["stats"]
    assert 0 == seen["frozen"]
    assert (True, True, True) == (seen["startup_seen"], seen["app_seen"], seen["later_seen"])
    assert 0 == seen["request_cycles_left"]
    # the script's own call is then the first in the process, and freezes
    assert seen["again"] == seen["frozen_after_again"] > 1000
