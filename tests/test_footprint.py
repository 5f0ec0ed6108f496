"""What a serving process loads: the request path and the governor need neither psutil
nor the admin routes' module, so a server that mounts no admin routes holds neither
(``benchmarks/startup_rss.py`` measures what a server holds at rest). Each check runs in
a fresh interpreter serving real requests on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import pytest

import arenapool
import arenapool.aiohttp
from arenapool.memory import current_rss

RunPython = Callable[..., Any]  # conftest's run_python fixture
MiB = 1024 * 1024

SERVE = """
import asyncio, json, sys
import aiohttp
from aiohttp import web
import arenapool
from arenapool.aiohttp import CONFIG_KEY, json_response, read_json, setup

ADMIN = {admin!r}

async def main():
    pool = arenapool.SlabPool(budget="64MiB", decay=1.0, name="footprint")
    app = web.Application()
    setup(app, pool, governor=arenapool.GovernorConfig(), admin=ADMIN)

    async def ingest(request):
        return json_response({{"n": len(await read_json(request))}})

    app.router.add_post("/ingest", ingest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{{runner.addresses[0][1]}}/ingest"
    statuses = []
    async with aiohttp.ClientSession() as session:
        for body in (b"[1]", b"[" + b"1," * 200_000 + b"1]"):  # inline, then into a block
            async with session.post(url, data=body) as response:
                statuses.append(response.status)
    governor = app[CONFIG_KEY].governor
    await runner.cleanup()
    pool.close()
    print(json.dumps({{
        "statuses": statuses,
        "rss": governor.last_rss,
        "psutil": "psutil" in sys.modules,
        "admin": "arenapool.aiohttp._admin" in sys.modules,
        "breakdown": "arenapool._breakdown" in sys.modules,
        "objectpool": "arenapool._objectpool" in sys.modules,
    }}))

asyncio.run(main())
"""


def test_a_server_without_admin_routes_loads_neither_psutil_nor_them(
    run_python: RunPython,
) -> None:
    """Bodies served inline and into a block, with the governor reading RSS: neither
    psutil nor the admin module is loaded."""
    out = run_python(SERVE.format(admin=False))
    assert [200, 200] == out["statuses"]
    assert out["rss"] > 10 * MiB  # the governor did read this process's RSS
    assert (False, False) == (out["psutil"], out["admin"])
    # nor the smaps breakdown (the governor's tick reads the heap, not smaps) nor the
    # object pools' module (this server keeps none)
    assert (False, False) == (out["breakdown"], out["objectpool"])


def test_admin_routes_load_their_module_when_mounted(run_python: RunPython) -> None:
    out = run_python(SERVE.format(admin=True))
    assert [200, 200] == out["statuses"]
    assert out["admin"]
    assert out["breakdown"]  # the stats route's snapshot walks smaps


def test_object_pool_names_still_import_from_the_package() -> None:
    """``ObjectPool`` and ``ObjectLeakWarning`` load on first use, once; an unknown name
    is still an AttributeError, and ``dir()`` lists them."""
    from arenapool import ObjectLeakWarning, ObjectPool
    from arenapool._objectpool import ObjectPool as Defined

    assert ObjectPool is Defined
    assert arenapool.ObjectPool is ObjectPool
    assert issubclass(ObjectLeakWarning, Warning)
    assert {"ObjectPool", "ObjectLeakWarning"} <= set(dir(arenapool))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = arenapool.no_such_name  # type: ignore[attr-defined]


def test_admin_names_still_import_from_the_adapter() -> None:
    """``add_admin_routes`` and ``governor_middleware`` load on first use; an unknown
    name is still an AttributeError."""
    from arenapool.aiohttp import add_admin_routes, governor_middleware

    assert callable(add_admin_routes)
    assert callable(governor_middleware)
    assert arenapool.aiohttp.add_admin_routes is add_admin_routes
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = arenapool.aiohttp.no_such_name  # type: ignore[attr-defined]


def test_current_rss_is_what_psutil_reads() -> None:
    """The RSS the governor reads (``/proc/self/statm`` on Linux) is psutil's, read right
    after it: the same pages, give or take what this test allocates in between."""
    ours = current_rss()
    theirs = psutil.Process().memory_info().rss
    assert abs(ours - theirs) < MiB
    again = current_rss()
    assert abs(again - theirs) < MiB
