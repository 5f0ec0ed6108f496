"""Progress on the terminal: a live rich bar, plain lines for logs and pipes, or nothing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from .loadgen import LoadResult
from .run import Progress

__all__ = ["LineProgress", "Reporter", "RichProgress"]


class LineProgress(Progress):
    """Progress as plain lines, for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, text: str) -> None:
        self.console.print(f"note: {text}")

    def phase(self, label: str, total: float) -> None:
        when = f" ({total:.0f} s)" if total >= 1 else ""
        self.console.print(f"- {label}{when}")


class RichProgress(Progress):
    """A rich progress bar for the current phase, with live request counts."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Bar(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}")

    def phase(self, label: str, total: float) -> None:
        if self.task is not None:
            task = self.bar.tasks[-1]
            self.bar.update(self.task, completed=task.total)
        self.task = self.bar.add_task(label, total=max(total, 0.001), stats="")

    def tick(self, label: str, elapsed: float, result: LoadResult | None) -> None:
        if self.task is None:
            return
        stats = ""
        if result is not None:
            bad = result.errors + result.corrupt
            stats = f"{result.ok} ok  {bad} err  {result.shed} shed"
        self.bar.update(self.task, completed=elapsed, stats=stats)


class Reporter:
    """Picks the progress display: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.rich: RichProgress | None = None

    def __enter__(self) -> Progress:
        if self.quiet:
            return Progress()
        if self.console.is_terminal:
            self.rich = RichProgress(self.console).__enter__()
            return self.rich
        return LineProgress(self.console)

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.__exit__(*exc)
