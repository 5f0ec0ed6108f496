"""The dashboard: self-contained HTML that headless Chromium renders with live charts.

The browser test drives Chromium through the DevTools protocol over a WebSocket on
127.0.0.1 (aiohttp's own client; no Playwright or Selenium). It fails, not skips, when
Chromium is missing: CI installs it (``apt-get install -y chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _memhelpers import poll_until
from aiohttp import web
from aiohttp.test_utils import TestServer

from arenapool import SlabPool
from arenapool._governor import Governor, GovernorConfig
from arenapool.aiohttp import AdminConfig, add_admin_routes, governor_middleware, read_body, setup

ServerFactory = Callable[..., Awaitable[TestServer]]
TOKEN = "dash-token"
CHARTS = ("rss", "breakdown", "slabs", "inflight", "governor")
#: Where the last screenshot is kept for a human to look at.
SCREENSHOT = Path(tempfile.gettempdir()) / "arenapool-dashboard.png"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1600",
)


def dashboard_html() -> str:
    return (resources.files("arenapool.aiohttp") / "static" / "dashboard.html").read_text()


def test_dashboard_is_self_contained() -> None:
    """The page loads nothing from elsewhere: no script/link/img sources, no remote URLs."""
    html = dashboard_html()
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", html)
    urls = set(re.findall(r"https?://[^\s\"'`)]+", html))
    assert {"http://www.w3.org/2000/svg"} == urls, "only the SVG namespace name may appear"
    assert "@import" not in html
    assert "url(" not in html


async def test_dashboard_served_with_strict_csp(aiohttp_server: ServerFactory) -> None:
    """The page is served with a CSP that allows only its own inline code and same-origin API."""
    app = web.Application()
    add_admin_routes(app, AdminConfig(token=TOKEN))
    server = await aiohttp_server(app)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/_arenapool/?token={TOKEN}") as resp,
    ):
        assert 200 == resp.status
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        assert "no-referrer" == resp.headers["Referrer-Policy"]
    assert csp.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


class CDP:
    """A minimal Chrome DevTools Protocol client: one WebSocket, numbered calls."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        call_id = self.next_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        return await asyncio.wait_for(self._reply(method, call_id), timeout)

    async def _reply(self, method: str, call_id: int) -> dict[str, Any]:
        while True:  # bounded by call()'s timeout
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools socket closed during {method}: {msg!r}")
            data = json.loads(msg.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise AssertionError(f"{method} failed: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result
            self.events.append(data)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[CDP]:
    """Headless Chromium showing ``url``, driven over DevTools; cleaned up on exit."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(
            "the dashboard test needs Chromium and none is on PATH: "
            "apt-get install -y chromium (the CI script does this)"
        )
    profile = tempfile.mkdtemp(prefix="arenapool-chromium-")
    proc = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its helper processes go with it at cleanup
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"

        async def devtools_port() -> int | None:
            if proc.returncode is not None:
                raise AssertionError(f"chromium exited with {proc.returncode} at startup")
            text = port_file.read_text() if port_file.exists() else ""
            return int(text.split()[0]) if text.strip() else None

        port, _ = await poll_until(devtools_port, timeout=30, what="Chromium's DevTools port")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.call("Network.enable")
                await cdp.call("Page.enable")
                await cdp.call("Page.navigate", url=url)
                yield cdp
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        shutil.rmtree(profile, ignore_errors=True)


class ChartReader(HTMLParser):
    """Reads every chart's data-points and its polylines' point counts from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, int] = {}
        self.lines: dict[str, list[int]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and (a.get("id") or "").startswith("chart-"):
            self._current = (a["id"] or "")[len("chart-") :]
            self.charts[self._current] = int(a.get("data-points") or 0)
            self.lines[self._current] = []
        elif tag == "polyline" and self._current is not None:
            self.lines[self._current].append(len((a.get("points") or "").split()))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


@pytest.mark.slow
async def test_dashboard_renders_live_charts_in_chromium(aiohttp_server: ServerFactory) -> None:
    """Chromium shows the dashboard: every chart gains >= 2 points; census and trim work."""
    pool = SlabPool(budget="16MiB", name="dashboard", decay=None)
    governor = Governor(GovernorConfig(interval=0.2, use_cgroup=False))

    async def work(request: web.Request) -> web.Response:
        with pool.arena() as arena:
            arena.alloc(256 * 1024)
            return web.json_response({"ok": True})

    app = web.Application(middlewares=[governor_middleware(governor)])
    app.router.add_get("/work", work)
    add_admin_routes(
        app, AdminConfig(token=TOKEN, census_min_interval=0), pools=[pool], governor=governor
    )
    server = await aiohttp_server(app)
    origin = f"http://127.0.0.1:{server.port}"
    try:
        async with governor, aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(origin + "/work") as resp:
                    assert 200 == resp.status
            async with chromium(f"{origin}/_arenapool/?token={TOKEN}") as cdp:

                async def charted() -> dict[str, int] | None:
                    points = await cdp.evaluate(
                        "Object.fromEntries([...document.querySelectorAll('svg.chart')]"
                        ".map(s => [s.id, +s.dataset.points]))"
                    )
                    done = points and len(points) == len(CHARTS) and min(points.values()) >= 3
                    return points if done else None

                await poll_until(charted, timeout=30, interval=0.2, what="charts with data")
                await cdp.evaluate("document.getElementById('run-census').click()")

                async def census_shown() -> bool:
                    rows = await cdp.evaluate(
                        "document.querySelectorAll('#census-top tbody tr').length"
                    )
                    return bool(rows)

                await poll_until(census_shown, timeout=30, interval=0.2, what="census table")
                await cdp.evaluate("document.getElementById('run-trim').click()")

                async def trim_listed() -> bool:
                    return bool(
                        await cdp.evaluate("document.querySelectorAll('#actions li').length")
                    )

                await poll_until(trim_listed, timeout=30, interval=0.2, what="a governor action")
                shot = await cdp.call("Page.captureScreenshot", format="png")
                dom = await cdp.evaluate("document.documentElement.outerHTML")
                address = await cdp.evaluate("location.href")
    finally:
        pool.close()

    png = base64.b64decode(shot["data"])
    SCREENSHOT.write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000, "a rendered dashboard is more than a blank page"
    reader = ChartReader()
    reader.feed(dom)
    assert set(CHARTS) == set(reader.charts)
    for chart, count in reader.charts.items():
        assert count >= 2, f"chart {chart} has {count} data points"
        assert reader.lines[chart], f"chart {chart} drew no line"
        assert max(reader.lines[chart]) >= 2, f"chart {chart}: {reader.lines[chart]}"
    assert "token=" not in address, "the token is taken out of the address bar"
    requested = {
        e["params"]["request"]["url"]
        for e in cdp.events
        if e.get("method") == "Network.requestWillBeSent"
    }
    assert requested
    assert all(u.startswith(origin + "/_arenapool/") for u in requested), requested


@pytest.mark.slow
async def test_dashboard_opens_on_the_servers_history(aiohttp_server: ServerFactory) -> None:
    """Opened after the server has run 20 s, the page draws at least 15 history points
    with its first poll (the points come from the server, not from the page's own
    polling), and the route table lists the test's routes, by memory."""

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"n": len(await read_body(request))})

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    app = web.Application()
    app.router.add_post("/upload", upload)
    app.router.add_get("/hello", hello)
    pool = SlabPool(budget="16MiB", name="history", decay=None)
    setup(app, pool=pool, admin=AdminConfig(token=TOKEN, history_interval=1.0))
    server = await aiohttp_server(app)
    origin = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(origin + "/upload", data=b"x" * 300_000) as resp:
                    assert 200 == resp.status
                async with session.get(origin + "/hello") as resp:
                    assert 200 == resp.status

            async def twenty_seconds() -> bool:
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with session.get(origin + "/_arenapool/history", headers=headers) as resp:
                    doc = await resp.json()
                return bool(doc["time"]) and doc["time"][-1] - doc["time"][0] >= 20

            await poll_until(twenty_seconds, timeout=60, interval=0.5, what="20 s of history")
        async with chromium(f"{origin}/_arenapool/?token={TOKEN}") as cdp:

            async def drawn() -> dict[str, Any] | None:
                state = await cdp.evaluate(
                    "(() => { const b = document.getElementById('chart-breakdown');"
                    " if (!b) return null;"  # the page is still loading
                    " return {history: +b.dataset.points,"
                    " rss: +document.getElementById('chart-rss').dataset.points,"
                    " polls: +(document.body.dataset.polls || 0),"
                    " routes: [...document.querySelectorAll('#routes tbody tr')]"
                    ".map(tr => tr.cells[0].textContent)}; })()"
                )
                return state if state and state["history"] > 0 else None

            state, _ = await poll_until(drawn, timeout=30, interval=0.1, what="history drawn")
    finally:
        pool.close()
    assert state["history"] >= 15, state
    assert state["rss"] >= 15, state
    assert state["polls"] < 15, "the points must come from the server's history"
    assert ["POST /upload", "GET /hello"] == state["routes"]
