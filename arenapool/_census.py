"""Heap census: which Python types hold memory, and which grew since last time.

Theory of operation
-------------------
A census walks every object (pympler's ``muppy.get_objects`` then
``summary.summarize``): seconds on a big heap, mostly inside C calls that hold the
GIL (``gc.collect``, ``gc.get_objects``), so a thread would stall the event loop.
Instead the parent ``fork()``s: the child inherits a copy-on-write image of the heap,
closes every inherited descriptor but the result pipe (so sockets the parent closes
meanwhile really close), summarises, writes one frame to the pipe and ``os._exit``s
without running any parent cleanup. The parent reads the pipe with
``loop.connect_read_pipe`` and reaps the child by polling ``waitpid(WNOHANG)`` from
loop callbacks, so the loop only pays for the ``fork()`` itself. A child that overruns
``timeout`` is killed; a reap that was still pending is finished by callbacks.

The last ``suspect_censuses`` full summaries are kept as opaque ``bytes`` frames (not
as Python objects, which would show up in the next census's diff); the child parses
them and computes the diff against the newest and the *leak suspects*: the types whose
count grew in each of the last ``suspect_censuses`` censuses (a cache that never
evicts grows every time; a burst grows once and shrinks). Frame layout: 8-byte
big-endian length of the result JSON, the result JSON, then the full summary JSON.

Where ``fork`` does not exist (or ``use_fork=False``) the same work runs in a worker
thread and the result says ``"mode": "thread"``: correct, but the loop does stall, and
objects moved to the permanent generation by ``gc.freeze()`` are not seen (the forked
child unfreezes its own copy first).
State per :class:`Census`: the previous frames (a bounded deque), the time the last
census started (rate limit), and whether one is running (one at a time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import os
import signal
import time
import tracemalloc
import warnings
from typing import Any, Final

import orjson

from ._errors import CensusFailed, CensusRateLimited

__all__ = ["Census", "census"]

_HEADER: Final = 8
_REAP_POLL: Final = 0.02


def _rows_by(rows: list[list[Any]], key: int, top: int) -> list[dict[str, Any]]:
    ranked = sorted(rows, key=lambda r: r[key], reverse=True)[:top]
    return [{"type": r[0], "count": r[1], "size": r[2]} for r in ranked]


def _diff(previous: list[list[Any]], rows: list[list[Any]], top: int) -> dict[str, Any]:
    before = {r[0]: (r[1], r[2]) for r in previous}
    changes = []
    for name, count, size in rows:
        old_count, old_size = before.pop(name, (0, 0))
        if count != old_count or size != old_size:
            changes.append((name, count - old_count, size - old_size, count, size))
    for name, (old_count, old_size) in before.items():
        changes.append((name, -old_count, -old_size, 0, 0))

    def shape(c: tuple[str, int, int, int, int]) -> dict[str, Any]:
        return {"type": c[0], "count_delta": c[1], "size_delta": c[2], "count": c[3], "size": c[4]}

    grew = sorted((c for c in changes if c[2] > 0 or c[1] > 0), key=lambda c: (-c[2], -c[1]))
    shrank = sorted((c for c in changes if c[2] < 0 or c[1] < 0), key=lambda c: (c[2], c[1]))
    return {
        "grew": [shape(c) for c in grew[:top]],
        "shrank": [shape(c) for c in shrank[:top]],
    }


def _suspects(
    previous: list[list[list[Any]]], rows: list[list[Any]], k: int, top: int
) -> list[dict[str, Any]] | None:
    """Types whose count grew in each of the last ``k`` censuses; ``None`` before
    ``k + 1`` censuses exist. Largest growth first."""
    if k < 1 or len(previous) < k:
        return None
    series = [{r[0]: r[1] for r in frame} for frame in previous[-k:]]
    series.append({r[0]: r[1] for r in rows})
    found = []
    for name, count in series[-1].items():
        counts = [s.get(name, 0) for s in series]
        if all(b > a for a, b in itertools.pairwise(counts)):
            found.append(
                {"type": name, "count": count, "growth": count - counts[0], "counts": counts}
            )
    found.sort(key=lambda r: (-r["growth"], r["type"]))
    return found[:top]


def _compute(
    previous: tuple[bytes, ...], top: int, trace_top: int, suspect_k: int, *, child: bool
) -> bytes:
    """The census proper, in the child (or a worker thread); returns one frame."""
    started = time.perf_counter()
    sites = None
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        if child:
            tracemalloc.stop()  # the child's own allocations need no tracing
        sites = [
            {
                "site": f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}",
                "size": stat.size,
                "count": stat.count,
            }
            for stat in snap.statistics("lineno")[:trace_top]
        ]
        del snap
    if child:
        # gc.get_objects() skips the permanent generation; a server that gc.freeze()s
        # its startup objects would hide them. Unfreezing here touches only the child.
        gc.unfreeze()
    # Imported here, not at module level: pympler pulls in numpy (about 14 MiB of RSS),
    # which a server that never runs a census should not carry. In the forked child the
    # import is paid by the child alone.
    from pympler import muppy, summary  # noqa: PLC0415

    objects = muppy.get_objects()
    rows: list[list[Any]] = summary.summarize(objects)  # type: ignore[no-untyped-call]
    del objects
    result: dict[str, Any] = {
        "objects": sum(r[1] for r in rows),
        "size": sum(r[2] for r in rows),
        "types": len(rows),
        "top_by_size": _rows_by(rows, 2, top),
        "top_by_count": _rows_by(rows, 1, top),
        "diff": None,
        "suspects": None,
        "suspect_censuses": suspect_k,
        "tracemalloc": sites,
        "walk_seconds": time.perf_counter() - started,
    }
    if previous:
        frames = [orjson.loads(frame) for frame in previous]
        result["diff"] = _diff(frames[-1], rows, top)
        result["suspects"] = _suspects(frames, rows, suspect_k, top)
    head = orjson.dumps(result)
    return len(head).to_bytes(_HEADER, "big") + head + orjson.dumps(rows)


def _child(wfd: int, previous: tuple[bytes, ...], top: int, trace_top: int, suspect_k: int) -> None:
    """Runs in the forked child; never returns."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        # Drop our copies of the parent's sockets and files (and the pipe's read end):
        # while the child holds them a connection the parent closes would not send
        # its FIN.
        os.closerange(3, wfd)
        os.closerange(wfd + 1, _max_fd())
        # The walk is CPU-bound for seconds; on a busy machine the server comes first.
        with contextlib.suppress(OSError):
            os.nice(10)
        frame = _compute(previous, top, trace_top, suspect_k, child=True)
        view = memoryview(frame)
        while view:
            view = view[os.write(wfd, view) :]
        status = 0
    except BaseException as exc:  # the child must reach os._exit whatever happens
        with contextlib.suppress(BaseException):
            os.write(wfd, b"\xff" * _HEADER + repr(exc).encode()[:4000])
    finally:
        os._exit(status)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):  # pragma: no cover - every Linux answers
        return 65536


