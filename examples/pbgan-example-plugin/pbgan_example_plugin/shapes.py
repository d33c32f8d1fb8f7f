"""Synthetic paired data: A is a shape's outline on white, B the same shape filled with a colour.

Item i of a split is drawn from a generator seeded by (split, i), so every run and every
process sees the same images without any file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.data import Dataset

from pbgan_core.errors import PbganError
from pbgan_core.interfaces import DatasetPlugin
from pbgan_core.options import Option

SPLIT_SEEDS = {"train": 0, "test": 1_000_003, "val": 2_000_003}


def draw_shape(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy, r = u() - 0.5, u() - 0.5, 0.25 + 0.3 * u()
    if u() < 0.5:  # disc
        dist = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() / r
    else:  # square
        dist = torch.maximum((xs - cx).abs(), (ys - cy).abs()) / r
    inside = dist <= 1
    outline = inside & (dist > 1 - 3.0 / (r * size))
    colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
    a = torch.where(outline, -1.0, 1.0).expand(3, size, size).clone()
    b = torch.where(inside, colour, torch.ones(3, 1, 1))
    return a, b


class ShapeItems(Dataset):
    def __init__(self, split: str, count: int, size: int):
        self.base, self.count, self.size = SPLIT_SEEDS.get(split, SPLIT_SEEDS["test"]), count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b = draw_shape(self.size, self.base + i)
        return {"A": a, "B": b, "path": f"shape-{i:05d}.png"}


class ShapesDataset(DatasetPlugin):
    name = "shapes"
    description = "synthetic outline -> filled shape pairs, made on the fly (--data is not read)"
    options = (Option("shapes-count", 64, "images per split (shapes dataset)"),)

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> Dataset:
        count = int(opts.get("shapes_count", 64))
        if count < 1:
            raise PbganError(f"--shapes-count must be at least 1, got {count}")
        return ShapeItems(split, count, int(opts["size"]))
