"""Run a stored task on images: an image file or a folder in, PNGs with the same base names out."""
from __future__ import annotations

from pathlib import Path

import kornia
import torch

from .engine import load_generators
from .errors import PbganError
from .images import BadImage, list_images, read_image, warn_skipped, write_image
from .plugins import Plugins
from .store import ModelStore


def condition_half(image: torch.Tensor, direction: str, source: Path) -> torch.Tensor:
    """The condition side of an A|B file: A (left) for AtoB, B (right) for BtoA."""
    width = image.shape[-1]
    if width != 2 * image.shape[-2]:
        raise BadImage(source, f"--aligned expects A|B side by side (width twice the height), got "
                               f"{width}x{image.shape[-2]}")
    half = width // 2
    return image[..., :half] if direction == "AtoB" else image[..., half:]


@torch.no_grad()
def generate(store: ModelStore, plugins: Plugins, task: str, source: Path, output: Path,
             direction: str | None = None, aligned: bool = False, device: str = "cpu") -> list[Path]:
    source = Path(source)
    if not source.exists():
        raise PbganError(f"input {source} does not exist: give an image file or a folder of images")
    inputs = list_images(source) if source.is_dir() else [source]
    if not inputs:
        raise PbganError(f"no images in {source}: give an image file or a folder of images")
    entry, generators = load_generators(store, plugins, task, device)
    direction = direction or entry["direction"]
    arch = plugins.architectures.get(entry["arch"])
    gen = generators[arch.generator_for(direction)]
    size = int(entry["options"]["size"])
    output = Path(output)
    if output.suffix.lower() == ".png" and not source.is_dir():
        targets = {inputs[0]: output}
    else:
        if output.exists() and not output.is_dir():
            raise PbganError(f"output {output} is a file; give a folder (or a .png path for one input image)")
        targets = {p: output / f"{p.stem}.png" for p in inputs}
    written, skipped = [], []
    for path, target in targets.items():
        try:
            image = read_image(path)
            if aligned:
                image = condition_half(image, direction, path)
        except BadImage as exc:
            if len(inputs) == 1:
                raise
            skipped.append((path, exc.reason))
            continue
        x = kornia.geometry.transform.resize(image[None], (size, size), antialias=True).to(device)
        written.append(write_image(gen(x)[0].cpu(), target))
    if skipped:
        warn_skipped(skipped)
    if not written:
        raise PbganError(f"no usable image in {source}")
    return written
