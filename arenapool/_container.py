"""The container's memory: its cgroup's limit, usage and pressure, and the auto budget.

Theory of operation
-------------------
A process finds its memory cgroup once (:func:`find_cgroup`) and then re-reads the files
whenever it asks: every reading is a handful of small reads of kernel files, cheap enough
for a governor tick. Nothing here caches a value, so a limit raised or lowered while the
process runs (``kubectl`` in-place resize, ``systemctl set-property``) is seen at the next
read, as Go's automemlimit sees it on its timer.

Finding the cgroup (``root`` prefixes every path, so tests build fake trees in a tmp dir):

- ``/proc/self/cgroup`` names the process's cgroup in each hierarchy: the ``0::/path``
  line is the unified (v2) one, the line whose controllers include ``memory`` is v1's.
- ``/proc/self/mountinfo`` says where each hierarchy is mounted and which of its
  directories the mount shows (a container with its own cgroup namespace sees its own
  cgroup as the mount's root). The directory is ``mount point + (path - mount root)``;
  without mountinfo the usual places (``/sys/fs/cgroup``, ``.../unified``,
  ``.../memory``) are assumed.
- Memory is v2's when the unified hierarchy has the ``memory`` controller
  (``cgroup.controllers`` at its mount); else v1's memory hierarchy. A *hybrid* host has
  both mounted and binds memory to v1 while v2 still keeps per-cgroup pressure (PSI)
  files; then limits and usage come from v1 and ``memory.pressure`` from v2.

Reading:

- **limit**: v2 ``memory.max`` and ``memory.high`` (``max`` = none); v1
  ``memory.limit_in_bytes`` (v1 writes ``PAGE_COUNTER_MAX`` pages, about 2**63, for
  none: anything at or above :data:`UNLIMITED_AT` is none). The walk goes up from the
  process's cgroup to the mount point and keeps the smallest limit: a child can never use
  more than any ancestor allows, so the smallest is the one that binds (with a single
  limit, it is simply the nearest one). ``memory.high`` counts: past it the kernel
  throttles and reclaims hard, which for a server is as bad as a kill.
- **usage** is read at the cgroup whose limit binds (the one the OOM killer compares):
  ``memory.current`` or v1 ``memory.usage_in_bytes``, minus inactive file cache
  (``inactive_file`` from ``memory.stat``, v1 ``total_inactive_file``). That difference
  is the *working set* the kubelet evicts on and the figure ``kubectl top`` shows; page
  cache the kernel can drop at once does not bring an OOM kill closer.
- **pressure**: ``memory.pressure`` (PSI: share of time tasks stalled on memory over 10,
  60 and 300 s), read at the process's own v2 cgroup. It rises before usage reaches the
  limit, when reclaim starts to cost, so a governor can act earlier on it.
- **OOM kills**: ``memory.events`` ``oom_kill`` (v2) or ``memory.oom_control``
  ``oom_kill`` (v1) at the limiting cgroup.

The auto budget (:func:`derive_budget`) is plain arithmetic over these readings and is
documented on :class:`BudgetDerivation`.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ._errors import ArenaPoolError
from ._units import format_size

__all__ = [
    "UNLIMITED_AT",
    "AutoBudgetError",
    "BudgetDerivation",
    "Cgroup",
    "ContainerMemory",
    "MemoryLimit",
    "Pressure",
    "auto_budget",
    "current_rss",
    "derive_budget",
    "find_cgroup",
    "parse_pressure",
    "rederive",
    "worker_count",
]

#: A limit at or above this many bytes means "no limit" (v1 reports about 2**63).
UNLIMITED_AT = 1 << 60

MiB = 1024 * 1024

#: The least per-worker budget :func:`derive_budget` accepts before it calls the
#: container too small: below this a worker could not hold one max-class block.
MIN_AUTO_BUDGET = 4 * MiB


class AutoBudgetError(ArenaPoolError, ValueError):
    """``budget="auto"`` cannot be derived: no container limit, or one too small.

    Attributes: ``limit`` (bytes, or ``None`` when there is none), ``workers``.
    """

    status_hint = 500
    limit: int | None
    workers: int


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class Pressure:
    """One reading of a PSI file: the share (percent) of wall time that *some* or *all*
    (``full``) runnable tasks of the cgroup stalled on memory, averaged over 10, 60 and
    300 seconds, and the total stall time in microseconds."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total: int
    full_avg10: float
    full_avg60: float
    full_avg300: float
    full_total: int


