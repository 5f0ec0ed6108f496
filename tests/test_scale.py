"""Scale-out with real processes in a real memory cgroup: gunicorn, 4 workers, 768 MiB.

One cgroup per test, made with a 768 MiB limit (tests/_cgroup.py: v2 where the memory
controller is there, else v1). gunicorn runs ``integrations/gunicorn.conf.py`` inside it
with 4 aiohttp workers and ``budget="auto"``, and a bounded burst of 4 MiB bodies goes
to all of them. The same burst against orjson workers in the same kind of cgroup is run
and reported (not asserted: without a budget they are expected to be OOM-killed). Each
test takes 10-20 s (gunicorn start-up, 768 MiB of bodies over loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import _cgroup
import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import pytest
from prometheus_client.parser import text_string_to_metric_families

from arenapool.metrics import SHARED_FAMILIES, WORKER_PREFIX
from harness.burst import burst, summarize
from harness.server import free_port, service_env
from harness.workload import make_body

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "integrations" / "gunicorn.conf.py"
MiB = 1024 * 1024
LIMIT = 768 * MiB
WORKERS = 4
BURST = 192  # 768 MiB of bodies at once: the whole limit, ~1.7x what the budgets lend
TOKEN = "scale-test-token"

REAL = _cgroup.unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REAL is not None, reason=f"no real memory cgroup: {REAL}"),
]


class Gunicorn:
    """gunicorn with the arenapool config in ``group``; log in ``log``."""

    def __init__(self, group: _cgroup.MemoryCgroup, mode: str, tmp: Path) -> None:
        self.group = group
        self.port = free_port()
        self.log = tmp / f"gunicorn-{mode}.log"
        self.metrics_dir = tmp / f"prometheus-{mode}"
        self.metrics_dir.mkdir()
        env = service_env(
            {
                "WEB_CONCURRENCY": str(WORKERS),
                "ARENAPOOL_MODE": mode,
                "ARENAPOOL_BUDGET": "auto",
                "ARENAPOOL_ADMIN_TOKEN": TOKEN,
                "BIND": f"127.0.0.1:{self.port}",
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            }
        )
        command = [sys.executable, "-m", "gunicorn", "-c", str(CONF)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                group.argv(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str, *, token: bool = False) -> tuple[int, bytes]:
        """One request on a fresh connection (so the kernel picks any worker)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 5.0
        )
        try:
            auth = f"Authorization: Bearer {TOKEN}\r\n" if token else ""
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode()
            )
            data = await asyncio.wait_for(reader.read(), 10.0)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    async def health_pid(self) -> int | None:
        """The pid of the worker that answered one ``/health``; None if none did."""
        with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
            status, body = await self.get("/health")
            if status == 200:
                return int(json.loads(body)["pid"])
        return None

    def workers(self) -> set[int]:
        """The pids of gunicorn's live worker processes, from the OS (the master's
        children).

        Which worker answers ``/health`` cannot tell this: the kernel hands a new
        connection to whichever idle worker takes it first, and in CI 2,000 probes one
        after another once never reached one of four idle workers.
        """
        alive = set()
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):  # gone since the listing
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.add(child.pid)
        return alive

    async def worker_pids(self, *, attempts: int = 2000, seconds: float = 60.0) -> set[int]:
        """The pids answering ``/health``, until all workers did, or attempts or time run
        out (a worker still finishing its share of a burst answers late)."""
        seen: set[int] = set()
        deadline = time.monotonic() + seconds
        for _ in range(attempts):
            if time.monotonic() > deadline:
                break
            pid = await self.health_pid()
            if pid is not None:
                seen.add(pid)
            if len(seen) == WORKERS:
                break
        return seen

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker has built the app and the service answers ``/health``.

        gunicorn logs "Booting worker" before a worker has imported the app, so a count
        of those lines alone let a test start while one worker was still starting (seen
        in CI). Each worker logs "Worker ready" once its app is built (the config's
        ``post_worker_init``), right before its event loop starts. Which worker answers
        a probe cannot tell that every one is ready: the kernel hands a new connection
        to whichever idle worker takes it first, and probes one after another may never
        reach one of them (seen in CI).
        """
        deadline = time.monotonic() + timeout
        answered: set[int] = set()
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.text()[-3000:]
            pid = await self.health_pid()
            if pid is not None:
                answered.add(pid)
            workers = self.workers()
            if (
                len(workers) == WORKERS
                and workers <= self.ready_pids()
                and answered & workers
                and self.booted() == WORKERS
            ):
                return
            if pid is None:
                await asyncio.sleep(0.1)  # start-up polling, bounded by timeout
        raise AssertionError(
            f"gunicorn not ready (answered {sorted(answered)}, ready {sorted(self.ready_pids())}, "
            f"workers {sorted(self.workers())}):\n{self.text()[-3000:]}"
        )

    def ready_pids(self) -> set[int]:
        """The workers that logged "Worker ready" (the config's ``post_worker_init``)."""
        return {int(pid) for pid in re.findall(r"Worker ready \(pid: (\d+)\)", self.text())}

    def booted(self) -> int:
        return len(re.findall(r"Booting worker with pid", self.text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


@contextlib.contextmanager
def gunicorn(mode: str, tmp: Path) -> Iterator[tuple[_cgroup.MemoryCgroup, Gunicorn]]:
    with _cgroup.memory_cgroup(LIMIT) as group:
        server = Gunicorn(group, mode, tmp)
        try:
            yield group, server
        finally:
            server.stop()


async def run_burst(server: Gunicorn, count: int = BURST) -> dict[str, object]:
    body = make_body(4 * MiB, random.Random(13))
    outcomes, elapsed = await burst(server.port, body, count, timeout=60.0)
    return summarize(outcomes, elapsed, 4 * MiB)


async def test_arenapool_workers_survive_a_burst_in_768mib(tmp_path: Path) -> None:
    """4 arenapool workers with budget="auto" in a 768 MiB cgroup: a burst of 384 MiB of
    bodies OOM-kills nothing, every worker still serves, and each derived its budget."""
    with gunicorn("arenapool", tmp_path) as (group, server):
        await server.wait_ready()  # every worker has built the app; /health answers
        before = server.workers()
        report = await run_burst(server)
        answering = await server.worker_pids()
        after = server.workers()
        print(f"\narenapool in {LIMIT // MiB} MiB: {json.dumps(report)}")
        print(f"peak usage {group.peak() // MiB} MiB, failcnt {group.failcnt()}")
        assert 0 == group.oom_kills(), server.text()
        # the same worker processes before and after: none killed, none replaced
        assert (WORKERS, before) == (len(before), after), server.text()
        # and they still serve (those /health reached are among them)
        assert answering, server.text()
        assert answering <= after, (answering, after)
        assert "SIGKILL" not in server.text()
        lines = re.findall(r"budget=auto: .*", server.text())
        assert WORKERS == len(lines), server.text()
        assert report["ok"] > 0


async def test_orjson_workers_same_burst_reported(tmp_path: Path) -> None:
    """The same burst against plain orjson workers in the same kind of cgroup: reported
    side by side, not asserted (expected: OOM kills)."""
    with gunicorn("orjson", tmp_path) as (group, server):
        await server.wait_ready()
        report = await run_burst(server)
        print(f"\norjson in {LIMIT // MiB} MiB: {json.dumps(report)}")
        print(
            f"oom kills {group.oom_kills()}, failcnt {group.failcnt()}, peak usage "
            f"{group.peak() // MiB} MiB, workers booted {server.booted()} (4 at start; "
            "more = respawned after a kill)"
        )


async def test_multiprocess_metrics_sum_to_per_worker_figures(tmp_path: Path) -> None:
    """One scrape of any worker shows each worker (a ``pid`` label) and the container's
    totals, parsed by prometheus_client's parser; every total equals the sum of its
    per-worker figures (the max for figures every worker reads alike)."""
    with gunicorn("arenapool", tmp_path) as (_group, server):
        await server.wait_ready()
        await run_burst(server, 32)  # every worker has served and counted something
        status, text = await server.get("/_arenapool/metrics", token=True)
        assert 200 == status, text[:500]
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    per_worker = {n: f for n, f in families.items() if n.startswith(WORKER_PREFIX)}
    pids = {s.labels["pid"] for f in per_worker.values() for s in f.samples}
    assert WORKERS == len(pids)
    checked = 0
    for name, family in per_worker.items():
        total = families.get("arenapool_" + name.removeprefix(WORKER_PREFIX))
        if total is None:  # histograms and state sets: the scraped worker's own only
            continue
        shared = total.name in SHARED_FAMILIES
        expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            key = (sample.name.replace(WORKER_PREFIX, "arenapool_", 1), labels)
            value = expected.get(key)
            if value is None:
                expected[key] = sample.value
            else:
                expected[key] = max(value, sample.value) if shared else value + sample.value
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in total.samples}
        assert expected == pytest.approx(found), name
        checked += 1
    assert checked >= 20, sorted(per_worker)
    assert {"arenapool_container_limit_bytes", "arenapool_slab_lent_bytes"} <= set(families)
    # every worker's slab pool carries the example service's name, so its figures add up
    # per pool across workers (an unnamed pool would get a per-process "pool-<id>")
    slab_pools = {
        (s.labels["pool"], s.labels["pid"])
        for n, f in per_worker.items()
        if n.startswith(WORKER_PREFIX + "slab_")
        for s in f.samples
        if "pool" in s.labels
    }
    assert {"ingest"} == {pool for pool, _pid in slab_pools}
    assert WORKERS == len(slab_pools)
