"""Switching tasks from Python (`Model.translate`), against one warm forward of a standalone
generator measured in the same run.

    python benchmarks/task_switch.py [--size 256] [--ngf 64] [--repeat 5] [--device cpu]

A model directory with two unet tasks (task 2 piggybacks on task 1's filters) is written to a
temporary folder. Rows:
  cold task      time to the first output image after switching to a task not in memory (the
                 model open, the bank read by an earlier task): read the task file, run it
                 unmaterialized (bank path where cheaper); ratio to one warm standalone forward
  old way        load + materialize + forward, as every switch cost before the cache
  warm switch    getting a cached task's generator back after using the other task, in ms
  warm forward   a cached task's translate / standalone forward
  equality       relative error of the unmaterialized output against the materialized one
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbgan_core.api import Model
from pbgan_core.engine import load_generators
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
        lazy = cold()

        def old_way() -> torch.Tensor:
            _, gens = load_generators(store, model.plugins, "t2", device)
            with torch.no_grad():
                return gens["G"](x)

        old_s = statistics.median(timed(old_way, device) for _ in range(args.repeat))
        dense = model.generator("t2", device=device)  # the second use materializes
        with torch.no_grad():
            expected = dense(x)
        rel_err = float((lazy - expected).norm() / expected.norm())

        model.generator("t1", device=device)
        switches = []
        for _ in range(args.repeat):
            for task in ("t1", "t2"):
                switches.append(timed(lambda: model.generator(task, device=device), device))
        switch_ms = 1000 * statistics.median(switches)
        warm = time_it(lambda: model.translate("t2", x, device=device), args.repeat, device)

    rows = [
        ("standalone warm forward (s)", f"{forward:.3f}", ""),
        ("cold task: first output / warm forward", f"{cold_s / forward:.2f}", "<= 2"),
        ("old way: load + materialize + forward / fwd", f"{old_s / forward:.2f}", ""),
        ("warm switch (ms)", f"{switch_ms:.3f}", "< 5"),
        ("warm translate / warm forward", f"{warm / forward:.2f}", ""),
        ("unmaterialized vs materialized, rel. error", f"{rel_err:.1e}", "< 1e-5"),
    ]
    print(f"{'measure':<46}{'value':>10}{'target':>10}")
    for name, value, target in rows:
        print(f"{name:<46}{value:>10}{target:>10}")


if __name__ == "__main__":
    main()
