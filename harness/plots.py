"""Plots of the runs (matplotlib, optional): RSS over time and the matrix's summary bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import MiB

if TYPE_CHECKING:
    from .bench import CaseResult
    from .demo import DemoResult
    from .soak import SoakRun

__all__ = ["plot_demo", "plot_matrix", "plot_soak"]


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


def plot_soak(soak: SoakRun, path: Path) -> Path:
    """Every mode's RSS over the soak, with its fitted drift line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for result in soak.results:
        (line,) = ax.plot(
            [t / 60.0 for t, _ in result.samples],
            [rss / MiB for _, rss in result.samples],
            label=f"{result.mode} RSS",
            linewidth=1.2,
        )
        if result.slope_mib_per_min is not None and result.intercept is not None:
            a = (result.load_window[0] + result.warmup_s) / 60.0
            b = result.load_window[1] / 60.0
            ax.plot(
                [a, b],
                [result.intercept + result.slope_mib_per_min * x for x in (a, b)],
                linestyle="--",
                color=line.get_color(),
                label=f"{result.mode} drift {result.slope_mib_per_min:+.2f} MiB/min",
            )
    if soak.results:
        first = soak.results[0]
        ax.axvspan(
            0, (first.load_window[0] + first.warmup_s) / 60.0, color="grey", alpha=0.1,
            label="warm-up",
        )  # fmt: skip
    ax.set(title=f"Soak: {', '.join(soak.modes)}", xlabel="minutes", ylabel="RSS (MiB)")
    return _save_rss_plot(plt, fig, ax, path)
