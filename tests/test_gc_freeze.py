"""The governor freezes what a server holds at start out of the cyclic collector's sight.

``GovernorConfig(freeze_gc=True)`` (the default) calls
``arenapool.memory.freeze_startup_objects`` as the governor starts: one collection, then
``gc.freeze()``, once per process; then it spaces full collections out again
(``GovernorConfig.gc_full_every``: CPython's third threshold, unless the process set its
own). Independently it lets more tracked objects come between two young collections
(``GovernorConfig.gc_young_every``: CPython's first threshold, likewise). Freezing is
process-wide and cannot be undone for the objects it moved, so each case runs in a fresh
interpreter: an aiohttp app with arenapool on 127.0.0.1, requests over a socket, and
what the collector sees reported back as JSON.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from typing import Any

import pytest
from _governed import run_python

from arenapool._memory import CPYTHON_FULL_EVERY, CPYTHON_YOUNG_EVERY
from arenapool.memory import space_full_collections, space_young_collections

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


cycles = []


async def make_cycles(request):
    # cyclic garbage: only the collector frees it, when it runs
    for _ in range(50):
        cycles.append(weakref.ref(Node()))
    return web.json_response({"ok": True})


async def tree(request):
    # the young collections that ran while the body's JSON tree was decoded
    before = gc.get_stats()[0]["collections"]
    doc = await arenapool.aiohttp.read_json(request)
    return web.json_response({"young": gc.get_stats()[0]["collections"] - before, "n": len(doc)})


def seen(obj):
    return any(o is obj for o in gc.get_objects())


async def main():
    if len(sys.argv) > 2:
        gc.set_threshold(*json.loads(sys.argv[2]))
    app = web.Application()
    app.router.add_get("/work", handler)
    app.router.add_get("/cycles", make_cycles)
    app.router.add_post("/tree", tree)
    config = json.loads(sys.argv[1])
    arenapool.aiohttp.setup(app, governor=arenapool.GovernorConfig(**config))
    gov = app[arenapool.aiohttp.CONFIG_KEY].governor
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
    # 2,000 containers of JSON: more than CPython's 700, fewer than the governor's 10,000
    body = json.dumps([{"id": i, "tags": ["a", "b"]} for i in range(1000)]).encode()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/work") as response:
            status = response.status
        async with session.post(
            f"http://127.0.0.1:{port}/tree",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response:
            decoded = await response.json()
        for _ in range(40):  # 2,000 cycles, about 4,000 containers, left unreachable
            async with session.get(f"http://127.0.0.1:{port}/cycles") as response:
                assert response.status == 200
    cycles_left = sum(ref() is not None for ref in cycles)
    idle_left = cycles_left
    if "idle_after" in config:
        # wait for the governor's idle spell, or its collection at a check under load,
        # or 20 of its checks without either (bounded: 10 s)
        checks = gov.stats()["checks"]
        for _ in range(200):
            idle_left = sum(ref() is not None for ref in cycles)
            now = gov.stats()
            if idle_left == 0 or now["gc_idle_collections"] or now["gc_tick_collections"]:
                break
            if now["checks"] >= checks + 20:
                break
            await asyncio.sleep(0.05)
        idle_left = sum(ref() is not None for ref in cycles)
    stats = gov.stats()
    later = Node()
    gc.collect()
    report = {
        "before": before,
        "status": status,
        "frozen": gc.get_freeze_count(),
        "stats": stats["gc_frozen"],
        "full_every": stats["gc_full_every"],
        "young_every": stats["gc_young_every"],
        "young_while_decoding": decoded["young"],
        "decoded": decoded["n"],
        "cycles_left_before_collect": cycles_left,
        "cycles_left_after_idle": idle_left,
        "idle_collections": stats["gc_idle_collections"],
        "tick_collections": stats["gc_tick_collections"],
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
    # full collections spaced out again: CPython's third threshold, 10, is now 40; and
    # young ones spaced out: CPython's first, 700, is now 10,000
    assert (40, 10_000, [10_000, 10, 40]) == (
        seen["full_every"],
        seen["young_every"],
        seen["threshold"],
    )


def test_gc_full_every_sets_the_third_threshold_as_it_freezes() -> None:
    seen = serve(gc_full_every=25)

    assert seen["frozen"] > 1000
    assert (25, [10_000, 10, 25]) == (seen["full_every"], seen["threshold"])
    assert 0 == seen["request_cycles_left"]  # cycles that reach the oldest are still freed


def test_gc_full_every_none_leaves_cpythons_threshold() -> None:
    seen = serve(gc_full_every=None)

    assert seen["frozen"] > 1000
    assert (None, [10_000, 10, 10]) == (seen["full_every"], seen["threshold"])


def test_a_decoded_tree_comes_and_goes_between_two_young_collections() -> None:
    """At the governor's 10,000 the 2,000 containers of a decoded body are made without a
    young collection walking them; at CPython's 700 the collector walks the half-built
    tree twice or more while the decoder builds it."""
    spaced = serve()
    cpythons = serve(gc_young_every=None)

    assert (1000, 1000) == (spaced["decoded"], cpythons["decoded"])
    assert 0 == spaced["young_while_decoding"]
    assert cpythons["young_while_decoding"] >= 2
    assert (None, [700, 10, 40]) == (cpythons["young_every"], cpythons["threshold"])


def test_cyclic_garbage_is_still_found_past_gc_young_every() -> None:
    """Spaced out, young collections still run on what outlives requests: the 2,000
    cycles requests leave (about 4,000 containers with their weak references) pass a
    threshold of 1,000, and the collector frees most of them unasked."""
    seen = serve(gc_young_every=1000)

    assert (1000, [1000, 10, 40]) == (seen["young_every"], seen["threshold"])
    assert seen["cycles_left_before_collect"] < 1000
    assert 0 == seen["request_cycles_left"]


def test_an_idle_server_collects_the_cycles_that_waited() -> None:
    """Under the raised threshold cycles can wait; once the server goes idle the governor
    collects the young generations (once per idle spell), so what they held can be given
    back (the collection at a check under load is off here: it would find them first).
    With CPython's threshold left alone it does not."""
    seen = serve(interval=0.05, idle_after=0.2, gc_young_tick=False)
    cpythons = serve(interval=0.05, idle_after=0.2, gc_young_every=None, gc_young_tick=False)

    assert seen["idle_collections"] >= 1
    assert 0 == seen["cycles_left_after_idle"]
    assert 0 == cpythons["idle_collections"]


