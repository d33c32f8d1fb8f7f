"""What a training run tells its listeners, and the dispatcher that tells them.

The training loop only emits events; progress bars, logs, samples and checkpoints are
listeners. A listener is any object with some of the methods `on_start`, `on_step`,
`on_samples`, `on_stored`, `on_eval` and `on_end`, each taking the event (as Lightning
callbacks and Avalanche loggers do); logger plugins build them (`register_loggers`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from .errors import PbganError


@dataclass(frozen=True)
class Start:
    """A task's training starts (or resumes after `start` steps)."""

    task: str
    model_dir: Path
    options: Mapping[str, Any]
    total: int
    start: int = 0
    name = "start"


@dataclass(frozen=True)
class Step:
    """Optimizer step `step` (1-based) of `total` is done; `lrs` are the rates it used, per optimizer."""

    task: str
    step: int
    total: int
    epoch: int  # 1-based
    lrs: Mapping[str, float]
    losses: Mapping[str, float]
    seconds: float  # training time so far, earlier runs of a resumed task included
    name = "step"

    @property
    def lr(self) -> float:
        """The first optimizer's rate (the generators')."""
        return next(iter(self.lrs.values()), 0.0)


@dataclass(frozen=True)
class Samples:
    """Condition, output and target of a fixed set of images per split ("train", "test"):
    (N, 3, H, W) tensors in [-1, 1]."""

    task: str
    step: int
    images: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    name = "samples"


@dataclass(frozen=True)
class Stored:
    """The task is part of the model: its manifest entry."""

    task: str
    entry: Mapping[str, Any]
    name = "stored"


@dataclass(frozen=True)
class Evaluated:
    """Metrics of every task so far, measured after training `task`."""

    task: str
    metrics: Mapping[str, Mapping[str, float]]
    name = "eval"


@dataclass(frozen=True)
class End:
    """The run ended: `error` says why it failed (None when the task was stored)."""

    task: str
    seconds: float  # wall time of this run
    error: str | None = None
    name = "end"


class Dispatcher:
    """Hands each event to every listener that takes it, in order. As a context manager it
    emits `End` when the run leaves it, with the error that ended it, once a `Start` was sent."""

    def __init__(self, listeners: Iterable[Any] = (), enabled: bool = True):
        self.listeners, self.enabled = list(listeners), enabled
        self.task: str | None = None
        self.started = time.perf_counter()

    def add(self, listener: Any) -> None:
        if self.enabled:
            self.listeners.append(listener)

    def wants(self, event: str) -> bool:
        """Whether a listener asks for `event`: one naming it in its `passive` only notes it when
        others ask (the run makes samples only for those who look at them)."""
        return any(hasattr(listener, f"on_{event}") and event not in getattr(listener, "passive", ())
                   for listener in self.listeners)

    def emit(self, event: Any) -> None:
        if isinstance(event, Start):
            self.task = event.task
        for listener in self.listeners:
            handler = getattr(listener, f"on_{event.name}", None)
            if handler is not None:
                handler(event)

    def __enter__(self) -> "Dispatcher":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.task is None:
            return
        error = None
        if kind is not None:
            error = str(exc) or ("interrupted" if issubclass(kind, KeyboardInterrupt) else kind.__name__)
        self.emit(End(self.task, time.perf_counter() - self.started, error))


@dataclass
class RunState:
    """Where a run stands: steps done, training time, latest losses. `advance` makes each Step."""

    task: str
    total: int
    steps_per_epoch: int
    step: int = 0
    earlier_seconds: float = 0.0  # of the runs a resumed task was trained in before
    losses: Mapping[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started

    def advance(self, losses: Mapping[str, float], lrs: Mapping[str, float]) -> Step:
        self.step += 1
        if not all(math.isfinite(v) for v in losses.values()):
            raise PbganError(f"training diverged at step {self.step} (losses {dict(losses)}); lower --lr")
        self.losses = losses
        return Step(self.task, self.step, self.total, (self.step - 1) // self.steps_per_epoch + 1, lrs, losses,
                    self.seconds)


@dataclass
class ProgressCallback:
    """A `progress(step, total, losses)` function as a listener."""

    fn: Callable[[int, int, Mapping[str, float]], None]

    def on_step(self, event: Step) -> None:
        self.fn(event.step, event.total, event.losses)


@dataclass
class Periodic:
    """Calls `action(step)` every `every` steps before the last (0: never)."""

    every: int
    action: Callable[[int], Any]

    def on_step(self, event: Step) -> None:
        if self.every > 0 and event.step % self.every == 0 and event.step < event.total:
            self.action(event.step)


def learning_rates(trainer: Any) -> dict[str, float]:
    """The current rate of each optimizer a trainer holds (`opt_G` -> "G"), in attribute order."""
    return {name.removeprefix("opt_"): float(opt.param_groups[0]["lr"]) for name, opt in vars(trainer).items()
            if isinstance(opt, torch.optim.Optimizer)}
