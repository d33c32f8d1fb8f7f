"""Switching tasks from Python (`Model.translate`), against one warm forward of a standalone
generator measured in the same run.

    python benchmarks/task_switch.py [--size 256] [--ngf 64] [--repeat 5] [--device cpu]

A model directory with two unet tasks (task 2 piggybacks on task 1's filters) is written to a
temporary folder. Rows:
  cold task      time to the first output image after switching to a task not in memory (the
                 model open, the bank read by an earlier task): read the task file, materialize
                 its dense weights, run them; ratio to one warm standalone forward
  warm forward   a cached task's translate / standalone forward
  generator copy time and memory of `Model.generator` (a copy of the cached dense generator)
  equality       largest difference between the first output and a later one (0: bit for bit)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbgan_core.api import Model
from pbgan_core.taskcache import module_bytes
from piggyback_speed import store_tasks, sync, time_it, unet


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
    print(f"unet_{args.size} ngf {args.ngf}, batch 1, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, median of {args.repeat}")
    with torch.no_grad():
        standalone = unet(args.size, args.ngf).to(device).eval()
        forward = time_it(lambda: standalone(x), args.repeat, device)

    with tempfile.TemporaryDirectory() as tmp:
        store = store_tasks(Path(tmp), args.size, args.ngf)
        model = Model(store)
        model.translate("t1", x)  # the model is open and its bank read: t2 is the cold task

        def cold() -> torch.Tensor:
            model.cache.clear()
            return model.translate("t2", x, device=device)

        cold_s = statistics.median(timed(cold, device) for _ in range(args.repeat))
        first = cold()
        difference = float((model.translate("t2", x, device=device) - first).abs().max())
        warm = time_it(lambda: model.translate("t2", x, device=device), args.repeat, device)
        copy_s = statistics.median(timed(lambda: model.generator("t2", device=device), device)
                                   for _ in range(args.repeat))
        copy_mb = module_bytes(model.generator("t2", device=device)) / 2**20

    rows = [
        ("standalone warm forward (s)", f"{forward:.3f}", ""),
        ("cold task: first output / warm forward", f"{cold_s / forward:.2f}", "<= 2"),
        ("warm translate / warm forward", f"{warm / forward:.2f}", ""),
        ("generator copy (ms)", f"{1000 * copy_s:.1f}", ""),
        ("generator copy (MiB)", f"{copy_mb:.1f}", ""),
        ("first vs later output, max abs difference", f"{difference:.1e}", "0"),
    ]
    print(f"{'measure':<46}{'value':>10}{'target':>10}")
    for name, value, target in rows:
        print(f"{name:<46}{value:>10}{target:>10}")


if __name__ == "__main__":
    main()