def test_a_loaded_server_collects_the_cycles_within_a_check() -> None:
    """Under load (never idle here) the raised threshold would let the 2,000 cycles the
    requests left wait for 10,000 containers; the governor's check collects the young
    generation once CPython's own threshold of them has come, so they are freed within
    a check or two. With ``gc_young_tick=False`` they are still there 20 checks later."""
    seen = serve(interval=0.05, idle_after=3600)
    untouched = serve(interval=0.05, idle_after=3600, gc_young_tick=False)

    assert (True, 0, 0) == (
        seen["tick_collections"] >= 1,
        seen["cycles_left_after_idle"],
        seen["idle_collections"],
    )
    assert (0, True) == (
        untouched["tick_collections"],
        untouched["cycles_left_after_idle"] > 1000,
    )


def test_a_threshold_the_process_set_itself_is_kept() -> None:
    """A server that tuned its own collector keeps its thresholds: only CPython's
    default third threshold is spaced out."""
    seen = serve(threshold=(1000, 15, 5))

    assert seen["frozen"] > 1000
    assert (None, None, [1000, 15, 5]) == (
        seen["full_every"],
        seen["young_every"],
        seen["threshold"],
    )


def test_freeze_gc_false_leaves_the_collector_as_it_is() -> None:
    seen = serve(freeze_gc=False)

    assert 200 == seen["status"]
    assert None is seen["stats"]
    assert 0 == seen["frozen"]
    # nothing frozen, nothing to make up for: CPython's own third threshold stays (the
    # first is spaced out all the same: gc_young_every does not depend on the freeze)
    assert (None, 10_000, [10_000, 10, 10]) == (
        seen["full_every"],
        seen["young_every"],
        seen["threshold"],
    )
    assert (True, True, True) == (seen["startup_seen"], seen["app_seen"], seen["later_seen"])
    assert 0 == seen["request_cycles_left"]
    # the script's own call is then the first in the process, and freezes
    assert seen["again"] == seen["frozen_after_again"] > 1000


@pytest.mark.parametrize(
    ("space", "index", "default"),
    [
        (space_full_collections, 2, CPYTHON_FULL_EVERY),
        (space_young_collections, 0, CPYTHON_YOUNG_EVERY),
    ],
    ids=["full", "young"],
)
def test_spacing_changes_cpythons_default_threshold_only(
    space: Callable[[int], int | None], index: int, default: int
) -> None:
    """In this process, thresholds put back after: CPython's default threshold is spaced
    out (and again to the same value), one the process set itself is left as it is."""
    saved = gc.get_threshold()

    def thresholds(value: int) -> tuple[int, int, int]:
        made = [700, 10, 10]
        made[index] = value
        return (made[0], made[1], made[2])

    try:
        gc.set_threshold(*thresholds(default))
        assert 3000 == space(3000)
        assert thresholds(3000) == gc.get_threshold()
        assert 3000 == space(3000)  # what it set already: unchanged
        gc.set_threshold(*thresholds(1234))
        assert None is space(3000)
        assert thresholds(1234) == gc.get_threshold()
        with pytest.raises(ValueError, match="at least 1"):
            space(0)
    finally:
        gc.set_threshold(*saved)
