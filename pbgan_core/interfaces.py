"""What each kind of plugin provides. Plugins hand instances of these to `register`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .options import Option


class Architecture:
    """Builds the generator(s), owns discriminators, losses and the training step.

    Generators are named (pix2pix: ``{"G": ...}``; CycleGAN: ``{"G_A": ..., "G_B": ...}``);
    the factorizer wraps each one, and the bank keeps one set of layers per name.
    """

    name: str = ""
    description: str = ""
    paired: bool = True
    default_dataset: str = "aligned"
    options: tuple[Option, ...] = ()
    # training length without --steps: epochs at the initial learning rate, then epochs of linear decay
    epochs: int = 100
    epochs_decay: int = 100

    def build_generators(self, opts: Mapping[str, Any]) -> dict[str, nn.Module]:
        raise NotImplementedError

    def generator_options(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        """Every option value that shapes the generator beyond its convolutions' shapes (norm,
        dropout, ...), normalized: later tasks of a model must match the first task's."""
        return {}

    def generator_for(self, direction: str) -> str:
        """Name of the generator that translates in `direction` at inference."""
        return "G"

    def build_trainer(self, generators: dict[str, nn.Module], opts: Mapping[str, Any],
                      device: torch.device, total_steps: int) -> "Trainer":
        raise NotImplementedError


class Trainer:
    """One task's optimization: discriminators, optimizers, schedulers and the step."""

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DatasetPlugin:
    """Yields dict items: ``{"A": Tensor, "B": Tensor, "path": str}``, images in [-1, 1]."""

    name: str = ""
    description: str = ""
    options: tuple[Option, ...] = ()

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> torch.utils.data.Dataset:
        raise NotImplementedError


@dataclass
class Metric:
    """A per-image quality measure. `fn(pred, target)` takes batches in [-1, 1], returns (N,)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool
    description: str = ""


@dataclass
class Loss:
    """A named loss factory: `build(**options)` returns an nn.Module."""

    name: str
    build: Callable[..., nn.Module]
    description: str = ""
    options: tuple[Option, ...] = field(default_factory=tuple)


@dataclass
class GeneratorFamily:
    """A family of generator networks other architectures can build by name.

    `build(name, **kwargs)` returns an nn.Module; `names` lists what it accepts
    (a family may also accept a pattern, e.g. ``unet_N`` for any power of two).
    """

    name: str
    build: Callable[..., nn.Module]
    names: tuple[str, ...] = ()
    description: str = ""


@dataclass
class Logger:
    """Records a training run. `create(request)` gets the `TrainRequest` (model_dir, task, resume,
    log_every, sample_every, ...) in the first process before training starts, and returns a
    listener of the run's events (see pbgan_core/events.py). Missing dependencies are a
    `PbganError` raised by `create`."""

    name: str
    create: Callable[[Any], Any]
    description: str = ""
