"""Train two tiny tasks from Python, switch between them, and plot their outputs side by side.

    pip install -e ".[examples]"          # matplotlib
    python examples/python_api.py --data ../shared/data --out api-example

Each task takes a few seconds on a CPU at 32 px; the figure goes to OUT/tasks.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write a file; no display needed
import matplotlib.pyplot as plt  # noqa: E402

import pbgan_core as pbgan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with facades/ and edges2shoes/")
    parser.add_argument("--out", type=Path, default=Path("api-example"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model_dir = args.out / "model"
    tiny = dict(size=32, ngf=8, ndf=8, max_images=24, eval_images=4, steps=args.steps, device="cpu")

    tasks = {"facades": args.data / "facades", "shoes": args.data / "edges2shoes"}
    have = {t.name for t in pbgan.Model.open(model_dir).tasks} if (model_dir / "manifest.json").exists() else set()
    for name, data in tasks.items():
        if name not in have:
            print(f"training {name} ...")
            pbgan.train("pix2pix", name, data, model_dir=model_dir, direction="BtoA", **tiny,
                        progress=lambda step, total, losses: print(f"  step {step}/{total}", end="\r"))
            print()

    model = pbgan.Model.open(model_dir)
    for task in model.tasks:
        print(f"{task.name}: {task.params['stored']:,} stored parameters "
              f"({task.ratio_to_standalone:.2f} of a standalone generator), metrics {task.metrics}")

    inputs = {"facades": sorted((tasks["facades"] / "test").glob("*.jpg"))[0],
              "shoes": sorted((tasks["shoes"] / "val").glob("*.jpg"))[0]}
    fig, axes = plt.subplots(1, len(inputs), figsize=(3 * len(inputs), 3.4))
    for ax, (task, path) in zip(axes, inputs.items()):
        output = model.translate(task, path, aligned=True)  # switches task; recent tasks stay in memory
        ax.imshow(output)
        ax.set_title(f"{task}: {path.name}")
        ax.axis("off")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "tasks.png")
    print(f"wrote {args.out / 'tasks.png'}")


if __name__ == "__main__":
    main()
