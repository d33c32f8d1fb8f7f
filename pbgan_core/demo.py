"""`pbgan demo`: a lifelong model of a few tasks on built-in photos, no download.

The photos are those that ship inside scikit-image (`pip install pbgan[demo]`); without it,
generated images stand in. Each task derives its condition from the photo with kornia. The
first task seeds the filter bank, the later ones piggyback on it; at the end every earlier
task is checked to still compute bit-identical outputs, and the HTML report is written.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from .console import console, keep_numbers_whole, sequence_progress
from .engine import eval_split, probe_task, train_task
from .images import read_image, write_image
from .plugins import Plugins, get_plugins
from .report import build_report
from .store import ModelStore

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "ihc.png", "color.png", "retina.jpg", "motorcycle_right.png")
METRICS = ("psnr", "ssim")


@dataclass(frozen=True)
class DemoTask:
    name: str
    derive: str  # how the condition is computed from the photo (the derived dataset's --derive)
    what: str  # what a person sees in the task's samples
    baseline: str  # the trivial answer: "condition" when the condition is an image of the target, else "mean"


# Denoising first: its filters (edges, textures, colour) are the ones the later tasks need. Each
# task's trivial answer scores far below what a short run learns. Tried at 400 steps and left out:
# deblur, colorize and depixelate (the condition alone keeps the photo's structure: SSIM 0.73-0.87,
# above the 0.65-0.70 the runs reached) and edges2photo (below the mean photo).
TASKS = (
    DemoTask("denoise", "noise", "noisy → clean", "condition"),
    DemoTask("brighten", "dark", "dark → normal", "condition"),
    DemoTask("negative2photo", "negative", "negative → photo", "condition"),
)
OPTIONS = {"ngf": 32, "ndf": 32, "eval_images": 0, "upsample": "resize"}


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
    for index, photo in enumerate(photos):
        h, w = photo.shape[-2:]
        side = min(h, w, crop * 2)
        for i in range(per_photo):
            y = int(torch.randint(0, h - side + 1, (1,), generator=g))
            x = int(torch.randint(0, w - side + 1, (1,), generator=g))
            patch = photo[:, y:y + side, x:x + side]
            patch = torch.nn.functional.interpolate(patch[None], size=(crop, crop), mode="area")[0]
            split = "test" if i % 8 == 0 else "train"
            write_image(patch, folder / split / f"{i:02d}-{index:02d}.png")  # sorted test crops alternate photos
    return "scikit-image photos" if sources else "generated images (install pbgan[demo] for real photos)"


@torch.no_grad()
def baseline_scores(store: ModelStore, plugins: Plugins, task: DemoTask) -> dict[str, float]:
    """Metrics of the trivial answer on the task's test images: the condition itself, or the mean
    training photo where the condition is not an image of the target."""
    entry = store.task(task.name)
    test = eval_split(entry, plugins)
    targets = torch.stack([test[i]["B"] for i in range(len(test))])
    if task.baseline == "condition":
        answers = torch.stack([test[i]["A"] for i in range(len(test))])
    else:
        train = plugins.datasets.get(entry["dataset"]).build(Path(entry["data"]), "train", entry["options"], False)
        mean = torch.stack([train[i]["B"] for i in range(len(train))]).mean(0)
        answers = mean.expand_as(targets)
    return {m: float(plugins.metrics.get(m).fn(answers, targets).mean()) for m in METRICS}


def fresh_model_dir(out: Path) -> Path:
    """out/model, or a new time-stamped folder beside it when an earlier demo left one there."""
    model_dir = out / "model"
    if ModelStore(model_dir).exists:
        model_dir = out / f"model-{time.strftime('%Y%m%d-%H%M%S')}"
    return model_dir


def run_demo(out: Path, steps: int = 500, size: int = 64, device: str = "cpu",
             tasks: tuple[DemoTask, ...] = TASKS, options: dict | None = None) -> Path:
    """Train `tasks` in order into a new model under `out`, print the summary and return the model dir."""
    from .api import train_request

    out = Path(out)
    model_dir = fresh_model_dir(out)
    photos = out / "photos"
    plugins = get_plugins()
    requests = [train_request("pix2pix", task.name, photos, model_dir=model_dir, size=size, steps=steps, batch_size=4,
                              dataset="derived", derive=task.derive, device=device, seed=0, plugins=plugins,
                              **{**OPTIONS, **(options or {})}) for task in tasks]  # checked before any work
    crop = round(size * 286 / 256)  # the training load size: no resizing before the random crop
    source = make_crops(photos, crop) if not (photos / "train").exists() else "photos from an earlier demo run"
    console.print(f"demo data: {source} in {photos}")
    started = time.perf_counter()
    progress, start_task = sequence_progress([t.name for t in tasks], steps)
    with progress:
        for task, request in zip(tasks, requests):
            train_task(request, plugins, listeners=[start_task(task.name)])
    store = ModelStore(model_dir)
    console.print(summary_table(store, plugins, tasks, time.perf_counter() - started))
    console.print("base: the trivial answer (the condition itself, or the mean photo); x gen: stored parameters / "
                  "one standalone generator; forgot: SSIM lost by the end of the sequence", highlight=False)
    same = [t["name"] for t in store.tasks if probe_task(store, plugins, t["name"]) == t["probe_sha256"]]
    console.print(f"outputs bit-identical to those recorded when each task was trained: {len(same)} of "
                  f"{len(store.tasks)} tasks", highlight=False)
    report = build_report(store, plugins, model_dir / "report", samples=6)
    console.print(f"report (samples: condition | output | photo): {report}", style="bold")
    console.print(f"model: {model_dir}; next, try:", highlight=False)
    for command in ("tasks", "eval", "verify", "report"):
        console.print(f"  pbgan {command} --model-dir {model_dir}", highlight=False)
    return model_dir


def summary_table(store: ModelStore, plugins: Plugins, tasks: tuple[DemoTask, ...], seconds: float) -> Table:
    table = Table(title=f"pbgan demo: {len(tasks)} lifelong tasks in {seconds:.0f} s")
    for col in ("task", "learns", "x gen", "PSNR", "base", "SSIM", "base", "forgot"):
        table.add_column(col, justify="left" if col in ("task", "learns") else "right",
                         no_wrap=col not in ("task", "learns"))
    final = store.manifest["stages"][-1]["metrics"]
    for task in tasks:
        entry = store.task(task.name)
        m, p, base = entry["metrics"], entry["params"], baseline_scores(store, plugins, task)
        table.add_row(task.name, task.what, f"{p['stored'] / p['standalone']:.2f}", f"{m['psnr']:.1f}",
                      f"{base['psnr']:.1f}", f"{m['ssim']:.2f}", f"{base['ssim']:.2f}",
                      f"{m['ssim'] - final[task.name]['ssim']:.3f}")
    return keep_numbers_whole(table)
