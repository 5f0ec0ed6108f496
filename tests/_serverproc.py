"""A test server in a subprocess: the side that serves and the side that starts it.

The server side (``serve_until_sigterm``) listens on 127.0.0.1 (port 0), prints one JSON
line ``{"port", "pid", ...}`` once listening and serves until SIGTERM. The test side
(``HelperServer``) starts such a script, reads that line and stops it again. Shared by
``_memhelpers.py`` and ``_contrived.py``; it imports nothing of arenapool.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from aiohttp import web

_S = TypeVar("_S", bound="HelperServer")


async def serve_until_sigterm(runner: web.AppRunner, **info: Any) -> None:
    """Serve ``runner`` on 127.0.0.1 until SIGTERM, after printing the JSON line."""
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port, "pid": os.getpid(), **info}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


class HelperServer:
    """A server script (``SCRIPT``) run in a subprocess; ``WHAT`` names it in failures."""

    SCRIPT: ClassVar[Path]
    WHAT: ClassVar[str] = "test server"

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.port: int = info["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    @classmethod
    async def start(cls: type[_S], *args: str, timeout: float = 30.0) -> _S:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(cls.SCRIPT),
            *args,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{cls.WHAT} did not start within {timeout} s") from None
        if not line:
            await proc.wait()
            raise AssertionError(f"{cls.WHAT} exited with {proc.returncode} before listening")
        return cls(proc, json.loads(line))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
