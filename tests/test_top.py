"""``arenapool top``: a live screen in a real terminal (tmux), redrawn in place, sorted by key."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from _memhelpers import poll_until
from aiohttp import web
from aiohttp.test_utils import TestServer

from arenapool import SlabPool
from arenapool._top import breakdown_bar, render
from arenapool.aiohttp import AdminConfig, read_body, setup

ServerFactory = Callable[..., Awaitable[TestServer]]
ROOT = Path(__file__).resolve().parent.parent


async def _server(aiohttp_server: ServerFactory) -> AsyncIterator[str]:
    async def small(request: web.Request) -> web.Response:
        return web.json_response({"n": len(await read_body(request))})

    async def large(request: web.Request) -> web.Response:
        return web.json_response({"n": len(await read_body(request))})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/small", small)
    app.router.add_post("/large", large)
    pool = SlabPool("32MiB", decay=None, name="top-test")
    setup(app, pool=pool, admin=AdminConfig(token=None))
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        for path, size in (("/small", 100), ("/large", 2_000_000), ("/small", 200)):
            async with session.post(url + path, data=b"x" * size) as resp:
                assert 200 == resp.status
    try:
        yield url
    finally:
        pool.close()


@pytest.fixture
async def served(aiohttp_server: ServerFactory) -> AsyncIterator[str]:
    async for url in _server(aiohttp_server):
        yield url


def test_the_bar_is_proportional() -> None:
    """Each part gets cells in proportion to its bytes, and the bar is exactly full."""
    bar = breakdown_bar({"a": 30, "b": 10, "c": 0}, width=40)
    assert 40 == len(bar.plain)
    assert "█" * 40 == bar.plain
    assert [30, 10] == [span.end - span.start for span in bar.spans]


async def test_top_json_lines(served: str) -> None:
    """--json prints one machine-readable stats document per poll."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "arenapool",
        "top",
        served,
        "--json",
        "--count",
        "2",
        "--interval",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert 0 == proc.returncode
    docs = [json.loads(line) for line in out.decode().splitlines()]
    assert 2 == len(docs)
    assert docs[0]["rss"] == sum(docs[0]["breakdown"].values())


def test_render_shows_every_part_and_the_verdict() -> None:
    """The screen names each part with its size, the verdict and its action."""
    from rich.console import Console

    doc = {
        "rss": 3 * 1024 * 1024,
        "breakdown": {"code_and_libs": 2 * 1024 * 1024, "unexplained": 1024 * 1024},
        "monitor": {"verdict": {"kind": "retention", "summary": "held", "action": "trim it"}},
        "routes": {"GET /a": {"requests": 1, "arena_high_water": 5}},
    }
    console = Console(width=120, record=True, color_system=None)
    console.print(render(doc))
    text = console.export_text()
    needles = ("code_and_libs 2.0 MiB", "unexplained 1.0 MiB", "retention", "trim it", "GET /a")
    for needle in needles:
        assert needle in text


class Tmux:
    """A private tmux server (its own socket) running one command in a 160x50 pane."""

    def __init__(self, command: str) -> None:
        binary = shutil.which("tmux")
        if binary is None:
            pytest.fail("the top test needs tmux: apt-get install -y tmux")
        self.base = [binary, "-L", f"arenapool-top-{os.getpid()}"]
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", "160", "-y", "50", "-s", "top", command],
            check=True,
            env={**os.environ, "TERM": "xterm-256color"},
        )

    def screen(self) -> str:
        done = subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "top"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "top", *keys], check=True)

    def alive(self) -> bool:
        done = subprocess.run(
            [*self.base, "has-session", "-t", "top"], capture_output=True, check=False
        )
        return done.returncode == 0

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False)


@pytest.mark.slow
async def test_top_is_a_live_screen_that_sorts_by_key(served: str) -> None:
    """In a terminal, top shows the breakdown's parts, the verdict, the routes by
    memory (the large-body route first) and the pool's classes; 'n' sorts by name,
    'q' quits."""
    command = " ".join(
        shlex.quote(a)
        for a in (sys.executable, "-m", "arenapool", "top", served, "--interval", "0.5")
    )
    tmux = Tmux(f"cd {shlex.quote(str(ROOT))} && {command}")
    try:

        async def shows(*needles: str) -> str | None:
            screen = tmux.screen()
            return screen if all(n in screen for n in needles) else None

        screen, _ = await poll_until(
            lambda: shows("code_and_libs", "unexplained", "verdict", "routes, by memory"),
            timeout=60,
            interval=0.2,
            what="the top screen",
        )
        assert screen.index("POST /large") < screen.index("POST /small")
        assert "pool top-test" in screen
        tmux.keys("n")
        await poll_until(
            lambda: shows("routes, by name"), timeout=30, interval=0.1, what="sorted by name"
        )
        tmux.keys("q")

        async def gone() -> bool:
            return not tmux.alive()

        await poll_until(gone, timeout=30, interval=0.1, what="top to quit on q")
    finally:
        tmux.close()
