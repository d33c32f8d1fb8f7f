"""Test-time protocols: how a stored generator translates images.

- reference: as the pix2pix paper and the reference test.py (without --eval): BatchNorm uses
  the statistics of the image itself (each image is translated on its own, a batch of one) and
  dropout stays on. Dropout draws from a generator seeded by (task, generator, image file name),
  so an image's output is the same run to run, in any folder, and after any later task.
- eval: eval mode: BatchNorm uses its running statistics, dropout is off.

For instance-norm generators without dropout (the CycleGAN defaults) both give the same outputs.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .batchnorm import tracked_batchnorms
from .errors import UsageError

PROTOCOLS = ("reference", "eval")
# eval scored better on 14 of 18 (task, metric) pairs of the lifelong benchmark's held-out splits,
# SSIM on every task (BENCHMARKS.md, "Test-time protocols")
DEFAULT_PROTOCOL = "eval"


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise UsageError(f"unknown test-time protocol {name!r} (--protocol); use reference (batch statistics, "
                         "dropout on, as the reference test.py) or eval (running statistics, no dropout)")
    return name


def image_seed(*parts: str) -> int:
    """A 63-bit seed from names (task, generator, image file name)."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def batch_statistics(gen: nn.Module) -> Iterator[None]:
    """Run `gen` as in training (batch statistics, dropout on) without touching its running
    statistics, then put it back in eval mode."""
    norms = tracked_batchnorms(gen)
    gen.train()
    for m in norms:
        m.track_running_stats = False  # normalize with the batch's statistics, update nothing
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
        gen.eval()


@torch.no_grad()
def translate(gen: nn.Module, x: torch.Tensor, protocol: str, seeds: Sequence[int]) -> torch.Tensor:
    """gen(x) under `protocol`; `seeds` (one per image) seed the reference protocol's dropout."""
    check_protocol(protocol)
    if protocol == "eval":
        gen.eval()
        return gen(x)
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {len(seeds)} seeds")
    devices = [x.device] if x.device.type == "cuda" else []
    outputs = []
    with batch_statistics(gen):
        for image, seed in zip(x, seeds):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                outputs.append(gen(image[None]))
    return torch.cat(outputs)
