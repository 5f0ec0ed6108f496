"""Driving a server with Debian's ``wrk`` (a C client) instead of the Python client.

Theory of operation
-------------------
On 2 cores a Python client shares the CPU with the server it measures and caps its
throughput; ``wrk`` is a C client that spends far less per request. :func:`run_wrk`
writes a workload's deck of bodies to files, runs ``wrk`` with :data:`LUA` (which reads
them once per thread, formats one POST per body up front and sends them in a seeded
random order, so the sizes follow the workload's distribution) for a bounded duration
with ``connections`` keep-alive connections, and parses the one JSON line the script's
``done`` prints: requests, non-2xx answers, socket errors, latency percentiles.

wrk does not check answers; callers check a server's answers with the Python client
(every body of the deck once) before they measure with wrk. Every wrk run is bounded:
``-d`` seconds, ``--timeout`` per request, and a hard kill ``timeout + 30`` seconds
after the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cpus import spawn_on
from .http import HOST
from .loadgen import LoadResult
from .workload import Body

__all__ = ["LUA", "WrkResult", "deck_files", "need_wrk", "run_wrk", "wrk_path"]

#: The wrk script: POST bodies read from the files named after ``--``, in random order.
LUA = r"""
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  requests = {}
  local headers = {["Content-Type"] = "application/json"}
  for i, path in ipairs(args) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    requests[i] = wrk.format("POST", "/ingest", headers, body)
  end
  count = #requests
  math.randomseed(1000 + (tonumber(tid) or 0))
end

function request()
  return requests[math.random(count)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'ARENAPOOL-WRK {"requests":%d,"duration_us":%d,"bytes":%d,"status_errors":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

_MARK = "ARENAPOOL-WRK "


def wrk_path() -> str | None:
    return shutil.which("wrk")


def need_wrk() -> str:
    """The path of ``wrk``, or a RuntimeError that says how to install it."""
    path = wrk_path()
    if path is None:
        msg = "wrk not found (Debian/Ubuntu: apt-get install wrk; scripts/bootstrap installs it)"
        raise RuntimeError(msg)
    return path


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests: int = 0
    duration_s: float = 0.0
    bytes_read: int = 0
    status_errors: int = 0  # non-2xx/3xx answers
    socket_errors: int = 0  # connect, read, write errors and timeouts
    percentiles_ms: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return max(0, self.requests - self.status_errors)

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def into(self, result: LoadResult) -> LoadResult:
        """Add these counts to a :class:`~harness.loadgen.LoadResult` (the bench's record)."""
        result.started += self.requests
        result.ok += self.ok
        result.errors += self.status_errors + self.socket_errors
        result.elapsed += self.duration_s
        result.fixed_percentiles_ms = dict(self.percentiles_ms)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "status_errors": self.status_errors,
            "socket_errors": self.socket_errors,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": self.percentiles_ms.get(50),
            "p99_ms": self.percentiles_ms.get(99),
        }


def parse_wrk_output(text: str) -> WrkResult:
    """The :class:`WrkResult` in wrk's output (the line :data:`LUA`'s ``done`` prints)."""
    for line in text.splitlines():
        if line.startswith(_MARK):
            doc = json.loads(line[len(_MARK) :])
            return WrkResult(
                requests=int(doc["requests"]),
                duration_s=doc["duration_us"] / 1e6,
                bytes_read=int(doc["bytes"]),
                status_errors=int(doc["status_errors"]),
                socket_errors=sum(int(doc[k]) for k in ("connect", "read", "write", "timeout")),
                percentiles_ms={
                    50: doc["p50_us"] / 1000,
                    90: doc["p90_us"] / 1000,
                    99: doc["p99_us"] / 1000,
                    100: doc["max_us"] / 1000,
                },
            )
    msg = f"wrk printed no result line:\n{text[-2000:]}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def deck_files(deck: Sequence[Body]) -> Iterator[tuple[Path, list[Path]]]:
    """The Lua script and one file per body, in a temporary directory while inside."""
    with tempfile.TemporaryDirectory(prefix="arenapool-wrk-") as tmp:
        root = Path(tmp)
        script = root / "post.lua"
        script.write_text(LUA)
        paths = []
        for i, body in enumerate(deck):
            path = root / f"body-{i:03d}.json"
            path.write_bytes(body.data)
            paths.append(path)
        yield script, paths


async def run_wrk(
    port: int,
    script: Path,
    bodies: Sequence[Path],
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    timeout: float = 30.0,
    host: str = HOST,
    cpus: Collection[int] | None = None,
) -> WrkResult:
    """Run wrk against ``http://host:port/ingest`` for ``duration`` seconds; its result.

    ``threads`` wrk threads share ``connections`` keep-alive connections (one thread
    by default: on 2 cores the server under test should have the other); ``cpus``, if
    given, are the CPUs wrk runs on (:func:`harness.cpus.split`).
    """
    wrk = need_wrk()
    seconds = max(1, round(duration))
    with spawn_on(cpus):  # asyncio forks wrk in this thread, inside the call
        proc = await asyncio.create_subprocess_exec(
            wrk,
            f"-t{max(1, min(threads, connections))}",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={max(1, round(timeout))}s",
            "-s",
            str(script),
            f"http://{host}:{port}/ingest",
            "--",
            *(str(p) for p in bodies),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + timeout + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return parse_wrk_output(out.decode(errors="replace"))
