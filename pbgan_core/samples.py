"""Samples during training: the same few training and test images translated every so often,
as the reference code's web/ folder shows them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import PbganError
from .events import Samples, Step

SAMPLE_IMAGES = 4


def fixed_images(dataset_plugin: Any, data: Path, opts: Mapping[str, Any], split: str, source: str,
                 target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(conditions, targets) of the split's first few images, without augmentation; None when the
    split does not exist. Only those images are read, and the global RNG is left as it was:
    sampling must not change training."""
    first = dict(opts, max_images=min(opts.get("max_images") or SAMPLE_IMAGES, SAMPLE_IMAGES))
    with torch.random.fork_rng(devices=[]):
        try:
            images = dataset_plugin.build(data, split, first, train=False)
        except PbganError:
            return None
        items = [images[i] for i in range(min(len(images), SAMPLE_IMAGES))]
    if not items:
        return None
    return torch.stack([item[source] for item in items]), torch.stack([item[target] for item in items])


def strips(condition: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One (3, N*H, 3*W) image: a row of condition | output | target per sample."""
    return torch.cat([torch.cat(row, dim=2) for row in zip(condition, output, target)], dim=1)


class SampleMaker:
    """A listener that emits `Samples` every `every` steps and after the last one."""

    def __init__(self, events: Any, generator: nn.Module, images: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 every: int, device: torch.device):
        self.events, self.generator, self.images, self.every, self.device = events, generator, images, every, device

    @torch.no_grad()
    def on_step(self, event: Step) -> None:
        if event.step % self.every and event.step != event.total:
            return
        training = self.generator.training
        self.generator.eval()
        try:
            shown = {split: (cond, self.generator(cond.to(self.device)).float().cpu(), target)
                     for split, (cond, target) in self.images.items()}
        finally:
            self.generator.train(training)
        self.events.emit(Samples(event.task, event.step, shown))


def sample_maker(events: Any, req: Any, arch: Any, dataset_plugin: Any, opts: Mapping[str, Any],
                 generators: Mapping[str, nn.Module], device: torch.device, total: int) -> SampleMaker:
    """Samples of the task's direction on its training and test images, every --sample-every steps
    (0: ten times a run)."""
    source, target = ("A", "B") if req.direction == "AtoB" else ("B", "A")
    found = {split: fixed_images(dataset_plugin, Path(req.data), opts, split, source, target)
             for split in ("train", "test")}
    every = req.sample_every or max(1, total // 10)
    return SampleMaker(events, generators[arch.generator_for(req.direction)],
                       {split: pair for split, pair in found.items() if pair is not None}, every, device)
