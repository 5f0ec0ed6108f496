"""The container's memory from cgroups: fake v1/v2/hybrid trees, then a real cgroup."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import _cgroup
import pytest

from arenapool._container import (
    AutoBudgetError,
    Pressure,
    auto_budget,
    derive_budget,
    find_cgroup,
    worker_count,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
V1_UNLIMITED = "9223372036854771712"
PSI = (
    "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\n"
    "full avg10=0.50 avg60=0.00 avg300=0.00 total=99\n"
)

V2_MOUNT = "30 25 0:26 {root} /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "40 30 0:35 {root} /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
HYBRID_V2 = "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"

Tree = Callable[[dict[str, str]], Path]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """Write ``{relative path: content}`` under a fresh root and return the root."""

    def build(files: dict[str, str]) -> Path:
        for name, content in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return tmp_path

    return build


def v2_tree(tree: Tree, **extra: str) -> Path:
    """A pod whose limit (1 GiB) sits two levels above the container's cgroup."""
    base = "sys/fs/cgroup"
    return tree(
        {
            "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
            "proc/self/mountinfo": V2_MOUNT.format(root="/"),
            f"{base}/cgroup.controllers": "cpuset cpu io memory pids\n",
            f"{base}/kubepods/memory.max": "max\n",
            f"{base}/kubepods/pod1/memory.max": f"{GiB}\n",
            f"{base}/kubepods/pod1/memory.high": "max\n",
            f"{base}/kubepods/pod1/memory.current": f"{600 * MiB}\n",
            f"{base}/kubepods/pod1/memory.stat": f"anon 1000\ninactive_file {100 * MiB}\n",
            f"{base}/kubepods/pod1/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            f"{base}/kubepods/pod1/ctr/memory.max": "max\n",
            f"{base}/kubepods/pod1/ctr/memory.high": "max\n",
            f"{base}/kubepods/pod1/ctr/memory.pressure": PSI,
            f"{base}/kubepods/pod1/ctr/cgroup.procs": "1\n7\n8\n",
            **extra,
        }
    )


def v1_tree(tree: Tree, limit: str = str(512 * MiB), **extra: str) -> Path:
    base = "sys/fs/cgroup/memory"
    return tree(
        {
            "proc/self/cgroup": "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
            "proc/self/mountinfo": V1_MOUNT.format(root="/"),
            f"{base}/memory.limit_in_bytes": V1_UNLIMITED,
            f"{base}/docker/memory.limit_in_bytes": V1_UNLIMITED,
            f"{base}/docker/abc/memory.limit_in_bytes": limit,
            f"{base}/docker/abc/memory.usage_in_bytes": f"{300 * MiB}\n",
            f"{base}/docker/abc/memory.stat": (
                f"cache 1\ninactive_file {10 * MiB}\ntotal_inactive_file {50 * MiB}\n"
            ),
            f"{base}/docker/abc/memory.oom_control": (
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
            ),
            **extra,
        }
    )


# --------------------------------------------------------------------------- cgroup v2


def test_v2_limit_is_found_up_the_hierarchy(tree: Tree) -> None:
    """The container's cgroup has no limit; its pod's 1 GiB ``memory.max`` binds."""
    root = v2_tree(tree)
    limit = find_cgroup(root).limit()  # type: ignore[union-attr]
    assert (GiB, 2, str(root / "sys/fs/cgroup/kubepods/pod1")) == (
        limit.limit,
        limit.version,
        limit.path,
    )


def test_v2_usage_minus_inactive_file_at_the_limiting_cgroup(tree: Tree) -> None:
    """Usage is ``memory.current`` minus ``inactive_file``, where the limit is."""
    reading = find_cgroup(v2_tree(tree)).read()  # type: ignore[union-attr]
    assert (600 * MiB, 100 * MiB, 500 * MiB, 524 * MiB, 1) == (
        reading.usage,
        reading.inactive_file,
        reading.working_set,
        reading.headroom,
        reading.oom_kills,
    )


