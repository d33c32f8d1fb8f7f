"""Run a stored task on images: an image file or a folder in, PNGs with the same base names out."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import kornia
import torch
from torch import nn

from .errors import PbganError
from .images import BadImage, list_images, read_image, warn_skipped, write_image
from .store import refuse_inside_model


def condition_half(image: torch.Tensor, direction: str, source: Path) -> torch.Tensor:
    """The condition side of an A|B file: A (left) for AtoB, B (right) for BtoA."""
    width = image.shape[-1]
    if width != 2 * image.shape[-2]:
        raise BadImage(source, f"--aligned expects A|B side by side (width twice the height), got "
                               f"{width}x{image.shape[-2]}")
    half = width // 2
    return image[..., :half] if direction == "AtoB" else image[..., half:]


def to_task_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) or (N, 3, H, W) -> (N, 3, size, size), resized as every task input is."""
    batch = image if image.dim() == 4 else image[None]
    return kornia.geometry.transform.resize(batch, (size, size), antialias=True)


def output_paths(inputs: list[Path], output: Path, single_file: bool) -> dict[Path, Path]:
    """Input -> output PNG: the input's base name, or its full name (x.jpg.png, x.png.png) where
    two inputs share a base name, so no output stands for two inputs."""
    if single_file:
        return {inputs[0]: output}
    stems = Counter(p.stem for p in inputs)
    targets = {p: output / (f"{p.stem}.png" if stems[p.stem] == 1 else f"{p.name}.png") for p in inputs}
    twice = [t for t, n in Counter(targets.values()).items() if n > 1]
    if twice:
        names = ", ".join(p.name for p, t in targets.items() if t == twice[0])
        raise PbganError(f"inputs {names} would all be written to {twice[0]}; rename one of them")
    return targets


def plan_outputs(source: Path, output: Path, model_root: Path, force: bool = False) -> dict[Path, Path]:
    """Input image -> output PNG, checked before any model is read: the inputs exist, no output
    lands inside the model directory, none exists already unless `force`."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise PbganError(f"input {source} does not exist: give an image file or a folder of images")
    inputs = list_images(source) if source.is_dir() else [source]
    if not inputs:
        raise PbganError(f"no images in {source}: give an image file or a folder of images")
    single_file = output.suffix.lower() == ".png" and not source.is_dir()
    if not single_file and output.exists() and not output.is_dir():
        raise PbganError(f"output {output} is a file; give a folder (or a .png path for one input image)")
    refuse_inside_model(output, model_root)
    targets = output_paths(inputs, output, single_file)
    existing = [t for t in targets.values() if t.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PbganError(f"output {existing[0]} exists already{more}; add --force to replace, or choose another "
                         "output")
    return targets


@torch.no_grad()
def generate(gen: nn.Module, size: int, direction: str, targets: dict[Path, Path], aligned: bool = False,
             device: str | torch.device = "cpu", force: bool = False) -> list[Path]:
    """Run `gen` on each input of `plan_outputs` and write its PNG."""
    written, skipped = [], []
    for path, target in targets.items():
        try:
            image = read_image(path)
            if aligned:
                image = condition_half(image, direction, path)
        except BadImage as exc:
            if len(targets) == 1:
                raise
            skipped.append((path, exc.reason))
            continue
        written.append(write_image(gen(to_task_size(image, size).to(device))[0].cpu(), target, overwrite=force))
    if skipped:
        warn_skipped(skipped)
    if not written:
        raise PbganError(f"no usable image in {next(iter(targets)).parent}")
    return written
