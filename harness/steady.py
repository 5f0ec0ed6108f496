"""A steady background load: keep-alive GETs at a fixed pace, counted as they answer.

For code that watches a server's event loop while it serves (``benchmarks/census_stall.py``
and the census test): a few hundred requests a second, not a flood that would leave the
loop no time of its own. Each client sends a GET, reads the answer, requires a 200, and
waits ``pace`` seconds before the next; :meth:`SteadyGets.stop` ends them all (bounded:
each finishes the request it is in).
"""

from __future__ import annotations

import asyncio

import aiohttp

__all__ = ["SteadyGets"]


class SteadyGets:
    """``clients`` keep-alive clients of ``session`` each GETting ``url`` every ``pace``
    seconds; ``answered`` counts the 200 answers so far."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, *, clients: int = 4, pace: float = 0.005
    ) -> None:
        self.session = session
        self.url = url
        self.clients = clients
        self.pace = pace
        self.answered = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the clients (in the running loop)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._client()) for _ in range(self.clients)]

    @property
    def failed(self) -> bool:
        """True once a client has ended on its own (an error: see :meth:`stop`)."""
        return any(task.done() for task in self._tasks)

    async def stop(self) -> None:
        """Stop the clients and wait for them; re-raises the first client's error."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self) -> None:
        while not self._stop.is_set():
            async with self.session.get(self.url) as resp:
                await resp.read()
                if resp.status != 200:
                    msg = f"{self.url} answered {resp.status}"
                    raise RuntimeError(msg)
            self.answered += 1
            await asyncio.sleep(self.pace)
