"""`pbgan demo`: a 3-task lifelong model on built-in photos, no download.

The photos are those that ship inside scikit-image (`pip install pbgan[demo]`); without it,
generated images stand in. Each task derives its condition from the photo with kornia:
edges -> photo, grayscale -> colour, blurred -> sharp.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import torch
from rich.table import Table

from .console import console, training_progress
from .engine import TrainRequest, train_task
from .engine import eval_split, load_generators
from .images import read_image, write_image
from .plugins import get_plugins
from .store import ModelStore

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "ihc.png", "color.png", "retina.jpg", "motorcycle_right.png")
TASKS = (("edges2photo", "edges"), ("gray2color", "grayscale"), ("blur2sharp", "blur"))


def builtin_photos() -> list[Path]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return [data / name for name in PHOTOS if (data / name).exists()]


def generated_photo(index: int, size: int = 256) -> torch.Tensor:
    """A smooth colourful image with a few shapes, in [-1, 1]: a stand-in when no photos are installed."""
    g = torch.Generator().manual_seed(index)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(4):
        cx, cy, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 4])).tolist()
        colour = torch.rand(3, 1, 1, generator=g)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (r + 8) ** 2
        image = torch.where(disc, colour, image)
    return image.clamp(0, 1) * 2 - 1


def make_crops(folder: Path, crop: int = 128, per_photo: int = 24, seed: int = 0) -> str:
    """Random square crops of each photo into folder/train and folder/test; returns the source name."""
    sources = builtin_photos()
    photos = [read_image(p) for p in sources] or [generated_photo(i) for i in range(8)]
    g = torch.Generator().manual_seed(seed)
    count = 0
    for photo in photos:
        h, w = photo.shape[-2:]
        side = min(h, w, crop * 2)
        for i in range(per_photo):
            y = int(torch.randint(0, h - side + 1, (1,), generator=g))
            x = int(torch.randint(0, w - side + 1, (1,), generator=g))
            patch = photo[:, y:y + side, x:x + side]
            patch = torch.nn.functional.interpolate(patch[None], size=(crop, crop), mode="area")[0]
            split = "test" if i % 8 == 0 else "train"
            write_image(patch, folder / split / f"{count}.png")
            count += 1
    return "scikit-image photos" if sources else "generated images (install pbgan[demo] for real photos)"


@torch.no_grad()
def write_samples(store: ModelStore, plugins, task: str, folder: Path) -> None:
    """One PNG per test photo: the derived condition, the stored task's output, the photo."""
    entry, generators = load_generators(store, plugins, task)
    data = eval_split(entry, plugins)
    for i in range(len(data)):
        item = data[i]
        output = generators["G"](item["A"][None])[0]
        write_image(torch.cat([item["A"], output, item["B"]], dim=-1), folder / f"{Path(item['path']).stem}.png")


def run_demo(out: Path, steps: int = 300, size: int = 64, device: str = "cpu") -> dict:
    out = Path(out)
    model_dir = out / "model"
    if ModelStore(model_dir).exists:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model_dir = out / f"model-{stamp}"
    photos = out / "photos"
    source = make_crops(photos) if not (photos / "train").exists() else "photos from an earlier demo run"
    console.print(f"demo data: {source} in {photos}")
    plugins = get_plugins()
    started = time.perf_counter()
    for name, derive in TASKS:
        request = TrainRequest(arch="pix2pix", task=name, data=photos, model_dir=model_dir, size=size, steps=steps,
                               batch_size=4, dataset="derived", device=device, seed=0,
                               extra={"derive": derive, "ngf": 32, "ndf": 32, "eval_images": 0})
        progress, update = training_progress(name)
        with progress:
            train_task(request, plugins, update)
    store = ModelStore(model_dir)
    samples = out / "samples"
    for name, _ in TASKS:
        write_samples(store, plugins, name, samples / name)
    table = Table(title=f"pbgan demo: 3 lifelong tasks in {time.perf_counter() - started:.0f} s")
    for col in ("task", "params", "ratio", "L1", "PSNR", "SSIM", "forgot"):
        table.add_column(col, justify="left" if col == "task" else "right")
    final = store.manifest["stages"][-1]["metrics"]
    for (name, derive), entry in zip(TASKS, store.tasks):
        m, p = entry["metrics"], entry["params"]
        forgot = m["ssim"] - final[name]["ssim"]  # SSIM lost by the end of the sequence
        table.add_row(name, f"{p['stored']:,}", f"{p['stored'] / p['standalone']:.3f}", f"{m['l1']:.3f}",
                      f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", f"{forgot:.3f}")
    console.print(table)
    console.print("ratio: stored parameters / one standalone generator; forgot: SSIM lost after all 3 tasks")
    console.print(f"model: {model_dir}\nsamples (condition | output | photo): {samples}/<task>/")
    return json.loads(store.manifest_path.read_text())
