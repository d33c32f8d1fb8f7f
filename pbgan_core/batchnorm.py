"""BatchNorm running statistics recomputed after training.

Trained at batch size 1, a BatchNorm layer's running statistics are a moving average over the
last few dozen images only (momentum 0.1), so a generator run in eval mode can be far off on
every other image: in the lifelong benchmark at 64 px, some tasks fell from 14-15 dB PSNR to
7 dB that way (BENCHMARKS.md, "BatchNorm statistics"). Recomputed as the plain mean over many
training images, in batches of the training batch size as in training, they match the trained weights.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def tracked_batchnorms(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of `module` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(module: nn.Module) -> bool:
    return bool(tracked_batchnorms(module))


def spread_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total) (folders are often sorted by kind)."""
    count = min(count, total)
    return sorted({k * total // count for k in range(count)}) if count else []


def recompute_batchnorm(generators: Mapping[str, nn.Module], inputs: Mapping[str, Iterable[torch.Tensor]],
                        seed: int) -> None:
    """Replace each generator's BatchNorm running statistics by their mean over `inputs[name]`
    (batches of the images that generator translates), in training mode as in training: dropout
    on, drawn from `seed`. Weights are unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, gen in generators.items():
            if has_batchnorm(gen):
                update_bn(inputs[name], gen)  # resets the statistics, then a cumulative mean
