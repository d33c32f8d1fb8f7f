"""Rich consoles and training progress: a bar on a terminal or in Jupyter, plain lines elsewhere.
Neither console reads rich markup: what pbgan prints holds paths, task names and messages given by
users, whose `[...]` must print as typed (style with `style=` or rich.text.Text instead)."""
from __future__ import annotations

import datetime
import time
from typing import Callable, Mapping

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from .events import End, ProgressCallback, Start, Step

console = Console(markup=False)
errors = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

PLAIN_SECONDS = 30  # without a terminal: a line at least this often, and every tenth of the run


def losses_text(losses: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in losses.items())


def fit_losses(losses: Mapping[str, float], width: int) -> str:
    """As many losses as fit in `width` columns, in order; "…" where some were left out."""
    shown = ""
    for name, value in losses.items():
        longer = f"{shown} {name} {value:.3f}".strip()
        if len(longer) > width:
            return shown + " …" if shown and len(shown) + 2 <= width else shown
        shown = longer
    return shown


class FittedLosses:
    """The losses, cut to the width the bar leaves them (they give way first)."""

    def __init__(self, losses: Mapping[str, float]):
        self.losses = losses

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(0, len(losses_text(self.losses)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(fit_losses(self.losses, options.max_width), no_wrap=True, overflow="crop")


class LossesColumn(ProgressColumn):
    def __init__(self):
        super().__init__(table_column=Column(min_width=0))  # the only column that can shrink

    def render(self, task) -> FittedLosses:
        return FittedLosses(task.fields.get("losses", {}))


def progress_bar(target: Console, remaining_label: str = "eta") -> Progress:
    """Description, bar, step count, elapsed and remaining time, then the losses in what is left:
    at 80 columns the bar, the count and the time left stay readable."""
    fixed = lambda: Column(no_wrap=True)  # noqa: E731
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False, table_column=Column(no_wrap=True, overflow="ellipsis", max_width=30)),
        BarColumn(bar_width=max(10, min(40, target.width // 2 - 30)), table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()), TimeElapsedColumn(table_column=fixed()),
        TextColumn(remaining_label, table_column=fixed()), TimeRemainingColumn(table_column=fixed()),
        LossesColumn(), console=target, transient=False)


def is_live(target: Console) -> bool:
    """Whether a bar can redraw itself: a terminal or a notebook, not a pipe or a log file."""
    return target.is_terminal or target.is_jupyter


class PlainProgress:
    """Progress as plain lines (nohup, SLURM, a pipe): step, losses, rate and time left."""

    def __init__(self, description: str, target: Console, seconds: float = PLAIN_SECONDS):
        self.description, self.target, self.seconds = description, target, seconds

    def on_start(self, event: Start) -> None:
        self.first, self.started = event.start, time.monotonic()
        self.last = self.started

    def on_step(self, event: Step) -> None:
        now = time.monotonic()
        tenth = max(1, event.total // 10)
        if event.step != event.total and event.step % tenth and now - self.last < self.seconds:
            return
        self.last = now
        rate = (event.step - self.first) / max(now - self.started, 1e-9)
        left = datetime.timedelta(seconds=round((event.total - event.step) / max(rate, 1e-9)))
        self.target.print(f"{self.description} step {event.step}/{event.total} {losses_text(event.losses)} "
                          f"{rate:.2f} steps/s eta {left}", markup=False, highlight=False, soft_wrap=True)


class BarProgress:
    """A rich progress bar driven by a run's events."""

    def __init__(self, description: str, target: Console):
        self.description, self.bar = description, progress_bar(target)

    def on_start(self, event: Start) -> None:
        self.task_id = self.bar.add_task(self.description, total=event.total, completed=event.start, losses={})
        self.bar.start()

    def on_step(self, event: Step) -> None:
        self.bar.update(self.task_id, completed=event.step, losses=event.losses)

    def on_end(self, event: End) -> None:
        self.bar.stop()


def training_progress(description: str, target: Console | None = None) -> BarProgress | PlainProgress:
    """The listener that shows a training run: a bar where it can redraw, plain lines elsewhere."""
    target = target or console
    return BarProgress(description, target) if is_live(target) else PlainProgress(description, target)


def sequence_progress(names: list[str], steps: int, target: Console | None = None) -> tuple[Progress, Callable]:
    """One bar over a sequence of tasks ("task i of n", time left for all of them) and a
    function `start(name)` that returns the progress listener of the next task. Without a
    terminal, each task prints plain lines instead."""
    target = target or console
    progress = progress_bar(target, "left")
    progress.disable = not is_live(target)
    overall = progress.add_task("", total=len(names) * steps, losses={})

    def start(name: str) -> ProgressCallback | PlainProgress:
        index = names.index(name)
        description = f"task {index + 1} of {len(names)}: {name}"
        if progress.disable:
            return PlainProgress(description, target)
        done = index * steps
        progress.update(overall, description=description, completed=done)

        def update(step: int, total: int, losses: Mapping[str, float]) -> None:
            progress.update(overall, completed=done + step * steps // total, losses=losses)

        return ProgressCallback(update)

    return progress, start


def keep_numbers_whole(table: Table) -> Table:
    """Columns marked `no_wrap` (those holding numbers) keep the width of their longest line, and
    the others fold, so a narrow console never cuts a number."""
    for column in table.columns:
        if column.no_wrap:
            column.min_width = max((len(line) for cell in column.cells for line in str(cell).splitlines()), default=0)
        else:
            column.overflow = "fold"
    return table