def test_v2_pressure_is_read_from_memory_pressure(tree: Tree) -> None:
    """PSI ``memory.pressure`` of the process's own cgroup is parsed."""
    pressure = find_cgroup(v2_tree(tree)).pressure()  # type: ignore[union-attr]
    assert Pressure(1.5, 0.25, 0.0, 1234, 0.5, 0.0, 0.0, 99) == pressure


def test_v2_memory_high_binds_when_lower(tree: Tree) -> None:
    """``memory.high`` below ``memory.max`` is the limit (the kernel throttles there)."""
    root = v2_tree(tree, **{"sys/fs/cgroup/kubepods/pod1/ctr/memory.high": f"{768 * MiB}\n"})
    limit = find_cgroup(root).limit()  # type: ignore[union-attr]
    assert (768 * MiB, None, 768 * MiB) == (limit.limit, limit.max, limit.high)
    assert limit.source().startswith("memory.high at ")


def test_v2_smallest_limit_binds_not_the_nearest(tree: Tree) -> None:
    """A child limit larger than its parent's does not raise what the parent allows."""
    root = v2_tree(tree, **{"sys/fs/cgroup/kubepods/pod1/ctr/memory.max": f"{2 * GiB}\n"})
    assert GiB == find_cgroup(root).limit().limit  # type: ignore[union-attr]


def test_v2_own_namespace_sees_its_cgroup_as_the_mount(tree: Tree) -> None:
    """With a cgroup namespace the process is at ``0::/`` and its limit at the mount."""
    root = tree(
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": V2_MOUNT.format(root="/"),
            "sys/fs/cgroup/cgroup.controllers": "memory pids\n",
            "sys/fs/cgroup/memory.max": f"{256 * MiB}\n",
        }
    )
    group = find_cgroup(root)
    assert group is not None
    assert (256 * MiB, root / "sys/fs/cgroup") == (group.limit().limit, group.path)


def test_v2_without_mountinfo_uses_the_usual_mount(tree: Tree) -> None:
    """No mountinfo: the unified hierarchy is assumed at /sys/fs/cgroup."""
    root = v2_tree(tree)
    (root / "proc/self/mountinfo").unlink()
    assert GiB == find_cgroup(root).limit().limit  # type: ignore[union-attr]


def test_v2_no_limit_anywhere(tree: Tree) -> None:
    """``max`` at every level: no limit."""
    root = v2_tree(tree, **{"sys/fs/cgroup/kubepods/pod1/memory.max": "max\n"})
    assert find_cgroup(root).limit().limit is None  # type: ignore[union-attr]


# --------------------------------------------------------------------------- cgroup v1


def test_v1_limit_usage_and_oom_kills(tree: Tree) -> None:
    """v1: ``limit_in_bytes``, usage minus ``total_inactive_file``, ``oom_control``."""
    root = v1_tree(tree)
    reading = find_cgroup(root).read()  # type: ignore[union-attr]
    assert (1, 512 * MiB, 300 * MiB, 250 * MiB, 2, None) == (
        reading.version,
        reading.limit,
        reading.usage,
        reading.working_set,
        reading.oom_kills,
        reading.pressure,
    )


def test_v1_huge_value_is_no_limit(tree: Tree) -> None:
    """v1's ``PAGE_COUNTER_MAX`` pages (about 2**63 bytes) means no limit."""
    root = v1_tree(tree, limit=V1_UNLIMITED)
    assert find_cgroup(root).limit().limit is None  # type: ignore[union-attr]


def test_v1_mount_showing_only_the_container(tree: Tree) -> None:
    """A v1 mount whose root is the container's cgroup: the mount point is the cgroup."""
    base = "sys/fs/cgroup/memory"
    root = tree(
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n",
            "proc/self/mountinfo": V1_MOUNT.format(root="/docker/abc"),
            f"{base}/memory.limit_in_bytes": f"{128 * MiB}\n",
        }
    )
    group = find_cgroup(root)
    assert group is not None
    assert (128 * MiB, root / base) == (group.limit().limit, group.path)