@dataclass(frozen=True)
class MemoryLimit:
    """The container limit that binds this process, and where it was found.

    ``limit`` is the smallest of every ``memory.max``/``memory.high`` (v1:
    ``memory.limit_in_bytes``) from the process's cgroup up to the mount, or ``None``.
    ``max`` and ``high`` are the two values at ``path``, the cgroup that sets ``limit``
    (the process's own cgroup when there is no limit).
    """

    limit: int | None
    max: int | None
    high: int | None
    path: str
    version: Literal[1, 2]

    def source(self) -> str:
        """Which file set the limit: ``memory.max at /sys/fs/cgroup/x (cgroup v2)``."""
        if self.limit is None:
            return f"no limit up from {self.path} (cgroup v{self.version})"
        if self.high == self.limit and self.max != self.limit:
            name = "memory.high"
        else:
            name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return f"{name} at {self.path} (cgroup v{self.version})"


@dataclass(frozen=True)
class ContainerMemory:
    """One reading of the container's memory, at the cgroup whose limit binds."""

    limit: int | None
    usage: int
    """``memory.current`` / ``memory.usage_in_bytes``: everything charged, cache included."""
    inactive_file: int
    """Page cache the kernel can drop at once (``memory.stat`` ``inactive_file``)."""
    pressure: Pressure | None
    oom_kills: int
    path: str
    version: Literal[1, 2]

    @property
    def working_set(self) -> int:
        """Usage minus inactive file cache: what the kubelet and ``kubectl top`` count."""
        return max(0, self.usage - self.inactive_file)

    @property
    def headroom(self) -> int | None:
        """Bytes left before the limit (``None`` without a limit), by the working set."""
        return None if self.limit is None else self.limit - self.working_set


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
        return None
    except OSError:  # e.g. ENODEV on a file whose controller went away
        return None


def _parse_limit(text: str | None) -> int | None:
    """A limit file's value in bytes, or ``None`` for "max", huge values and no file."""
    if text is None:
        return None
    value = text.strip()
    if not value or value == "max":
        return None
    try:
        nbytes = int(value)
    except ValueError:
        return None
    return None if nbytes >= UNLIMITED_AT or nbytes < 0 else nbytes


