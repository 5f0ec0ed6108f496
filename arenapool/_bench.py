"""The measuring harness behind ``arenapool demo``, ``bench``, ``soak`` and ``benchmarks/``.

Theory of operation
-------------------
A :class:`Mode` is one way of running the example service (``integrations/
example_service/app.py``): its handler style (``plain``, ``orjson``, ``arenapool``,
``arenapool-msgspec``) plus the process setup users reach for today (an LD_PRELOADed
allocator, ``MALLOC_ARENA_MAX=2``, gunicorn recycling workers after N requests).

A :class:`Server` is one such service in its own process on 127.0.0.1; an
:class:`RssSampler` thread reads the resident set size of its whole process tree with
psutil every ``interval`` seconds. Nothing here estimates memory: every RSS number is a
psutil reading of the server, and every latency is client-side wall time.

:func:`run_case` starts a server, warms it up, drives it with one bounded
:func:`~arenapool._loadgen.run_load` and reads RSS at peak, in steady state (the median
of the second half of the load), right after the load and after ``idle`` seconds with
no traffic. The idle wait of one case overlaps the next case: an idle server uses no
CPU, so the next server is measured on an otherwise quiet machine while the previous
one is still being watched. :func:`run_matrix` runs modes x workloads x repeats in
that order, rotating the mode order every repeat so no mode always runs first, and
:func:`summarize` takes medians and ratios to a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import http.client
import importlib
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from ._loadgen import LoadResult, Plan, Workload, get_workload, run_load
from ._units import format_size, parse_size

__all__ = [
    "BASELINE",
    "BENCH_SETTINGS",
    "DEMO_SETTINGS",
    "MODES",
    "SOAK_SETTINGS",
    "CaseResult",
    "DemoResult",
    "Mode",
    "Progress",
    "RssSampler",
    "RunSettings",
    "Server",
    "SoakResult",
    "find_example_service",
    "find_library",
    "markdown_table",
    "measure_matrix",
    "plot_demo",
    "plot_matrix",
    "plot_soak",
    "resolve_modes",
    "rss_under_load",
    "run_case",
    "run_demo",
    "run_matrix",
    "run_soak",
    "service_env",
    "summarize",
]

MiB = 1024 * 1024
BASELINE = "orjson"
PACKAGE_DIR = Path(__file__).resolve().parent

# --- modes -------------------------------------------------------------------------

_LIBRARY_FILES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc.so"),
}
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
)


def find_library(name: str) -> str | None:
    """The path of an allocator library to LD_PRELOAD (``jemalloc``, ``mimalloc``)."""
    for directory in _LIBRARY_DIRS:
        for filename in _LIBRARY_FILES.get(name, ()):
            path = Path(directory, filename)
            if path.exists():
                return str(path)
    found = ctypes.util.find_library(name)  # a bare soname; the loader finds it
    return found or None


@dataclass(frozen=True)
class Mode:
    """One way of running the example service."""

    name: str
    service: str  # the example service's --mode
    description: str
    env: Mapping[str, str] = field(default_factory=dict)
    gunicorn_max_requests: int | None = None  # run under gunicorn, recycling workers
    unavailable: str | None = None  # why it cannot run here, or None


def _modes(recycle_after: int) -> list[Mode]:
    modes = [
        Mode("plain", "plain", "await request.json() + web.json_response"),
        Mode("orjson", "orjson", "orjson.loads(await request.read()) + orjson.dumps"),
        Mode("arenapool", "arenapool", "arenapool read_json (orjson) + json_response"),
        Mode("arenapool-msgspec", "arenapool-msgspec", "arenapool read_json (msgspec)"),
    ]
    for lib in ("jemalloc", "mimalloc"):
        path = find_library(lib)
        modes.append(
            Mode(
                f"orjson+{lib}",
                "orjson",
                f"orjson handler, LD_PRELOAD={path or lib}",
                env={"LD_PRELOAD": path} if path else {},
                unavailable=None
                if path
                else f"lib{lib} not found (Debian/Ubuntu: apt-get install lib{lib}2)",
            )
        )
    modes.append(
        Mode(
            "orjson+arena2",
            "orjson",
            "orjson handler, MALLOC_ARENA_MAX=2",
            {"MALLOC_ARENA_MAX": "2"},
        )
    )
    gunicorn_missing = None
    if importlib.util.find_spec("gunicorn") is None:
        gunicorn_missing = "gunicorn not installed (pip install 'arenapool[gunicorn]')"
    modes.append(
        Mode(
            "orjson+recycle",
            "orjson",
            f"orjson handler under gunicorn, 1 worker, max_requests={recycle_after}",
            gunicorn_max_requests=recycle_after,
            unavailable=gunicorn_missing,
        )
    )
    return modes


def mode_names() -> list[str]:
    return [m.name for m in _modes(1000)]


MODES = mode_names()


def resolve_modes(
    names: Iterable[str], *, recycle_after: int = 1000
) -> tuple[list[Mode], list[str]]:
    """The named modes that can run here, and a note for each one that cannot."""
    known = {m.name: m for m in _modes(recycle_after)}
    modes: list[Mode] = []
    notes: list[str] = []
    for name in names:
        if name not in known:
            msg = f"unknown mode {name!r}; choose from {', '.join(known)}"
            raise ValueError(msg)
        mode = known[name]
        if mode.unavailable:
            notes.append(f"skipped {name}: {mode.unavailable}")
        else:
            modes.append(mode)
    return modes, notes


# --- the example service in a subprocess ---------------------------------------------


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while inside, so the servers we started get stopped.

    Servers run in their own sessions (a Ctrl-C in the terminal reaches this process
    only); without this a ``kill`` or a CI timeout would leave them running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def find_example_service() -> Path:
    """The example service's ``app.py``.

    Looked up in order: ``$ARENAPOOL_EXAMPLE_SERVICE``; ``arenapool/_example_service/``
    inside an installed wheel (the wheel force-includes
    ``integrations/example_service/app.py`` there, see ``pyproject.toml``);
    ``integrations/example_service/`` next to the package in a source checkout or
    editable install. The packaged copy goes first: next to an installed package sits
    ``site-packages``, where an ``integrations/`` directory would be someone else's.
    """
    candidates = []
    if override := os.environ.get("ARENAPOOL_EXAMPLE_SERVICE"):
        candidates.append(Path(override))
    candidates += [
        PACKAGE_DIR / "_example_service" / "app.py",
        PACKAGE_DIR.parent / "integrations" / "example_service" / "app.py",
    ]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    msg = (
        f"cannot find the example service (tried {tried}); install arenapool from a source "
        "checkout (pip install -e .) or set ARENAPOOL_EXAMPLE_SERVICE to its app.py"
    )
    raise FileNotFoundError(msg)


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, for a process that runs the service.

    The service imports arenapool; ``PYTHONPATH`` leads with the directory above this
    very package, so it is importable even from a source checkout never installed.
    """
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_DIR.parent), env.get("PYTHONPATH", "")) if p
    )
    return env


