"""``soak``: one mode under load for a long time; RSS drift is the slope of its readings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .loadgen import LoadResult
from .modes import resolve_modes
from .report import MiB, machine_info
from .rss import RssSampler, least_squares, rss_under_load
from .run import SOAK_SETTINGS, Progress, RunSettings, drive, idle_for
from .workload import Plan, Workload, get_workload

__all__ = ["SoakResult", "run_soak"]


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
            load = await drive(server, plan, workload, settings, progress=progress, label=label)
            window = (start, sampler.now())
            sampler.sample()
            if idle > 0:
                await idle_for(idle, progress, f"idle {idle:g} s")
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
