"""``GET /_arenapool/ready`` and the governor's watermarks on the container.

The container is a fake cgroup v2 tree in a tmp dir (``GovernorConfig(container_root=)``):
the governor reads its files as it reads /sys/fs/cgroup, and the test rewrites
``memory.current`` to move the container's usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from arenapool import SlabPool
from arenapool._governor import Governor, GovernorConfig
from arenapool.aiohttp import setup
from arenapool.aiohttp._config import POOL_KEY

MiB = 1024 * 1024
GiB = 1024 * MiB
PSI_CALM = (
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)


def container(tmp_path: Path, *, usage: int, limit: int = GiB, psi: str = PSI_CALM) -> Path:
    """A process in a v2 container cgroup with ``limit`` and ``usage`` (10 MiB of which
    is inactive file cache)."""
    base = tmp_path / "sys/fs/cgroup"
    files = {
        tmp_path / "proc/self/cgroup": "0::/\n",
        base / "cgroup.controllers": "cpu memory pids\n",
        base / "memory.max": f"{limit}\n",
        base / "memory.high": "max\n",
        base / "memory.current": f"{usage}\n",
        base / "memory.stat": f"anon 1\ninactive_file {10 * MiB}\n",
        base / "memory.events": "oom_kill 0\n",
        base / "memory.pressure": psi,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def set_usage(root: Path, usage: int) -> None:
    (root / "sys/fs/cgroup/memory.current").write_text(f"{usage}\n")


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def make_client(aiohttp_client: Any, governor: Governor | None = None) -> TestClient:
    app = web.Application()
    setup(app, pool=SlabPool("4MiB", decay=None), governor=governor, close_pool=True)
    app.router.add_post("/ingest", ok)
    return await aiohttp_client(app)


async def test_ready_without_admin_routes_or_token(aiohttp_client: Any) -> None:
    """setup() installs the readiness route with the admin routes off; it needs no token
    and says only that it is ready."""
    client = await make_client(aiohttp_client)
    response = await client.get("/_arenapool/ready")
    assert (200, "ready\n", "no-store") == (
        response.status,
        await response.text(),
        response.headers["Cache-Control"],
    )


def test_container_watermarks_read_the_working_set(tmp_path: Path) -> None:
    """With its limit from the container, the governor watches the container's working
    set (usage minus inactive file), at 80%/90% of the limit."""
    governor = Governor(GovernorConfig(container_root=str(container(tmp_path, usage=0))))
    assert ("container", "cgroup", int(0.8 * GiB), int(0.9 * GiB)) == (
        governor.watch,
        governor.limit_source,
        governor.soft_limit,
        governor.hard_limit,
    )


async def test_ready_flips_while_the_container_sheds(aiohttp_client: Any, tmp_path: Path) -> None:
    """Past the hard watermark on the container's memory the worker sheds and readiness
    answers 503 with Retry-After; back under soft it answers 200 again."""
    root = container(tmp_path, usage=100 * MiB)
    governor = Governor(GovernorConfig(interval=3600, container_root=str(root), retry_after=2))
    client = await make_client(aiohttp_client, governor)
    set_usage(root, 960 * MiB)  # working set 950 MiB > hard 921.6 MiB
    await governor.check()
    shed = await client.get("/_arenapool/ready")
    assert (503, "shedding\n", "2", True) == (
        shed.status,
        await shed.text(),
        shed.headers["Retry-After"],
        governor.stats()["shedding"],
    )
    assert 503 == (await client.post("/ingest", data=b"x")).status
    set_usage(root, 500 * MiB)
    await governor.check()
    assert 200 == (await client.get("/_arenapool/ready")).status
    actions = [(a["action"], a["reason"]) for a in governor.stats()["actions"]]
    assert [("shed_on", "hard"), ("shed_off", "soft")] == [
        a for a in actions if a[0].startswith("shed")
    ]


async def test_watermarks_follow_a_resized_container(tmp_path: Path) -> None:
    """The limit is read at every tick: a container resized in place moves the marks."""
    root = container(tmp_path, usage=100 * MiB)
    governor = Governor(GovernorConfig(container_root=str(root)))
    (root / "sys/fs/cgroup/memory.max").write_text(f"{2 * GiB}\n")
    await governor.check()
    assert (int(1.6 * GiB), int(1.8 * GiB)) == (governor.soft_limit, governor.hard_limit)


async def test_pressure_sheds_when_configured(tmp_path: Path) -> None:
    """PSI ``full avg10`` at or above pressure_shed sheds, under the watermarks too."""
    stalled = PSI_CALM.replace("full avg10=0.00", "full avg10=35.00")
    root = container(tmp_path, usage=100 * MiB, psi=stalled)
    governor = Governor(GovernorConfig(container_root=str(root), pressure_shed=30.0))
    await governor.check()
    stats = governor.stats()
    assert (True, 1, 35.0) == (
        stats["shedding"],
        stats["pressure_sheds"],
        stats["container"]["pressure_full_avg10"],
    )


async def test_ready_503_while_admission_queue_stands(aiohttp_client: Any) -> None:
    """A standing admission queue (the CoDel guard) makes the worker not ready."""
    client = await make_client(aiohttp_client)
    pool = _pool_of(client)
    pool._admission.target = 0.0  # any wait counts as standing, for the test
    pool._admission.interval = 0.0
    ticket = await pool.admit(4 * MiB, timeout=0)
    waiting = pool._admission.offer(4 * MiB, None)  # queued behind the whole budget
    assert 503 == (await client.get("/_arenapool/ready")).status
    pool._admission.cancel(waiting)
    pool.finish(ticket)
    assert 200 == (await client.get("/_arenapool/ready")).status


def _pool_of(client: TestClient) -> SlabPool:
    return client.app[POOL_KEY]


@pytest.mark.parametrize("value", [-1.0, 101.0])
def test_pressure_settings_are_percentages(value: float) -> None:
    """PSI thresholds outside [0, 100] are refused when the config is made."""
    with pytest.raises(ValueError, match="percentage"):
        GovernorConfig(pressure_trim=value)


def test_setup_caps_aiohttp_read_ahead_unless_the_app_chose() -> None:
    """setup() sets aiohttp's read_bufsize to 64 KiB (bytes read ahead per connection,
    outside any budget) unless the app set one itself."""
    app = web.Application()
    chosen = web.Application(handler_args={"read_bufsize": 1 << 20})
    with SlabPool("4MiB", decay=None) as pool:
        setup(app, pool=pool)
        setup(chosen, pool=pool)
    assert (64 * 1024, 1 << 20) == (
        app._handler_args["read_bufsize"],
        chosen._handler_args["read_bufsize"],
    )


async def test_a_tick_reads_only_the_pressure_of_a_container_it_does_not_watch(
    tmp_path: Path,
) -> None:
    """Without a container limit (the watermarks are the config's, the level is RSS) a
    tick reads the container's PSI and nothing else: the pressure rules still act on
    it, and stats() reads the rest of the container when asked, not a tick's copy."""
    stalled = PSI_CALM.replace("full avg10=0.00", "full avg10=35.00")
    root = container(tmp_path, usage=100 * MiB, psi=stalled)
    (root / "sys/fs/cgroup/memory.max").write_text("max\n")
    governor = Governor(GovernorConfig(container_root=str(root), pressure_shed=30.0))
    assert (None, "process") == (governor.limit_source, governor.watch)
    await governor.check()
    assert (True, 1) == (governor.shedding, governor.stats()["pressure_sheds"])
    set_usage(root, 300 * MiB)  # no tick since: stats() reads it now
    seen = governor.stats()["container"]
    assert (300 * MiB, 35.0) == (seen["usage"], seen["pressure_full_avg10"])
    (root / "sys/fs/cgroup/memory.pressure").write_text(PSI_CALM)
    await governor.check()  # calm again, and no watermark set: shedding ends
    assert not governor.shedding