def _parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, oom_control) as a dict."""
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            found[parts[0]] = int(parts[1])
    return found


def parse_pressure(text: str | None) -> Pressure | None:
    """Parse a PSI file (``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` + ``full ...``)."""
    if not text:
        return None
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        rows[kind] = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    some = rows.get("some")
    if some is None:
        return None
    full = rows.get("full", {})
    try:
        return Pressure(
            some_avg10=float(some.get("avg10", 0)),
            some_avg60=float(some.get("avg60", 0)),
            some_avg300=float(some.get("avg300", 0)),
            some_total=int(some.get("total", 0)),
            full_avg10=float(full.get("avg10", 0)),
            full_avg60=float(full.get("avg60", 0)),
            full_avg300=float(full.get("avg300", 0)),
            full_total=int(full.get("total", 0)),
        )
    except ValueError:
        return None


# --------------------------------------------------------------------------- the cgroup


@dataclass(frozen=True)
class Cgroup:
    """The process's memory cgroup. Every method reads the kernel files again.

    ``path`` is the process's memory cgroup directory (v1 memory hierarchy or v2),
    ``top`` the hierarchy's mount point (walks stop there), ``pressure_path`` the v2
    directory whose ``memory.pressure`` is read (``None`` without a unified hierarchy).
    """

    version: Literal[1, 2]
    path: Path
    top: Path
    pressure_path: Path | None = None

    def chain(self) -> list[Path]:
        """The process's cgroup and each ancestor up to the mount point, nearest first."""
        found = [self.path]
        current = self.path
        while current != self.top and self.top in current.parents:
            current = current.parent
            found.append(current)
        return found

    def _limits_at(self, directory: Path) -> tuple[int | None, int | None]:
        if self.version == 2:
            return (
                _parse_limit(_read_text(directory / "memory.max")),
                _parse_limit(_read_text(directory / "memory.high")),
            )
        return _parse_limit(_read_text(directory / "memory.limit_in_bytes")), None

    def limit(self) -> MemoryLimit:
        """The smallest limit from here up to the mount (see the module docstring)."""
        best: tuple[int, int | None, int | None, Path] | None = None
        for directory in self.chain():
            hard, high = self._limits_at(directory)
            values = [v for v in (hard, high) if v is not None]
            if values and (best is None or min(values) < best[0]):
                best = (min(values), hard, high, directory)
        if best is None:
            return MemoryLimit(None, None, None, str(self.path), self.version)
        return MemoryLimit(best[0], best[1], best[2], str(best[3]), self.version)

    def read(self) -> ContainerMemory:
        """Limit, usage, inactive file, pressure and OOM kills, at the limiting cgroup."""
        limit = self.limit()
        at = Path(limit.path)
        if self.version == 2:
            usage = _parse_limit(_read_text(at / "memory.current")) or 0
            stat = _parse_keyed(_read_text(at / "memory.stat"))
            inactive = stat.get("inactive_file", 0)
            kills = _parse_keyed(_read_text(at / "memory.events")).get("oom_kill", 0)
        else:
            usage = _parse_limit(_read_text(at / "memory.usage_in_bytes")) or 0
            stat = _parse_keyed(_read_text(at / "memory.stat"))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            kills = _parse_keyed(_read_text(at / "memory.oom_control")).get("oom_kill", 0)
        return ContainerMemory(
            limit=limit.limit,
            usage=usage,
            inactive_file=inactive,
            pressure=self.pressure(),
            oom_kills=kills,
            path=limit.path,
            version=self.version,
        )

    def pressure(self) -> Pressure | None:
        """This process's v2 ``memory.pressure``, or ``None`` where PSI is not there."""
        if self.pressure_path is None:
            return None
        return parse_pressure(_read_text(self.pressure_path / "memory.pressure"))

    def processes(self) -> int:
        """How many processes share the process's own memory cgroup."""
        text = _read_text(self.path / "cgroup.procs") or ""
        return sum(1 for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class _Mount:
    fstype: str
    root: str
    point: str
    options: frozenset[str]


def _mounts(root: Path, pid: str) -> list[_Mount] | None:
    text = _read_text(root / "proc" / pid / "mountinfo")
    if text is None:
        return None
    found = []
    for line in text.splitlines():
        # id parent major:minor root mount-point options [optional...] - fstype source super
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype = tail[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        found.append(_Mount(fstype, fields[3], point, frozenset(tail[2].split(","))))
    return found


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _locate(root: Path, mount: _Mount | None, default: str, cgroup_path: str) -> tuple[Path, Path]:
    """(directory of ``cgroup_path`` in this hierarchy, the mount point)."""
    if mount is None:
        top = _under(root, default)
        mount_root = "/"
    else:
        top = _under(root, mount.point)
        mount_root = mount.root
    if mount_root == "/":
        relative = cgroup_path.lstrip("/")
    elif cgroup_path == mount_root or cgroup_path.startswith(mount_root.rstrip("/") + "/"):
        relative = cgroup_path[len(mount_root) :].lstrip("/")
    else:  # the cgroup lies outside what the mount shows (a moved process): use the mount
        relative = ""
    path = top / relative if relative else top
    if ".." in Path(relative).parts or not path.is_dir():
        path = top
    return path, top


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """The cgroup paths in a ``/proc/PID/cgroup`` text: v2's (the ``0::/path`` line) and
    v1's memory controller's, each ``None`` when absent."""
    v2: str | None = None
    v1: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def find_cgroup(root: str | os.PathLike[str] = "/", *, pid: str = "self") -> Cgroup | None:
    """The memory cgroup of process ``pid`` (default: this one), or ``None`` if none.

    ``root`` is prepended to every path read (``/proc/...``, ``/sys/fs/cgroup/...``), so a
    test can point it at a fake tree.
    """
    base = Path(root)
    text = _read_text(base / "proc" / pid / "cgroup")
    if text is None:
        return None
    v2_path, v1_path = parse_proc_cgroup(text)
    mounts = _mounts(base, pid)
    v2_mount = v1_mount = None
    if mounts is not None:
        v2_mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
        v1_mount = next((m for m in mounts if m.fstype == "cgroup" and "memory" in m.options), None)
    unified: tuple[Path, Path] | None = None
    if v2_path is not None and (mounts is None or v2_mount is not None):
        default = "/sys/fs/cgroup"
        if mounts is None and not (_under(base, default) / "cgroup.controllers").exists():
            default = "/sys/fs/cgroup/unified"  # a hybrid host's v2 mount
        unified = _locate(base, v2_mount, default, v2_path)
        controllers = (_read_text(unified[1] / "cgroup.controllers") or "").split()
        if "memory" in controllers:
            path, top = unified
            return Cgroup(2, path, top, path)
    pressure_path = None
    if unified is not None and (unified[0] / "memory.pressure").exists():
        pressure_path = unified[0]
    if v1_path is not None and (mounts is None or v1_mount is not None):
        path, top = _locate(base, v1_mount, "/sys/fs/cgroup/memory", v1_path)
        if (top / "memory.limit_in_bytes").exists() or (path / "memory.limit_in_bytes").exists():
            return Cgroup(1, path, top, pressure_path)
    return None


# --------------------------------------------------------------------------- the budget


def _gunicorn_workers_from_args(args: list[str]) -> int | None:
    """``-w N``/``--workers N``/``--workers=N``/``-wN`` in a gunicorn command line."""
    found = None
    for index, arg in enumerate(args):
        value = None
        if arg in ("-w", "--workers") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--workers="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-w") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit() and int(value) > 0:
            found = int(value)  # the last one wins, as in argparse
    return found


def _parent_gunicorn_args() -> list[str] | None:
    """The command line of the parent process when it is a gunicorn master."""
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - only here, and rarely

        args: list[str] = psutil.Process(os.getppid()).cmdline()
    except Exception:  # the parent may be gone or hidden; then there is none
        return None
    if any(Path(arg).name.startswith("gunicorn") for arg in args[:3]):
        return args[1:]
    return None


def worker_count(
    workers: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    parent_args: list[str] | None = None,
) -> tuple[int, str]:
    """How many workers share the container, and where that number came from.

    In order: ``workers=``; ``WEB_CONCURRENCY`` (gunicorn's own default for ``-w``);
    gunicorn's count as a worker can see it: ``ARENAPOOL_WORKERS`` (exported before each
    fork by ``integrations/gunicorn.conf.py``'s ``pre_fork`` hook, so it follows
    TTIN/TTOU), then ``-w``/``--workers`` in ``GUNICORN_CMD_ARGS``, then in the parent
    gunicorn master's command line; else 1. A worker has no other way to ask: gunicorn
    keeps the count in the master's memory and passes nothing to the worker's app.
    ``parent_args`` replaces the parent's command line (tests).
    """
    env = os.environ if environ is None else environ
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            msg = f"workers must be a positive int, got {workers!r}"
            raise AutoBudgetError(msg, limit=None, workers=0)
        return workers, "workers="
    for name in ("WEB_CONCURRENCY", "ARENAPOOL_WORKERS"):
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), name
    from_cmd = _gunicorn_workers_from_args(shlex.split(env.get("GUNICORN_CMD_ARGS", "")))
    if from_cmd is not None:
        return from_cmd, "GUNICORN_CMD_ARGS"
    args = _parent_gunicorn_args() if parent_args is None else parent_args
    from_parent = _gunicorn_workers_from_args(args or [])
    if from_parent is not None:
        return from_parent, "gunicorn master's command line"
    return 1, "default (one worker)"


@dataclass(frozen=True)
class BudgetDerivation:
    """How ``budget="auto"`` arrived at one worker's budget, with every term.

    With ``L`` the container limit, ``W`` workers, ``B`` the baseline (this worker's RSS
    when the pool is built: interpreter, imports, the app; RSS counts pages shared with
    the master in every worker, so it errs on the safe side), ``H`` the respawn headroom
    and ``m`` the margin fraction::

        share  = (L - W*B - H) / W      each worker's part of what the baselines leave
        budget = share * (1 - m)        rounded down to a whole MiB

    - ``H = B``: gunicorn replaces a dead or recycled worker by forking a new one while
      the others keep serving at full budget; the replacement's start-up (up to one
      baseline) overlaps the old worker's memory until it is gone. Budgeting for one
      overlap covers a crash or a ``max_requests`` recycle; a ``HUP`` reload, which
      starts every new worker before the old ones stop, needs ``W`` baselines (use a
      rolling restart of containers instead).
    - ``m`` (default 0.25) keeps a quarter of each share outside the pool for objects a
      handler decodes from its body: the pool bounds the bytes of bodies, not the Python
      objects made from them, which live on the heap while the handler runs. Measured
      with orjson on 4 MiB documents: 0.8x the JSON bytes for long strings, 3x for the
      structured-log records of the example service, 8x for small dicts of numbers. A
      handler that decodes and answers without awaiting in between holds one body's
      objects at a time per worker; a quarter of the share holds two to three of the
      largest bodies at 3x. The governor's container watermarks are the backstop for
      handlers that keep more.
    """

    limit: int
    limit_source: str
    workers: int
    workers_source: str
    baseline: int
    respawn_headroom: int
    margin_fraction: float
    share: int
    margin: int
    budget: int

    def describe(self) -> str:
        """The one start-up log line."""
        return (
            f"budget=auto: {format_size(self.budget)} per worker = "
            f"(limit {format_size(self.limit)} [{self.limit_source}]"
            f" - {self.workers} workers [{self.workers_source}]"
            f" x baseline {format_size(self.baseline)}"
            f" - respawn headroom {format_size(self.respawn_headroom)})"
            f" / {self.workers} = share {format_size(self.share)},"
            f" less margin {self.margin_fraction:g} ({format_size(self.margin)})"
            " for objects decoded from bodies"
        )


def derive_budget(
    limit: int | None,
    *,
    workers: int,
    baseline: int,
    limit_source: str = "given",
    workers_source: str = "given",
    margin: float = 0.25,
) -> BudgetDerivation:
    """Apply the arithmetic of :class:`BudgetDerivation`; raise :class:`AutoBudgetError`
    when there is no limit or the result is under :data:`MIN_AUTO_BUDGET`."""
    if limit is None:
        msg = (
            f"budget='auto' needs a container memory limit and found none ({limit_source}); "
            "pass a number instead, e.g. SlabPool(budget='256MiB'), or set a memory limit "
            "on the container"
        )
        raise AutoBudgetError(msg, limit=None, workers=workers)
    if not 0 <= margin < 1 or math.isnan(margin):
        msg = f"margin must be in [0, 1), got {margin!r}"
        raise AutoBudgetError(msg, limit=limit, workers=workers)
    headroom = baseline
    share = (limit - workers * baseline - headroom) // workers
    kept = int(share * margin) if share > 0 else 0
    budget = share - kept
    if budget >= MiB:
        budget -= budget % MiB
    if budget < MIN_AUTO_BUDGET:
        msg = (
            f"budget='auto' leaves {format_size(max(budget, 0))} per worker: limit "
            f"{format_size(limit)} - {workers} workers x baseline {format_size(baseline)} "
            f"- respawn headroom {format_size(headroom)}, divided by {workers}, less "
            f"margin {margin:g}; raise the container limit, run fewer workers, or pass "
            "budget= a number"
        )
        raise AutoBudgetError(msg, limit=limit, workers=workers)
    return BudgetDerivation(
        limit=limit,
        limit_source=limit_source,
        workers=workers,
        workers_source=workers_source,
        baseline=baseline,
        respawn_headroom=headroom,
        margin_fraction=margin,
        share=share,
        margin=kept,
        budget=budget,
    )


def current_rss() -> int:
    """This process's resident set size in bytes, from the OS.

    On Linux one read of ``/proc/self/statm`` (the file psutil reads for it); psutil
    elsewhere. Read directly, a serving process need not import psutil at all (about
    0.7 MiB of Python objects: ``benchmarks/startup_rss.py``), and the governor reads it
    at every tick.
    """
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        import psutil  # noqa: PLC0415 - where there is no /proc

        rss: int = psutil.Process().memory_info().rss
        return rss
    try:
        fields = os.read(fd, 256).split()
    finally:
        os.close(fd)
    return int(fields[1]) * _PAGE_SIZE


#: the unit of ``/proc/self/statm``
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def auto_budget(
    workers: int | None = None,
    *,
    root: str | os.PathLike[str] = "/",
    environ: Mapping[str, str] | None = None,
    baseline: int | None = None,
    margin: float = 0.25,
) -> BudgetDerivation:
    """Derive this worker's budget from its container (see :class:`BudgetDerivation`)."""
    count, source = worker_count(workers, environ=environ)
    limit, where = _read_limit(root)
    return derive_budget(
        limit,
        workers=count,
        baseline=current_rss() if baseline is None else baseline,
        limit_source=where,
        workers_source=source,
        margin=margin,
    )


def rederive(previous: BudgetDerivation, *, root: str | os.PathLike[str] = "/") -> BudgetDerivation:
    """``previous`` with the container limit read again (workers, baseline and margin
    stay as measured at start-up); raises :class:`AutoBudgetError` as
    :func:`derive_budget` does."""
    limit, where = _read_limit(root)
    return derive_budget(
        limit,
        workers=previous.workers,
        baseline=previous.baseline,
        limit_source=where,
        workers_source=previous.workers_source,
        margin=previous.margin_fraction,
    )


def _read_limit(root: str | os.PathLike[str]) -> tuple[int | None, str]:
    cgroup = find_cgroup(root)
    if cgroup is None:
        return None, "no memory cgroup found"
    found = cgroup.limit()
    return found.limit, found.source()