class _ReapLater:
    """Reap a child from loop callbacks (``waitpid(WNOHANG)``), never blocking the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, tries: int) -> None:
        self.loop = loop
        self.pid = pid
        self.tries = tries
        self.done: asyncio.Future[int] = loop.create_future()
        self.poll()

    def poll(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # someone else (a SIGCHLD-based watcher) reaped it
            pid, status = self.pid, 0
        if pid == self.pid:
            if not self.done.done():
                self.done.set_result(status)
            return
        self.tries -= 1
        if self.tries == 0:  # the child ignores even SIGKILL (stuck in D state)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.tries = -1  # keep polling, now slowly, until the kernel lets it go
        self.loop.call_later(_REAP_POLL if self.tries > 0 else 1.0, self.poll)


class Census:
    """Run heap censuses, at most one per ``min_interval`` seconds and one at a time.

    Each result is a dict: ``mode`` ("fork" or "thread"), ``objects``, ``size``,
    ``types``, ``top_by_size`` and ``top_by_count`` (lists of ``{type, count, size}``),
    ``diff`` (``None`` the first time, then ``{grew, shrank}`` lists of
    ``{type, count_delta, size_delta, count, size}`` against the previous census),
    ``suspects`` (``None`` until ``suspect_censuses + 1`` censuses ran, then a list of
    ``{type, count, growth, counts}`` for the types whose count grew in each of the last
    ``suspect_censuses`` censuses),
    ``tracemalloc`` (top allocation sites when tracing is on, else ``None``),
    ``seconds`` (wall time) and ``time``.
    """

    def __init__(
        self,
        *,
        min_interval: float = 30.0,
        top: int = 25,
        trace_top: int = 15,
        timeout: float = 120.0,
        use_fork: bool | None = None,
        suspect_censuses: int = 3,
    ) -> None:
        self.min_interval = min_interval
        self.top = top
        self.trace_top = trace_top
        self.timeout = timeout
        self.use_fork = hasattr(os, "fork") if use_fork is None else use_fork
        if self.use_fork and not hasattr(os, "fork"):
            msg = "use_fork=True but this platform has no os.fork(); pass use_fork=None"
            raise ValueError(msg)
        self.last: dict[str, Any] | None = None
        self.suspect_censuses = suspect_censuses
        self._previous: collections.deque[bytes] = collections.deque(
            maxlen=max(1, suspect_censuses)
        )
        self._started = float("-inf")
        self._running = False

    @property
    def running(self) -> bool:
        """True while a census is in progress."""
        return self._running

    async def run(self) -> dict[str, Any]:
        """Take a census now. Raises :class:`CensusRateLimited` or :class:`CensusFailed`."""
        now = time.monotonic()
        if self._running:
            msg = "a census is already running; retry in a few seconds"
            raise CensusRateLimited(msg, retry_after=max(1.0, self.min_interval))
        wait = self._started + self.min_interval - now
        if wait > 0:
            msg = f"census rate limited: one per {self.min_interval:g} s, retry in {wait:.1f} s"
            raise CensusRateLimited(msg, retry_after=wait)
        self._running = True
        self._started = now
        wall = time.perf_counter()
        try:
            if self.use_fork:
                frame = await self._run_forked()
            else:
                loop = asyncio.get_running_loop()
                work = functools.partial(
                    _compute,
                    tuple(self._previous),
                    self.top,
                    self.trace_top,
                    self.suspect_censuses,
                    child=False,
                )
                frame = await loop.run_in_executor(None, work)
        finally:
            self._running = False
        result, rows = _split(frame)
        self._previous.append(rows)
        result["mode"] = "fork" if self.use_fork else "thread"
        result["seconds"] = time.perf_counter() - wall
        result["time"] = time.time()
        self.last = result
        return result

    async def _run_forked(self) -> bytes:
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns that fork() in a threaded process may deadlock the
                # child. Ours touches no lock another thread could hold (pympler, orjson
                # and os.write only), and a stuck child is killed after `timeout`.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                pid = os.fork()
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # pragma: no cover - the child; coverage cannot follow os._exit
            _child(wfd, tuple(self._previous), self.top, self.trace_top, self.suspect_censuses)
        os.close(wfd)
        reader = asyncio.StreamReader()
        finished = False
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", buffering=0)
            )
            try:
                frame = await asyncio.wait_for(reader.read(), self.timeout)
            finally:
                transport.close()
            finished = True
        except asyncio.TimeoutError:
            msg = f"census child overran its {self.timeout:g} s timeout and was killed"
            raise CensusFailed(msg) from None
        finally:
            if not finished:  # timeout, cancellation, or a failure to read
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            reaper = _ReapLater(loop, pid, tries=int(5.0 / _REAP_POLL))
        status = await asyncio.shield(reaper.done)
        if len(frame) < _HEADER or frame[:_HEADER] == b"\xff" * _HEADER:
            detail = frame[_HEADER:].decode(errors="replace") or f"wait status {status}"
            msg = f"census child failed: {detail}"
            raise CensusFailed(msg)
        return frame


def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(frame[:_HEADER], "big")
    if len(frame) < _HEADER + size:
        msg = f"census frame truncated: {len(frame)} bytes, header says {size}"
        raise CensusFailed(msg)
    result: dict[str, Any] = orjson.loads(frame[_HEADER : _HEADER + size])
    return result, frame[_HEADER + size :]


_default: list[Census] = []


async def census(*, top: int = 25, timeout: float = 120.0) -> dict[str, Any]:
    """Take a census with the process-wide :class:`Census` (at most one per 10 s)."""
    if not _default:
        _default.append(Census(min_interval=10.0))
    runner = _default[0]
    runner.top = top
    runner.timeout = timeout
    return await runner.run()
