"""Rich consoles and the training progress bar. Neither console reads rich markup: what pbgan
prints holds paths, task names and messages given by users, whose `[...]` must print as typed
(style with `style=` or rich.text.Text instead)."""
from __future__ import annotations

from typing import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(markup=False)
errors = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def training_progress(description: str) -> tuple[Progress, callable]:
    """A progress bar with ETA and the latest losses, and the callback that drives it."""
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}", markup=False),
        console=console, transient=False,
    )
    task_id = progress.add_task(description, total=None, losses="")

    def update(step: int, total: int, losses: Mapping[str, float]) -> None:
        text = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        progress.update(task_id, completed=step, total=total, losses=text)

    return progress, update


def sequence_progress(names: list[str], steps: int) -> tuple[Progress, callable]:
    """One bar over a sequence of tasks ("task i of n", time left for all of them) and a
    function `start(name)` that returns the progress callback of the next task."""
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}", markup=False),
        console=console, transient=False,
    )
    overall = progress.add_task("", total=len(names) * steps, losses="")
    done = 0

    def start(name: str) -> callable:
        nonlocal done
        index = names.index(name)
        done = index * steps
        progress.update(overall, description=f"task {index + 1} of {len(names)}: {name}", completed=done)

        def update(step: int, total: int, losses: Mapping[str, float]) -> None:
            text = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            progress.update(overall, completed=done + step * steps // total, losses=text)

        return update

    return progress, start
