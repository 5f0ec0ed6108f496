"""The governor freezes what a server holds at start out of the cyclic collector's sight.

``GovernorConfig(freeze_gc=True)`` (the default) calls
``arenapool.memory.freeze_startup_objects`` as the governor starts: one collection, then
``gc.freeze()``, once per process; then it spaces full collections out again
(``GovernorConfig.gc_full_every``: CPython's third threshold, unless the process set its
own). Freezing is process-wide and cannot be undone for the objects it moved, so each
case runs in a fresh interpreter: an aiohttp app with arenapool on 127.0.0.1, one
request over a socket, and what the collector sees reported back as JSON.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from _governed import run_python

from arenapool.memory import space_full_collections

# Run in a fresh interpreter with the governor config's keywords as argv[1] (JSON), and
# optionally the thresholds the process sets itself before the app as argv[2] (JSON).
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
    if len(sys.argv) > 2:
        gc.set_threshold(*json.loads(sys.argv[2]))
    app = web.Application()
    app.router.add_get("/work", handler)
    arenapool.aiohttp.setup(app, governor=arenapool.GovernorConfig(**json.loads(sys.argv[1])))
    startup = Node()  # held for the process's life, as a server's own objects are
    before = {
        "frozen": gc.get_freeze_count(),
        "seen": seen(startup),
        "threshold": gc.get_threshold(),
    }
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
        "full_every": stats["gc_full_every"],
        "threshold": gc.get_threshold(),
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


def serve(threshold: tuple[int, int, int] | None = None, **config: Any) -> dict[str, Any]:
    """The report of one server whose governor has ``config``; with ``threshold``, the
    process sets those gc thresholds itself before it builds the app."""
    args = [json.dumps(config)] + ([] if threshold is None else [json.dumps(threshold)])
    return run_python(SERVER, *args)


def test_the_governor_freezes_what_the_server_holds_at_start() -> None:
    """At start the app and what was made before it leave the collector's sight,
    once: objects made later, and cycles requests leave, are collected as usual."""
    seen = serve()

    assert {"frozen": 0, "seen": True, "threshold": [700, 10, 10]} == seen["before"]
    assert 200 == seen["status"]
    assert seen["frozen"] > 1000  # modules, classes, functions: the interpreter's own too
    # the count the governor recorded, which a second call returns; frozen objects
    # that refcounting frees meanwhile leave the count, nothing new joins it
    assert seen["stats"] == seen["again"] >= seen["frozen"] == seen["frozen_after_again"]
    assert (False, False) == (seen["startup_seen"], seen["app_seen"])
    assert seen["later_seen"]
    assert 0 == seen["request_cycles_left"]
    # full collections spaced out again: CPython's third threshold, 10, is now 40
    assert (40, [700, 10, 40]) == (seen["full_every"], seen["threshold"])


def test_gc_full_every_sets_the_third_threshold_as_it_freezes() -> None:
    seen = serve(gc_full_every=25)

    assert seen["frozen"] > 1000
    assert (25, [700, 10, 25]) == (seen["full_every"], seen["threshold"])
    assert 0 == seen["request_cycles_left"]  # cycles that reach the oldest are still freed


def test_gc_full_every_none_leaves_cpythons_threshold() -> None:
    seen = serve(gc_full_every=None)

    assert seen["frozen"] > 1000
    assert (None, [700, 10, 10]) == (seen["full_every"], seen["threshold"])


def test_a_threshold_the_process_set_itself_is_kept() -> None:
    """A server that tuned its own collector keeps its thresholds: only CPython's
    default third threshold is spaced out."""
    seen = serve(threshold=(1000, 15, 5))

    assert seen["frozen"] > 1000
    assert (None, [1000, 15, 5]) == (seen["full_every"], seen["threshold"])


def test_freeze_gc_false_leaves_the_collector_as_it_is() -> None:
    seen = serve(freeze_gc=False)

    assert 200 == seen["status"]
    assert None is seen["stats"]
    assert 0 == seen["frozen"]
    # nothing frozen, nothing to make up for: CPython's own thresholds stay
    assert (None, [700, 10, 10]) == (seen["full_every"], seen["threshold"])
    assert (True, True, True) == (seen["startup_seen"], seen["app_seen"], seen["later_seen"])
    assert 0 == seen["request_cycles_left"]
    # the script's own call is then the first in the process, and freezes
    assert seen["again"] == seen["frozen_after_again"] > 1000


def test_space_full_collections_spaces_cpythons_default_only() -> None:
    """In this process, thresholds put back after: CPython's third threshold is spaced
    out (and again to the same value), one the process set itself is left as it is."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert 30 == space_full_collections(30)
        assert (700, 10, 30) == gc.get_threshold()
        assert 30 == space_full_collections(30)  # what it set already: unchanged
        gc.set_threshold(500, 20, 7)
        assert None is space_full_collections(30)
        assert (500, 20, 7) == gc.get_threshold()
        with pytest.raises(ValueError, match="at least 1"):
            space_full_collections(0)
    finally:
        gc.set_threshold(*saved)
