"""Run a stored task on images: an image file or a folder in, PNGs with the same base names out."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import kornia
import torch
from PIL import Image
from torch import nn

from .errors import PbganError
from .images import (BadImage, is_pair, list_images, normalize, open_rgb, pil_to_uint8, resize_bicubic, split_pair,
                     warn_skipped, write_image)
from .protocol import DEFAULT_PROTOCOL, image_seed, translate
from .store import refuse_inside_model


def pil_condition(image: Image.Image, size: int, direction: str, aligned: bool, source: Path) -> torch.Tensor:
    """The generator's input (3, size, size) in [-1, 1] from an RGB image, as the reference test.py
    makes it: PIL bicubic resize of the image (or of its condition half: A for AtoB, B for BtoA)."""
    if aligned:
        if not is_pair(image):
            w, h = image.info.get("source_size", image.size)
            raise BadImage(source, f"--aligned expects A|B side by side, got {w}x{h}, too narrow to split")
        image = split_pair(image)[0 if direction == "AtoB" else 1]
    return normalize(pil_to_uint8(resize_bicubic(image, (size, size))))


def load_condition(path: Path, size: int, direction: str, aligned: bool) -> torch.Tensor:
    """`pil_condition` of an image file; far larger files are reduced cheaply while decoding."""
    image = open_rgb(path, (2 * size, size) if aligned else (size, size))
    return pil_condition(image, size, direction, aligned, path)


def to_task_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) or (N, 3, H, W) tensor -> (N, 3, size, size): tensors given directly (not files)."""
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
             device: str | torch.device = "cpu", force: bool = False, protocol: str = DEFAULT_PROTOCOL,
             seed_names: tuple[str, ...] = ()) -> list[Path]:
    """Run `gen` on each input of `plan_outputs` under a test-time `protocol` (see protocol.py),
    each image on its own, and write its PNG. `seed_names` (task, generator) and the file name
    seed the reference protocol's dropout."""
    written, skipped = [], []
    for path, target in targets.items():
        try:
            x = load_condition(path, size, direction, aligned)[None].to(device)
        except BadImage as exc:
            if len(targets) == 1:
                raise
            skipped.append((path, exc.reason))
            continue
        y = translate(gen, x, protocol, [image_seed(*seed_names, path.name)])
        written.append(write_image(y[0].cpu(), target, overwrite=force))
    if skipped:
        warn_skipped(skipped)
    if not written:
        raise PbganError(f"no usable image in {next(iter(targets)).parent}")
    return written