def test_hybrid_limits_from_v1_pressure_from_v2(tree: Tree) -> None:
    """Hybrid host: v2 mounted without the memory controller; v1 limits, v2 PSI."""
    root = v1_tree(
        tree,
        **{
            "proc/self/cgroup": "4:memory:/docker/abc\n0::/docker/abc\n",
            "proc/self/mountinfo": V1_MOUNT.format(root="/") + HYBRID_V2,
            "sys/fs/cgroup/unified/cgroup.controllers": "\n",
            "sys/fs/cgroup/unified/docker/abc/memory.pressure": PSI,
        },
    )
    group = find_cgroup(root)
    assert group is not None
    assert (1, 512 * MiB, 1.5) == (group.version, group.limit().limit, group.pressure().some_avg10)  # type: ignore[union-attr]


def test_no_cgroup_file_is_none(tmp_path: Path) -> None:
    """Without /proc/self/cgroup (not Linux, or hidden) there is no cgroup."""
    assert find_cgroup(tmp_path) is None


# --------------------------------------------------------------------------- the budget


def test_budget_arithmetic() -> None:
    """budget = ((L - W*B - B) / W) * (1 - margin), rounded down to a MiB."""
    derived = derive_budget(768 * MiB, workers=4, baseline=40 * MiB)
    share = (768 * MiB - 4 * 40 * MiB - 40 * MiB) // 4
    kept = int(share * 0.25)
    assert (share, kept, 40 * MiB) == (derived.share, derived.margin, derived.respawn_headroom)
    assert ((share - kept) // MiB * MiB, 106 * MiB) == (derived.budget, derived.budget)


def test_budget_description_names_every_term() -> None:
    """The start-up line shows the limit, workers, baseline, headroom, share and margin."""
    derived = derive_budget(
        768 * MiB,
        workers=4,
        baseline=40 * MiB,
        limit_source="memory.max at /sys/fs/cgroup (cgroup v2)",
        workers_source="WEB_CONCURRENCY",
    )
    expected = (
        "budget=auto: 106.0 MiB per worker = (limit 768.0 MiB [memory.max at /sys/fs/cgroup "
        "(cgroup v2)] - 4 workers [WEB_CONCURRENCY] x baseline 40.0 MiB - respawn headroom "
        "40.0 MiB) / 4 = share 142.0 MiB, less margin 0.25 (35.5 MiB) for objects decoded "
        "from bodies"
    )
    assert expected == derived.describe()


def test_no_limit_asks_for_a_number() -> None:
    """Without a container limit ``budget="auto"`` fails and says what to pass instead."""
    with pytest.raises(AutoBudgetError, match=r"pass a number instead, e\.g\. SlabPool"):
        derive_budget(None, workers=1, baseline=40 * MiB)


def test_too_small_a_limit_fails() -> None:
    """A limit the baselines eat up leaves no budget: an error naming every term."""
    with pytest.raises(AutoBudgetError, match="run fewer workers") as info:
        derive_budget(256 * MiB, workers=5, baseline=45 * MiB)
    assert (256 * MiB, 5) == (info.value.limit, info.value.workers)


def test_auto_budget_on_a_v1_tree(tree: Tree) -> None:
    """End to end on a fake tree: limit found, workers from WEB_CONCURRENCY."""
    derived = auto_budget(root=v1_tree(tree), environ={"WEB_CONCURRENCY": "2"}, baseline=32 * MiB)
    expected = derive_budget(512 * MiB, workers=2, baseline=32 * MiB)
    assert (expected.budget, "WEB_CONCURRENCY", 512 * MiB) == (
        derived.budget,
        derived.workers_source,
        derived.limit,
    )
    assert derived.limit_source.startswith("memory.limit_in_bytes at ")


def test_auto_budget_without_limit_fails(tree: Tree) -> None:
    """No limit in the tree: the error says none was found and where it looked."""
    with pytest.raises(AutoBudgetError, match="found none"):
        auto_budget(root=v1_tree(tree, limit=V1_UNLIMITED), environ={}, baseline=MiB)


@pytest.mark.parametrize(
    ("workers", "environ", "parent", "expected"),
    [
        (3, {"WEB_CONCURRENCY": "8"}, None, (3, "workers=")),
        (None, {"WEB_CONCURRENCY": "8", "ARENAPOOL_WORKERS": "4"}, None, (8, "WEB_CONCURRENCY")),
        (None, {"ARENAPOOL_WORKERS": "4"}, None, (4, "ARENAPOOL_WORKERS")),
        (None, {"GUNICORN_CMD_ARGS": "--bind :8000 -w 6"}, None, (6, "GUNICORN_CMD_ARGS")),
        (None, {"GUNICORN_CMD_ARGS": "--workers=5"}, None, (5, "GUNICORN_CMD_ARGS")),
        (None, {}, ["-c", "conf.py", "-w3"], (3, "gunicorn master's command line")),
        (None, {}, ["-c", "conf.py"], (1, "default (one worker)")),
    ],
)
def test_worker_count_sources_in_order(
    workers: int | None,
    environ: dict[str, str],
    parent: list[str] | None,
    expected: tuple[int, str],
) -> None:
    """workers=, WEB_CONCURRENCY, ARENAPOOL_WORKERS, GUNICORN_CMD_ARGS, the master's -w, 1."""
    assert expected == worker_count(workers, environ=environ, parent_args=parent or [])


# --------------------------------------------------------------------------- real cgroup

REAL = _cgroup.unavailable()


@pytest.mark.skipif(REAL is not None, reason=f"no real memory cgroup: {REAL}")
def test_real_cgroup_limit_read_from_inside() -> None:
    """A process moved into a child of a 768 MiB cgroup finds that limit (walking up)
    and derives the documented budget from its own measured baseline."""
    code = (
        "import json; from arenapool._container import auto_budget, find_cgroup\n"
        "group = find_cgroup(); reading = group.read(); derived = auto_budget(workers=4)\n"
        "print(json.dumps({'version': group.version, 'limit': reading.limit, "
        "'path': reading.path, 'usage': reading.usage, 'psi': reading.pressure is not None, "
        "'baseline': derived.baseline, 'budget': derived.budget}))"
    )
    with _cgroup.memory_cgroup(768 * MiB) as group:
        worker = _cgroup.MemoryCgroup(None, parent=group)
        proc = subprocess.run(
            worker.argv([sys.executable, "-c", code]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == proc.returncode, proc.stderr
        found = json.loads(proc.stdout)
    expected_budget = derive_budget(768 * MiB, workers=4, baseline=found["baseline"]).budget
    assert (group.version, 768 * MiB, str(group.path), expected_budget) == (
        found["version"],
        found["limit"],
        found["path"],
        found["budget"],
    )
    assert found["usage"] > 0
    assert (group.pressure_dir is not None) == found["psi"]


@pytest.mark.skipif(REAL is not None, reason=f"no real memory cgroup: {REAL}")
def test_real_cgroup_auto_pool_follows_a_raised_limit() -> None:
    """``SlabPool(budget="auto")`` inside a 768 MiB cgroup takes the derived budget; when
    the limit is raised to 1 GiB, re-reading it gives the budget the arithmetic says."""
    code = (
        "import json, pathlib; from arenapool import SlabPool\n"
        "pool = SlabPool(budget='auto', workers=4, auto_interval=0)\n"
        "before = pool.budget; limit_dir = pathlib.Path(pool.stats()['budget_auto']"
        "['limit_source'].split(' at ')[1].split(' (')[0])\n"
        "names = ['memory.max'] if (limit_dir / 'memory.max').exists() else"
        " ['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']  # v1: swap cap first\n"
        "for path in [limit_dir / name for name in names]:\n"
        f"    path.exists() and path.write_text(str({GiB}))\n"
        "changed = pool.refresh_budget()\n"
        "print(json.dumps({'before': before, 'after': pool.budget, 'changed': changed,"
        " 'baseline': pool.derivation.baseline}))\n"
        "pool.close()"
    )
    with _cgroup.memory_cgroup(768 * MiB) as group:
        proc = subprocess.run(
            group.argv([sys.executable, "-c", code]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert 0 == proc.returncode, proc.stderr
    found = json.loads(proc.stdout)
    expected = (
        derive_budget(768 * MiB, workers=4, baseline=found["baseline"]).budget,
        derive_budget(GiB, workers=4, baseline=found["baseline"]).budget,
        True,
    )
    assert expected == (found["before"], found["after"], found["changed"])