def _gunicorn_quiet_args() -> list[str]:
    """Turn off gunicorn's control socket (gunicorn 24+), one shared path per user."""
    try:
        config = importlib.import_module("gunicorn.config")
    except ImportError:
        return []
    names = {setting.name for setting in config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """The example service in ``mode``, in a subprocess on 127.0.0.1 (a context manager)."""

    def __init__(
        self,
        mode: Mode,
        *,
        budget: str = "256MiB",
        limit: str = "8MiB",
        decay: float = 10.0,
        admin_token: str | None = None,
        governor: bool = True,
        log_dir: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.mode = mode
        self.host = "127.0.0.1"
        self.port = free_port()
        self.budget, self.limit, self.decay = budget, limit, decay
        self.admin_token = admin_token
        self.governor = governor
        self.startup_timeout = startup_timeout
        self._log_dir = log_dir
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, app: Path) -> list[str]:
        mode = self.mode
        if mode.gunicorn_max_requests is not None:
            factory = (
                f"app:make_app({mode.service!r}, budget={self.budget!r}, limit={self.limit!r})"
            )
            return [
                sys.executable, "-m", "gunicorn", factory,
                "--chdir", str(app.parent),
                "--bind", f"{self.host}:{self.port}",
                "--worker-class", "aiohttp.GunicornWebWorker",
                "--workers", "1",
                "--max-requests", str(mode.gunicorn_max_requests),
                "--max-requests-jitter", str(max(1, mode.gunicorn_max_requests // 10)),
                "--graceful-timeout", "10",
                *_gunicorn_quiet_args(),
            ]  # fmt: skip
        cmd = [
            sys.executable, str(app),
            "--mode", mode.service,
            "--port", str(self.port),
            "--budget", self.budget,
            "--limit", self.limit,
            "--decay", str(self.decay),
        ]  # fmt: skip
        if self.admin_token:
            cmd += ["--admin-token", self.admin_token]
        if not self.governor:
            cmd.append("--no-governor")
        return cmd

    def start(self) -> Server:
        app = find_example_service()
        env = service_env(self.mode.env)
        env.pop("ARENAPOOL_ADMIN_TOKEN", None)
        log_dir = self._log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.mode.name}-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(app),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not it
            )
        self._ps = psutil.Process(self.proc.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll GET /health until it answers 200, the process exits, or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = (
                    f"{self.mode.name} server exited with status {self.proc.returncode} "
                    f"before it was ready:\n{self.log_tail()}"
                )
                raise RuntimeError(msg)
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)  # readiness polling, bounded by startup_timeout
        msg = (
            f"{self.mode.name} server not ready after {self.startup_timeout:g} s:\n"
            f"{self.log_tail()}"
        )
        raise RuntimeError(msg)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def rss(self) -> int | None:
        """Resident set size of the server and all its children, in bytes."""
        if self._ps is None:
            return None
        try:
            procs = [self._ps, *self._ps.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # a recycled worker may be gone
                total += int(proc.memory_info().rss)
        return total or None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssSampler(threading.Thread):
    """Reads the RSS of some servers every ``interval`` seconds into ``samples``.

    ``samples[name]`` is a list of ``(seconds since t0, bytes)``. A thread rather than
    an asyncio task so the readings stay on time while the event loop is busy
    sending load.
    """

    def __init__(
        self, servers: Mapping[str, Server], *, interval: float = 0.2, t0: float | None = None
    ) -> None:
        super().__init__(name="arenapool-rss-sampler", daemon=True)
        self.servers = dict(servers)
        self.interval = interval
        self.t0 = time.monotonic() if t0 is None else t0
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in servers}
        self._stop_event = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> dict[str, int]:
        """Take one reading of every server now (also recorded in ``samples``)."""
        t = self.now()
        reading = {}
        for name, server in self.servers.items():
            rss = server.rss()
            if rss is not None:
                self.samples[name].append((t, rss))
                reading[name] = rss
        return reading

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5.0)


