"""Starting a server under test on 127.0.0.1: the example service in a subprocess, or an
aiohttp app in this process.

Theory of operation
-------------------
:class:`Server` runs ``integrations/example_service/app.py`` of this checkout in one
:class:`~harness.modes.Mode` (a handler style plus a process setup) in its own process
and session, waits until ``GET /health`` answers, and reads the RSS of its whole
process tree with psutil; :func:`sigterm_interrupts` makes a ``kill`` stop the servers
as Ctrl-C does. :func:`serve` runs an app in this process instead, for tests that look
at the app's pool while the server runs.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import http.client
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type information
from aiohttp import web

import arenapool

from .cpus import spawn_on
from .http import HOST
from .modes import Mode
from .procstat import ProcStat, read_stat

__all__ = [
    "ROOT",
    "Server",
    "cache_bytecode",
    "find_example_service",
    "free_port",
    "serve",
    "service_env",
    "sigterm_interrupts",
]

#: the source checkout the harness belongs to
ROOT = Path(__file__).resolve().parent.parent
ARENAPOOL_DIR = Path(arenapool.__file__).resolve().parent


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
    """The example service's ``app.py``: ``$ARENAPOOL_EXAMPLE_SERVICE``, else the checkout's.

    The harness runs from a source checkout; the service is
    ``integrations/example_service/app.py`` next to ``harness/``.
    """
    override = os.environ.get("ARENAPOOL_EXAMPLE_SERVICE")
    path = Path(override) if override else ROOT / "integrations" / "example_service" / "app.py"
    if path.is_file():
        return path
    msg = (
        f"cannot find the example service at {path}; run from a source checkout of "
        "arenapool or set ARENAPOOL_EXAMPLE_SERVICE to its app.py"
    )
    raise FileNotFoundError(msg)


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, for a process that runs the service.

    The service imports arenapool; ``PYTHONPATH`` leads with the directory above the
    arenapool package this process imports, so the service runs the same arenapool (and
    a source checkout never installed works too).
    """
    cache_bytecode()
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ARENAPOOL_DIR.parent), env.get("PYTHONPATH", "")) if p
    )
    return env


@functools.cache
def cache_bytecode() -> bool:
    """Write arenapool's bytecode where it is missing or stale (once per process); True
    if every module was compiled or already cached.

    A server then loads arenapool from bytecode, as it loads aiohttp, orjson and every
    other installed package (pip compiles those when it installs them). An editable
    install writes none, and where ``PYTHONDONTWRITEBYTECODE`` is set (this machine)
    Python never writes it: each server would compile arenapool's source as it
    starts, and keep what the compiler left in its heap (0.6 MiB at rest in
    ``benchmarks/startup_rss.py``), a cost no installed arenapool has. A tree that
    cannot be written is left as it is.
    """
    return bool(compileall.compile_dir(str(ARENAPOOL_DIR), quiet=2))


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
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """The example service in ``mode``, in a subprocess on 127.0.0.1 (a context manager).

    Its own process, so :meth:`rss` reads the server's memory and nothing else.
    """

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
        cpus: Collection[int] | None = None,
    ) -> None:
        self.mode = mode
        self.cpus = cpus  # the CPUs its process runs on (None: wherever the OS puts it)
        self.host = HOST
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
            *mode.args,
        ]  # fmt: skip
        if self.admin_token:
            cmd += ["--admin-token", self.admin_token]
        if not self.governor:
            cmd.append("--no-governor")
        return cmd

    def start(self) -> Server:
        app = ROOT / self.mode.app if self.mode.app else find_example_service()
        env = service_env(self.mode.env)
        env.pop("ARENAPOOL_ADMIN_TOKEN", None)
        log_dir = self._log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.mode.name}-{self.port}.log"
        with self.log_path.open("wb") as log, spawn_on(self.cpus):
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

    def _tree(self) -> list[psutil.Process]:
        """The server's process and all its children (a gunicorn master's workers);
        empty before it starts or once it is gone."""
        if self._ps is None:
            return []
        try:
            return [self._ps, *self._ps.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int | None:
        """Resident set size of the server and all its children, in bytes."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):  # a recycled worker may be gone
                total += int(proc.memory_info().rss)
        return total or None

    def stat(self) -> ProcStat | None:
        """The server process's CPU time and page faults (``/proc/PID/stat``); ``None``
        before it starts and under gunicorn (workers come and go)."""
        if self.proc is None or self.mode.gunicorn_max_requests is not None:
            return None
        try:
            return read_stat(self.proc.pid)
        except OSError:
            return None

    def pids(self) -> list[int]:
        """The server's process and all its children (a gunicorn master's workers)."""
        return [proc.pid for proc in self._tree()]

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


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    *,
    handler_cancellation: bool = False,
    shutdown_timeout: float = 1.0,
    **runner_options: Any,
) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 on a free port; yields the port.

    ``handler_cancellation=False`` is aiohttp's production default (its test server
    turns it on): a client that leaves does not cancel its handler. On exit, handlers
    still running get ``shutdown_timeout`` seconds: after a refusal aiohttp keeps
    reading and discarding the unread body for up to ``lingering_time`` (10 s), even
    once the client has gone, and a test should not wait for that.
    """
    runner = web.AppRunner(
        app,
        handler_cancellation=handler_cancellation,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        **runner_options,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()
