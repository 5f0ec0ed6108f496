"""Real memory cgroups: make one with a limit, start (or move) processes into it, clean up.

v2 where the unified hierarchy has the memory controller, else v1's memory hierarchy.
On a hybrid host (v1 memory, v2 mounted without controllers) a v2 cgroup is made beside
the v1 one so that the processes get their own ``memory.pressure``. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

V1_MEMORY = Path("/sys/fs/cgroup/memory")
UNIFIED_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def _unified_mount() -> Path | None:
    for candidate in UNIFIED_CANDIDATES:
        if (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def unavailable() -> str | None:
    """Why a real memory cgroup cannot be made here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    unified = _unified_mount()
    if unified is not None and "memory" in (unified / "cgroup.controllers").read_text().split():
        return None if os.access(unified, os.W_OK) else f"{unified} is not writable"
    if (V1_MEMORY / "memory.limit_in_bytes").exists():
        return None if os.access(V1_MEMORY, os.W_OK) else f"{V1_MEMORY} is not writable"
    return "no memory cgroup hierarchy mounted"


class MemoryCgroup:
    """A memory cgroup made for one test (``limit`` bytes, or none), under ``parent``."""

    def __init__(self, limit: int | None, parent: MemoryCgroup | None = None) -> None:
        name = parent.name + "/worker" if parent else f"arenapool-test-{uuid.uuid4().hex[:12]}"
        self.name: str = name
        unified = _unified_mount()
        v2_memory = (
            unified is not None and "memory" in (unified / "cgroup.controllers").read_text().split()
        )
        self.version = 2 if v2_memory else 1
        self.pressure_dir: Path | None = None
        if v2_memory:
            assert unified is not None
            if parent is None:
                control = unified / "cgroup.subtree_control"
                if "memory" not in control.read_text().split():
                    control.write_text("+memory")
            self.path = unified / name
            self.path.mkdir()
            if parent is None:
                (self.path / "cgroup.subtree_control").write_text("+memory")
            self.pressure_dir = self.path
            if limit is not None:
                (self.path / "memory.max").write_text(str(limit))
                (self.path / "memory.swap.max").write_text("0")
        else:
            self.path = V1_MEMORY / name
            self.path.mkdir()
            if limit is not None:
                (self.path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            if unified is not None and (unified / "memory.pressure").exists():
                self.pressure_dir = unified / name
                self.pressure_dir.mkdir()
        self.limit = limit
        self.children: list[MemoryCgroup] = []
        if parent is not None:
            parent.children.append(self)

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run inside this cgroup: a shell moves itself in, then execs."""
        procs = [str(self.path / "cgroup.procs")]
        if self.pressure_dir is not None and self.pressure_dir != self.path:
            procs.append(str(self.pressure_dir / "cgroup.procs"))
        moves = "; ".join(f"echo $$ > {p}" for p in procs)
        return ["sh", "-c", f'{moves}; exec "$@"', "sh", *command]

    def adopt(self, pid: int) -> None:
        """Move a running process into this cgroup (its later allocations count here)."""
        (self.path / "cgroup.procs").write_text(str(pid))
        if self.pressure_dir is not None and self.pressure_dir != self.path:
            (self.pressure_dir / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(line) for line in text.split()]

    def oom_kills(self) -> int:
        """OOM kills in this cgroup (v2 ``memory.events``, v1 ``memory.oom_control``)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def failcnt(self) -> int:
        """v1: how often usage hit the limit (v2: ``memory.events`` ``max``)."""
        if self.version == 1:
            return int((self.path / "memory.failcnt").read_text())
        for line in (self.path / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def peak(self) -> int:
        """The highest usage seen (v1 ``max_usage_in_bytes``, v2 ``memory.peak``)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        with contextlib.suppress(FileNotFoundError):
            return int((self.path / name).read_text())
        return -1

    def usage(self) -> int:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int((self.path / name).read_text())

    def remove(self) -> None:
        """Kill what is left inside (processes a test started) and remove the cgroup."""
        for child in self.children:
            child.remove()
        for directory in {self.path, self.pressure_dir} - {None}:
            assert directory is not None
            if not directory.exists():
                continue
            for _ in range(50):
                pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(-1, os.WNOHANG)
                os.sched_yield()
            with contextlib.suppress(OSError):
                directory.rmdir()


@contextlib.contextmanager
def memory_cgroup(limit: int | None) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup with ``limit``, removed afterwards."""
    group = MemoryCgroup(limit)
    try:
        yield group
    finally:
        group.remove()
