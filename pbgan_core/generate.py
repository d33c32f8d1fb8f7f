"""Run a stored task on images: an image file or a folder in, PNGs with the same base names out."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import kornia
import torch

from .engine import load_generators
from .errors import PbganError
from .images import BadImage, list_images, read_image, warn_skipped, write_image
from .plugins import Plugins
from .store import ModelStore, refuse_inside_model


def condition_half(image: torch.Tensor, direction: str, source: Path) -> torch.Tensor:
    """The condition side of an A|B file: A (left) for AtoB, B (right) for BtoA."""
    width = image.shape[-1]
    if width != 2 * image.shape[-2]:
        raise BadImage(source, f"--aligned expects A|B side by side (width twice the height), got "
                               f"{width}x{image.shape[-2]}")
    half = width // 2
    return image[..., :half] if direction == "AtoB" else image[..., half:]


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


@torch.no_grad()
def generate(store: ModelStore, plugins: Plugins, task: str, source: Path, output: Path,
             direction: str | None = None, aligned: bool = False, device: str = "cpu",
             force: bool = False) -> list[Path]:
    source = Path(source)
    if not source.exists():
        raise PbganError(f"input {source} does not exist: give an image file or a folder of images")
    inputs = list_images(source) if source.is_dir() else [source]
    if not inputs:
        raise PbganError(f"no images in {source}: give an image file or a folder of images")
    output = Path(output)
    single_file = output.suffix.lower() == ".png" and not source.is_dir()
    if not single_file and output.exists() and not output.is_dir():
        raise PbganError(f"output {output} is a file; give a folder (or a .png path for one input image)")
    refuse_inside_model(output, store.root)
    targets = output_paths(inputs, output, single_file)
    existing = [t for t in targets.values() if t.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PbganError(f"output {existing[0]} exists already{more}; add --force to replace, or choose another "
                         "output")
    entry, generators = load_generators(store, plugins, task, device)
    direction = direction or entry["direction"]
    arch = plugins.architectures.get(entry["arch"])
    gen = generators[arch.generator_for(direction)]
    size = int(entry["options"]["size"])
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
        written.append(write_image(gen(x)[0].cpu(), target, overwrite=force))
    if skipped:
        warn_skipped(skipped)
    if not written:
        raise PbganError(f"no usable image in {source}")
    return written
