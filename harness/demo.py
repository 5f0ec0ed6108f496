"""``demo``: two modes of the example service side by side under the same traffic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .loadgen import LoadResult
from .modes import resolve_modes
from .report import machine_info
from .rss import RssSampler, rss_under_load
from .run import DEMO_SETTINGS, Progress, RunSettings, drive, idle_for
from .server import Server
from .workload import Body, Plan, Workload, get_workload

__all__ = ["DemoResult", "run_demo"]


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
    progress.phase("building request bodies", 0)
    deck = workload.deck(settings.seed)
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
            slices = _Slices(
                servers, sampler, deck=deck, workload=workload, settings=settings, progress=progress
            )
            await slices.run(slice_s)
            rss_idle = await slices.idle_readings()
        finally:
            sampler.stop()
    finally:
        for server in servers.values():
            server.stop()
    described = {
        "workload": workload.name,
        "workload_sizes": [workload.min_size, workload.max_size, workload.distribution],
        "concurrency": workload.concurrency,
        "duration_s": settings.duration,
        "slice_s": slice_s,
        "idle_s": settings.idle,
        "seed": settings.seed,
        "budget": settings.budget,
        "limit": settings.limit,
        "governor": settings.governor,
        "notes": notes,
    }
    names = list(servers)
    return DemoResult(
        names, slices.loads, sampler.samples, slices.windows, rss_idle, settings.idle, described
    )


class _Slices:
    """The demo's servers driven in turns, each with its own plan over the same deck."""

    def __init__(
        self,
        servers: dict[str, Server],
        sampler: RssSampler,
        *,
        deck: list[Body],
        workload: Workload,
        settings: RunSettings,
        progress: Progress,
    ) -> None:
        self.servers, self.sampler, self.workload = servers, sampler, workload
        self.settings, self.progress = settings, progress
        self.names = list(servers)
        self.plans = {n: Plan(deck, settings.seed) for n in self.names}
        self.loads = {n: LoadResult() for n in self.names}
        self.windows: dict[str, list[tuple[float, float]]] = {n: [] for n in self.names}

    async def run(self, slice_s: float) -> None:
        """Alternate the servers, ``slice_s`` seconds each, for the settings' duration."""
        names, sampler = self.names, self.sampler
        rounds = max(1, round(self.settings.duration / (slice_s * max(1, len(names)))))
        per_slice = self.settings.requests // rounds
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                label = f"{name}: slice {r + 1}/{rounds}"
                self.progress.phase(label, slice_s)
                start = sampler.now()
                await drive(
                    self.servers[name],
                    self.plans[name],
                    self.workload,
                    self.settings,
                    self.loads[name],
                    progress=self.progress,
                    label=label,
                    requests=per_slice,
                    duration=slice_s,
                )
                self.windows[name].append((start, sampler.now()))

    async def idle_readings(self) -> dict[str, int | None]:
        """Each server's RSS ``settings.idle`` seconds after its own last slice."""
        idle, windows = self.settings.idle, self.windows
        rss_idle: dict[str, int | None] = {}
        for name in sorted(self.names, key=lambda n: windows[n][-1][1]):
            wait = windows[name][-1][1] + idle - self.sampler.now()
            if wait > 0:
                await idle_for(wait, self.progress, f"idle: {name} after {idle:g} s")
            rss_idle[name] = self.sampler.sample().get(name)
        return rss_idle