# --- progress reporting ----------------------------------------------------------------


class Progress:
    """Hooks a front end implements to show progress. The base class shows nothing."""

    def note(self, text: str) -> None:
        """A line worth showing (a skipped mode, a server that failed)."""

    def phase(self, label: str, total: float) -> None:
        """A new phase of ``total`` seconds starts (a case, a demo slice, an idle wait)."""

    def tick(self, label: str, elapsed: float, result: LoadResult | None) -> None:
        """Called about four times a second while a phase runs."""


# --- settings shared by every kind of run ------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """What the runs of one command share: the traffic's seed and bounds, the servers.

    The load stops after ``duration`` seconds or ``requests`` requests, whichever comes
    first; ``idle`` is the wait without traffic before the last RSS reading and
    ``timeout`` the limit per request. Every server started gets ``budget``, ``limit``
    and ``governor`` and writes its log into ``log_dir`` (default: the temp directory).
    """

    seed: int = 1
    duration: float = 10.0
    requests: int = 1_000_000
    idle: float = 15.0
    timeout: float = 30.0
    budget: str = "256MiB"
    limit: str = "8MiB"
    governor: bool = True
    log_dir: Path | None = None

    def server(self, mode: Mode) -> Server:
        """A server for ``mode`` with these settings, not started yet."""
        return Server(
            mode,
            budget=self.budget,
            limit=self.limit,
            governor=self.governor,
            log_dir=self.log_dir,
        )


BENCH_SETTINGS = RunSettings()  # one case of the matrix
DEMO_SETTINGS = RunSettings(duration=70.0, requests=10_000_000)  # both servers together
SOAK_SETTINGS = RunSettings(duration=600.0, requests=100_000_000)


async def _drive(
    server: Server,
    plan: Plan,
    workload: Workload,
    settings: RunSettings,
    result: LoadResult | None = None,
    *,
    progress: Progress,
    label: str,
    requests: int | None = None,
    duration: float | None = None,
) -> LoadResult:
    """Load ``server`` with ``plan`` while ticking ``progress``; counts go into ``result``.

    ``requests`` and ``duration`` bound this load; by default the settings' bounds.
    """
    res = result if result is not None else LoadResult()
    load = asyncio.ensure_future(
        run_load(
            server.host,
            server.port,
            plan,
            concurrency=workload.concurrency,
            requests=settings.requests if requests is None else requests,
            duration=settings.duration if duration is None else duration,
            timeout=settings.timeout,
            result=res,
        )
    )
    start = time.monotonic()
    try:
        while not load.done():
            progress.tick(label, time.monotonic() - start, res)
            await asyncio.wait([load], timeout=0.25)
    finally:
        if not load.done():  # we were cancelled: do not leave the load running
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    return load.result()


async def _idle(seconds: float, progress: Progress, label: str) -> None:
    progress.phase(label, seconds)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        progress.tick(label, seconds - left, None)
        await asyncio.sleep(min(0.25, left))  # the idle wait is the measurement


# --- one case and the matrix -----------------------------------------------------------


@dataclass
class CaseResult:
    """One mode driven with one workload once."""

    mode: str
    workload: str
    repeat: int
    load: LoadResult
    rss_start: int | None = None
    rss_peak: int | None = None
    rss_steady: int | None = None
    rss_end: int | None = None
    rss_idle: int | None = None
    idle_s: float = 0.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    load_window: tuple[float, float] = (0.0, 0.0)

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "workload": self.workload,
            "repeat": self.repeat,
            **self.load.to_dict(),
            "rss_start": self.rss_start,
            "rss_peak": self.rss_peak,
            "rss_steady": self.rss_steady,
            "rss_end": self.rss_end,
            "rss_idle": self.rss_idle,
            "idle_s": self.idle_s,
            "load_window_s": [round(x, 3) for x in self.load_window],
        }
        if samples:
            out["rss_samples"] = [[round(t, 3), rss] for t, rss in self.samples]
        return out


def steady_rss(values: Sequence[int]) -> int | None:
    """The median of the second half of the readings taken under load."""
    if not values:
        return None
    return int(statistics.median(values[len(values) // 2 :]))


def rss_under_load(
    samples: Sequence[tuple[float, int]], windows: Iterable[tuple[float, float]]
) -> dict[str, int | None]:
    """``rss_peak`` over all ``samples`` and ``rss_steady`` over those inside a window."""
    spans = list(windows)
    under_load = [rss for t, rss in samples if any(a <= t <= b for a, b in spans)]
    return {
        "rss_peak": max((rss for _, rss in samples), default=None),
        "rss_steady": steady_rss(under_load),
    }


def _fill_rss(case: CaseResult, sampler: RssSampler, name: str) -> None:
    case.samples = list(sampler.samples[name])
    rss = rss_under_load(case.samples, [case.load_window])
    case.rss_peak, case.rss_steady = rss["rss_peak"], rss["rss_steady"]


async def run_case(
    mode: Mode,
    workload: Workload,
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeat: int = 0,
    interval: float = 0.2,
    progress: Progress | None = None,
    deck: Sequence[Any] | None = None,
    background: list[asyncio.Task[None]] | None = None,
) -> CaseResult:
    """Start ``mode``'s server, drive it with ``workload``, read its RSS, stop it.

    With ``background`` (a list), the idle wait and the final reading happen in a task
    appended to it, and this returns as soon as the load is done; await the tasks
    before reading ``rss_idle``.
    """
    progress = progress or Progress()
    seed, duration, idle = settings.seed, settings.duration, settings.idle
    label = f"{mode.name} / {workload.name} #{repeat + 1}"
    body_deck = list(deck) if deck is not None else workload.deck(seed)
    server = settings.server(mode).start()
    sampler = RssSampler({mode.name: server}, interval=interval)
    try:
        sampler.start()
        case = CaseResult(mode.name, workload.name, repeat, LoadResult(), idle_s=idle)
        case.rss_start = sampler.sample().get(mode.name)
        # Warm-up: a few requests from another seed, not counted, so first-call costs
        # (imports, pool growth) are not in the throughput numbers. They are in the RSS.
        warm = Plan(body_deck, seed + 1_000_003)
        await run_load(
            server.host,
            server.port,
            warm,
            concurrency=workload.concurrency,
            requests=2 * workload.concurrency,
            duration=min(2.0, duration),
            timeout=settings.timeout,
        )
        progress.phase(label, duration)
        t_start = sampler.now()
        plan = Plan(body_deck, seed)
        await _drive(server, plan, workload, settings, case.load, progress=progress, label=label)
        case.rss_end = sampler.sample().get(mode.name)
        case.load_window = (t_start, sampler.now())
    except BaseException:
        sampler.stop()
        server.stop()
        raise

    async def finish() -> None:
        try:
            if idle > 0:
                await asyncio.sleep(idle)  # the idle wait is the measurement
            case.rss_idle = sampler.sample().get(mode.name) if idle > 0 else case.rss_end
        finally:
            sampler.stop()
            # In a thread: the next case may be under load on this event loop.
            await asyncio.to_thread(server.stop)
            _fill_rss(case, sampler, mode.name)

    if background is None:
        if idle > 0:
            progress.phase(f"{label}: idle", idle)
        await finish()
    else:
        background.append(asyncio.ensure_future(finish()))
    _fill_rss(case, sampler, mode.name)
    return case


async def run_matrix(
    modes: Sequence[Mode],
    workloads: Sequence[Workload],
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> list[CaseResult]:
    """Every mode x workload, ``repeats`` times; the same seed for every mode."""
    progress = progress or Progress()
    decks = {w.name: w.deck(settings.seed) for w in workloads}
    cases: list[CaseResult] = []
    background: list[asyncio.Task[None]] = []
    try:
        for repeat in range(repeats):
            shift = repeat % max(1, len(modes))
            order = [*modes[shift:], *modes[:shift]]
            for workload in workloads:
                for mode in order:
                    # At most one server idles in the background while the next is loaded.
                    await _drain(background, keep=1)
                    try:
                        case = await run_case(
                            mode,
                            workload,
                            settings=settings,
                            repeat=repeat,
                            progress=progress,
                            deck=decks[workload.name],
                            background=background,
                        )
                    except RuntimeError as exc:  # a server that would not start
                        progress.note(f"{mode.name}/{workload.name}: {exc}")
                        continue
                    cases.append(case)
        if background:
            progress.phase("waiting for the last idle reading", settings.idle)
        await _drain(background, keep=0)
    finally:
        for task in background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*background, return_exceptions=True)
    return cases


async def _drain(tasks: list[asyncio.Task[None]], *, keep: int) -> None:
    while len(tasks) > keep:
        await tasks.pop(0)


def measure_matrix(
    modes: Sequence[Mode],
    workloads: Sequence[Workload],
    *,
    settings: RunSettings = BENCH_SETTINGS,
    repeats: int = 3,
    progress: Progress | None = None,
) -> tuple[list[CaseResult], list[dict[str, Any]]]:
    """:func:`run_matrix` from synchronous code, and its :func:`summarize`d rows.

    A SIGTERM stops the servers and raises KeyboardInterrupt, as Ctrl-C does.
    """
    with sigterm_interrupts():
        cases = asyncio.run(
            run_matrix(modes, workloads, settings=settings, repeats=repeats, progress=progress)
        )
    return cases, summarize(cases)


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _rounded(value: float | None, digits: int | None = None) -> float | None:
    """Round for the JSON output; byte counts (``digits=None``) become whole numbers."""
    if value is None:
        return None
    return round(value) if digits is None else round(value, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def summarize(cases: Sequence[CaseResult], *, baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per (workload, mode): medians over repeats and ratios to ``baseline``."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for case in cases:
        groups.setdefault((case.workload, case.mode), []).append(case)
    rows: list[dict[str, Any]] = []
    for (workload, mode), group in groups.items():
        rows.append(
            {
                "workload": workload,
                "mode": mode,
                "runs": len(group),
                "rps": _rounded(_median(c.load.rps for c in group), 1),
                "p50_ms": _rounded(_median(c.load.percentile_ms(50) for c in group), 3),
                "p99_ms": _rounded(_median(c.load.percentile_ms(99) for c in group), 3),
                "rss_peak": _rounded(_median(c.rss_peak for c in group)),
                "rss_steady": _rounded(_median(c.rss_steady for c in group)),
                "rss_end": _rounded(_median(c.rss_end for c in group)),
                "rss_idle": _rounded(_median(c.rss_idle for c in group)),
                "ok": sum(c.load.ok for c in group),
                "shed": sum(c.load.shed for c in group),
                "errors": sum(c.load.errors for c in group),
                "corrupt": sum(c.load.corrupt for c in group),
            }
        )
    by_key = {(r["workload"], r["mode"]): r for r in rows}
    for row in rows:
        base = by_key.get((row["workload"], baseline))
        for key in ("rps", "p99_ms", "rss_peak", "rss_steady", "rss_idle"):
            row[f"{key}_vs_{baseline}"] = _ratio(row[key], base[key]) if base else None
    return rows


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(rows: Sequence[dict[str, Any]], *, baseline: str = BASELINE) -> str:
    """The summary as a Markdown table (RSS in MiB, ratios to ``baseline``)."""
    head = (
        f"| workload | mode | req/s | vs {baseline} | p50 ms | p99 ms | peak RSS | "
        f"steady RSS | vs {baseline} | after idle | errors | shed |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['mode']} | {_num(r['rps'])} | "
            f"{_x(r[f'rps_vs_{baseline}'])} | {_num(r['p50_ms'], '.1f')} | "
            f"{_num(r['p99_ms'], '.1f')} | {_mib(r['rss_peak'])} | {_mib(r['rss_steady'])} | "
            f"{_x(r[f'rss_steady_vs_{baseline}'])} | {_mib(r['rss_idle'])} | "
            f"{r['errors'] + r['corrupt']} | {r['shed']} |"
        )
    lines.append("")
    lines.append("RSS in MiB (psutil, server process tree); latencies client-side; medians.")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in ("aiohttp", "orjson", "msgspec", "psutil"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version  # noqa: PLC0415

            versions[name] = version(name)
    libc = platform.libc_ver()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libc": " ".join(x for x in libc if x),
        "cpus": os.cpu_count(),
        "memory": psutil.virtual_memory().total,
        "versions": versions,
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


# --- plots --------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, loaded when plotting
    except ImportError as exc:
        msg = "plots need matplotlib: pip install 'arenapool[cli]'"
        raise ImportError(msg) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save_rss_plot(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    """Finish an RSS-over-time plot (axis from 0, grid, legend) and save it."""
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def plot_matrix(
    cases: Sequence[CaseResult], rows: Sequence[dict[str, Any]], out: Path
) -> list[Path]:
    """One RSS-over-time plot per workload (first repeat) and one summary bar chart."""
    plt = _pyplot()
    written: list[Path] = []
    for workload in dict.fromkeys(c.workload for c in cases):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for case in cases:
            if case.workload == workload and case.repeat == 0 and case.samples:
                t0 = case.samples[0][0]
                ax.plot(
                    [t - t0 for t, _ in case.samples],
                    [rss / MiB for _, rss in case.samples],
                    label=case.mode,
                    linewidth=1.2,
                )
        ax.set(title=f"Server RSS, workload {workload!r}", xlabel="seconds", ylabel="RSS (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, out / f"bench-rss-{workload}.png"))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    by_key = {(r["workload"], r["mode"]): r for r in rows}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        xs = [w + i * width for w in range(len(workloads))]
        steady = [(by_key.get((w, mode)) or {}).get("rss_steady") or 0 for w in workloads]
        rps = [(by_key.get((w, mode)) or {}).get("rps") or 0 for w in workloads]
        ax1.bar(xs, [s / MiB for s in steady], width, label=mode)
        ax2.bar(xs, rps, width, label=mode)
    for ax, title in ((ax1, "steady RSS (MiB)"), (ax2, "requests/s")):
        ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], workloads)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    written.append(_save(plt, fig, out / "bench-summary.png"))
    return written


# --- demo -----------------------------------------------------------------------------------


@dataclass
class DemoResult:
    names: list[str]
    loads: dict[str, LoadResult]
    samples: dict[str, list[tuple[float, int]]]
    windows: dict[str, list[tuple[float, float]]]
    rss_idle: dict[str, int | None]
    idle_s: float
    settings: dict[str, Any]

    def stats(self, name: str) -> dict[str, Any]:
        return {
            **self.loads[name].to_dict(),
            **rss_under_load(self.samples[name], self.windows[name]),
            "rss_idle": self.rss_idle.get(name),
            "idle_s": self.idle_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "arenapool demo",
            "settings": self.settings,
            "machine": machine_info(),
            "servers": {name: self.stats(name) for name in self.names},
            "rss_samples": {
                name: [[round(t, 3), rss] for t, rss in s] for name, s in self.samples.items()
            },
            "load_windows": {n: [list(w) for w in ws] for n, ws in self.windows.items()},
        }


async def run_demo(
    *,
    settings: RunSettings = DEMO_SETTINGS,
    modes: Sequence[str] = ("orjson", "arenapool"),
    workload: Workload | None = None,
    slice_s: float = 5.0,
    progress: Progress | None = None,
) -> DemoResult:
    """Drive the same seeded traffic at each mode's server in alternating slices.

    On a 2-core machine, two servers loaded at once share the cores with each other and
    with the client, so whichever uses less CPU lends it to the other. Alternating
    ``slice_s``-second slices (A B B A A B ...) gives each server the machine to itself
    while it is measured, and spreads any background noise over both.
    ``settings.duration`` is the total load time (half per server); ``settings.requests``
    bounds each server's total. Afterwards each server is left idle until
    ``settings.idle`` seconds after its last slice.
    """
    progress = progress or Progress()
    workload = workload or get_workload("mixed")
    seed, duration, idle = settings.seed, settings.duration, settings.idle
    progress.phase("building request bodies", 0)
    deck = workload.deck(seed)
    resolved, notes = resolve_modes(modes)
    for note in notes:
        progress.note(note)
    servers: dict[str, Server] = {}
    try:
        for mode in resolved:
            servers[mode.name] = settings.server(mode).start()
        sampler = RssSampler(servers, interval=0.2)
        sampler.start()
        try:
            names = list(servers)
            plans = {n: Plan(deck, seed) for n in names}
            loads = {n: LoadResult() for n in names}
            windows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            rounds = max(1, round(duration / (slice_s * max(1, len(names)))))
            per_slice = settings.requests // rounds
            for r in range(rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    label = f"{name}: slice {r + 1}/{rounds}"
                    progress.phase(label, slice_s)
                    start = sampler.now()
                    await _drive(
                        servers[name],
                        plans[name],
                        workload,
                        settings,
                        loads[name],
                        progress=progress,
                        label=label,
                        requests=per_slice,
                        duration=slice_s,
                    )
                    windows[name].append((start, sampler.now()))
            rss_idle: dict[str, int | None] = {}
            for name in sorted(names, key=lambda n: windows[n][-1][1]):
                wait = windows[name][-1][1] + idle - sampler.now()
                if wait > 0:
                    await _idle(wait, progress, f"idle: {name} after {idle:g} s")
                rss_idle[name] = sampler.sample().get(name)
        finally:
            sampler.stop()
    finally:
        for server in servers.values():
            server.stop()
    described = {
        "workload": workload.name,
        "workload_sizes": [workload.min_size, workload.max_size, workload.distribution],
        "concurrency": workload.concurrency,
        "duration_s": duration,
        "slice_s": slice_s,
        "idle_s": idle,
        "seed": seed,
        "budget": settings.budget,
        "limit": settings.limit,
        "governor": settings.governor,
        "notes": notes,
    }
    return DemoResult(names, loads, sampler.samples, windows, rss_idle, idle, described)


def plot_demo(demo: DemoResult, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    for i, name in enumerate(demo.names):
        samples = demo.samples[name]
        color = colors[i % len(colors)]
        ax.plot(
            [t for t, _ in samples],
            [rss / MiB for _, rss in samples],
            label=f"{name} RSS",
            color=color,
            linewidth=1.4,
        )
        for a, b in demo.windows[name]:
            ax.axvspan(a, b, color=color, alpha=0.07, linewidth=0)
    ax.set(
        title="Server RSS under the same mixed load (shaded: when each server is driven)",
        xlabel="seconds",
        ylabel="RSS (MiB)",
    )
    return _save_rss_plot(plt, fig, ax, path)


# --- soak -------------------------------------------------------------------------------------


@dataclass
class SoakResult:
    mode: str
    load: LoadResult
    samples: list[tuple[float, int]]
    load_window: tuple[float, float]
    warmup_s: float
    slope_mib_per_min: float | None
    intercept: float | None
    rss_idle: int | None
    idle_s: float
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "arenapool soak",
            "mode": self.mode,
            "settings": self.settings,
            "machine": machine_info(),
            **self.load.to_dict(),
            "warmup_s": self.warmup_s,
            "drift_mib_per_min": None
            if self.slope_mib_per_min is None
            else round(self.slope_mib_per_min, 4),
            **rss_under_load(self.samples, [self.load_window]),
            "rss_idle": self.rss_idle,
            "idle_s": self.idle_s,
            "rss_samples": [[round(t, 3), rss] for t, rss in self.samples],
        }


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Slope and intercept of the least-squares line through ``points`` (None if < 2)."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


async def run_soak(
    *,
    settings: RunSettings = SOAK_SETTINGS,
    mode: str = "arenapool",
    workload: Workload | None = None,
    warmup: float | None = None,
    interval: float = 1.0,
    progress: Progress | None = None,
) -> SoakResult:
    """One long run; RSS drift is the least-squares slope of RSS after ``warmup``."""
    progress = progress or Progress()
    workload = workload or get_workload("mixed")
    seed, duration, idle = settings.seed, settings.duration, settings.idle
    warmup_s = min(60.0, duration / 5) if warmup is None else warmup
    resolved, notes = resolve_modes([mode])
    if not resolved:
        raise RuntimeError(notes[0])
    progress.phase("building request bodies", 0)
    deck = workload.deck(seed)
    with settings.server(resolved[0]) as server:
        sampler = RssSampler({mode: server}, interval=interval)
        sampler.start()
        try:
            label = f"soak {mode}"
            progress.phase(label, duration)
            start = sampler.now()
            plan = Plan(deck, seed)
            load = await _drive(server, plan, workload, settings, progress=progress, label=label)
            window = (start, sampler.now())
            sampler.sample()
            if idle > 0:
                await _idle(idle, progress, f"idle {idle:g} s")
            rss_idle = sampler.sample().get(mode)
        finally:
            sampler.stop()
    samples = sampler.samples[mode]
    fit_points = [
        (t / 60.0, rss / MiB) for t, rss in samples if window[0] + warmup_s <= t <= window[1]
    ]
    fit = least_squares(fit_points)
    return SoakResult(
        mode=mode,
        load=load,
        samples=samples,
        load_window=window,
        warmup_s=warmup_s,
        slope_mib_per_min=None if fit is None else fit[0],
        intercept=None if fit is None else fit[1],
        rss_idle=rss_idle,
        idle_s=idle,
        settings={
            "workload": workload.name,
            "duration_s": duration,
            "interval_s": interval,
            "seed": seed,
            "budget": settings.budget,
            "limit": settings.limit,
            "governor": settings.governor,
        },
    )


def plot_soak(soak: SoakResult, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(
        [t / 60.0 for t, _ in soak.samples],
        [rss / MiB for _, rss in soak.samples],
        label=f"{soak.mode} RSS",
        linewidth=1.2,
    )
    if soak.slope_mib_per_min is not None and soak.intercept is not None:
        a = (soak.load_window[0] + soak.warmup_s) / 60.0
        b = soak.load_window[1] / 60.0
        ax.plot(
            [a, b],
            [soak.intercept + soak.slope_mib_per_min * x for x in (a, b)],
            linestyle="--",
            label=f"drift {soak.slope_mib_per_min:+.2f} MiB/min",
        )
    ax.axvspan(
        0, (soak.load_window[0] + soak.warmup_s) / 60.0, color="grey", alpha=0.1, label="warm-up"
    )
    ax.set(title=f"Soak: {soak.mode}", xlabel="minutes", ylabel="RSS (MiB)")
    return _save_rss_plot(plt, fig, ax, path)


def size_arg(text: str) -> str:
    """Validate a size option and give it back unchanged (``"256MiB"``)."""
    parse_size(text)
    return text


def describe_size(nbytes: float | None) -> str:
    return "-" if nbytes is None else format_size(nbytes)
