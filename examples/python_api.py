"""Train three small lifelong tasks from Python, switch between them, and plot each task's
condition | output | target.

    pip install -e ".[demo,examples]"     # scikit-image's photos, matplotlib
    python examples/python_api.py --out api-example

The tasks are the demo's (denoise, brighten, negative2photo): conditions derived from photos
that ship with scikit-image, so nothing is downloaded. At the defaults it takes a minute or two
on a CPU; the figure goes to OUT/tasks.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write a file; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pbgan_core as pbgan  # noqa: E402
from pbgan_core.demo import make_crops  # noqa: E402
from pbgan_core.images import list_images, read_image, to_pil  # noqa: E402
from pbgan_plugins.datasets import derive  # noqa: E402

TASKS = {"denoise": "noise", "brighten": "dark", "negative2photo": "negative"}  # task: how its condition is made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("api-example"))
    parser.add_argument("--steps", type=int, default=300, help="training steps per task")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2, help="test images per task in the figure")
    args = parser.parse_args()
    photos, model_dir = args.out / "photos", args.out / "model"
    if not (photos / "test").exists():
        print(f"photos: {make_crops(photos, round(args.size * 286 / 256))}")
    small = dict(size=args.size, ngf=16, ndf=16, batch_size=4, upsample="resize", steps=args.steps, device="cpu")

    have = {t.name for t in pbgan.Model.open(model_dir).tasks} if (model_dir / "manifest.json").exists() else set()
    for name, kind in TASKS.items():  # the first task seeds the filter bank; the others piggyback on it
        if name not in have:
            pbgan.train("pix2pix", name, photos, model_dir=model_dir, derive=kind, **small,
                        progress=lambda step, total, losses, name=name: print(f"{name}: step {step}/{total}",
                                                                              end="\r"))
            print()

    model = pbgan.Model.open(model_dir)
    for task in model.tasks:
        print(f"{task.name}: {task.ratio_to_standalone:.2f} of a standalone generator stored, "
              f"psnr {task.metrics['psnr']:.1f} dB, ssim {task.metrics['ssim']:.2f}")

    tests = list_images(photos / "test")[: args.images]
    fig, axes = plt.subplots(len(TASKS) * len(tests), 3, figsize=(6, 2.1 * len(TASKS) * len(tests)), squeeze=False)
    row = 0
    for name, kind in TASKS.items():
        for index, path in enumerate(tests):
            photo = F.interpolate(read_image(path)[None], size=(args.size, args.size), mode="area")[0]
            condition = derive(photo, kind, index)
            output = model.translate(name, condition)  # switches task; recent tasks stay in memory
            for col, (title, image) in enumerate((("condition", condition), ("output", output), ("target", photo))):
                ax = axes[row, col]
                ax.imshow(to_pil(image))
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title)
            axes[row, 0].set_ylabel(name)
            row += 1
    fig.tight_layout()
    fig.savefig(args.out / "tasks.png", dpi=100)
    print(f"wrote {args.out / 'tasks.png'}")


if __name__ == "__main__":
    main()
