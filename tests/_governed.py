"""Helpers for the tests of the governor's process-wide memory settings (the arena
cache, the large-block region): a script run in a fresh interpreter, and a real server
whose governor the test drives by hand, decoding large JSON bodies.

The server reads each body with ``read_json`` and answers how
many items the document's ``key`` holds; its governor checks once at start-up and then
not for 60 s, and has no trim to start (neither idle nor busy), so that check has no
await in it and cannot give back, from a worker thread, what the requests have just
cached: only the test's own ``governor.check()`` does.

A slab pool's calibration can be driven by hand too (:func:`hand_calibrated`,
:func:`lend_and_calibrate`): real lends, then the pool's own maintenance pass as of a
given time, so that what the pool concludes (:attr:`SlabPool.spread`) comes from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import arenapool.aiohttp
from arenapool import Governor, GovernorConfig, SlabPool, _decay
from arenapool.metrics import register

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def governed_decoder(
    aiohttp_client: ClientFactory,
    name: str,
    key: str,
    *,
    pool: SlabPool | None = None,
    **settings: Any,
) -> tuple[TestClient[Any, Any], Governor]:
    """The client of a server as above (its pool named ``name``, unless ``pool`` is
    given) and its governor, configured with ``settings`` on top of the hand-driven
    ones."""
    pool = pool or SlabPool("64MiB", name=name)
    config = GovernorConfig(
        interval=60,
        idle_after=0,
        use_cgroup=False,
        trim_threshold="1GiB",
        busy_trim_threshold=None,
        **settings,
    )
    governor = Governor(config, pools=[pool])
    app = web.Application()

    async def ingest(request: web.Request) -> web.Response:
        doc = await arenapool.aiohttp.read_json(request)
        return arenapool.aiohttp.json_response({"count": len(doc[key])})

    app.router.add_post("/ingest", ingest)
    arenapool.aiohttp.setup(app, pool=pool, limit="8MiB", governor=governor)
    return await aiohttp_client(app), governor


async def post_times(client: TestClient[Any, Any], body: bytes, times: int, count: int) -> None:
    """POST ``body`` ``times`` times; each answer must be 200 with ``count``."""
    for _ in range(times):
        async with client.post("/ingest", data=body) as resp:
            assert 200 == resp.status
            assert {"count": count} == await resp.json()


def hand_calibrated(pool: SlabPool) -> float:
    """Make this thread ``pool``'s maintenance thread (a pool made with ``decay=None``,
    so no thread of its own runs its passes) and start its calibration window now;
    returns that start, from which :func:`lend_and_calibrate` dates its passes."""
    pool._maintainer = threading.current_thread()
    start = time.monotonic()
    pool._calibrated_at = start
    return start


def lend_and_calibrate(pool: SlabPool, sizes: list[int], waves: int, at: float) -> bool:
    """``waves`` times, lend a block of each of ``sizes`` at once and give them back;
    then run the pool's maintenance pass as of ``at`` (a calibration over the lends
    since the last one) and return :attr:`SlabPool.spread` after it."""
    for _ in range(waves):
        pool.give_back([pool.lend(size) for size in sizes])
    _decay.maintain(pool, at)
    return pool.spread


def scrape(governor: Governor) -> dict[str, float]:
    """The governor's Prometheus samples, by name (and ``name{label=value,...}`` for a
    sample with labels, so that each of a family's samples is there)."""
    registry = CollectorRegistry()
    register(registry, governor=governor)
    return {
        sample.name
        + (
            "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
            if sample.labels
            else ""
        ): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def run_python(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (with pymalloc, whatever this one uses) and
    return the JSON it prints; it must exit 0 with nothing on stderr."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONMALLOC": "pymalloc"},
    )
    assert (0, "") == (result.returncode, result.stderr.strip()), result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
