"""pix2pix training throughput (images/s): eager, channels-last and torch.compile, one run.

    python benchmarks/pix2pix_throughput.py [--size 256] [--batches 1 4] [--steps 5] [--device cpu]
        [--variants eager channels_last compile]

Each variant runs full pix2pix training steps (G and D updates, GAN + L1) on random images;
the table gives images/s and the ratio to eager in the same run.
"""
from __future__ import annotations

import argparse
import time

import torch

from pbgan_core.options import defaults
from pbgan_core.plugins import get_plugins


def trainer_for(size: int, batch: int, device: torch.device, variant: str):
    arch = get_plugins().architectures.get("pix2pix")
    opts = defaults(arch.options)
    opts.update(size=size, direction="AtoB")
    gen = arch.build_generators(opts)["G"].to(device).train()
    trainer = arch.build_trainer({"G": gen}, opts, device, total_steps=10_000)
    fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    if variant == "channels_last":
        gen.to(memory_format=fmt)
        trainer.D.to(memory_format=fmt)
    if variant == "compile":
        trainer.G = torch.compile(gen)
        trainer.D = torch.compile(trainer.D)
    batch_data = {k: torch.rand(batch, 3, size, size, device=device).mul(2).sub(1).contiguous(memory_format=fmt)
                  for k in ("A", "B")}
    return trainer, batch_data


def images_per_second(size: int, batch: int, steps: int, device: torch.device, variant: str) -> float:
    torch.manual_seed(0)
    trainer, data = trainer_for(size, batch, device, variant)
    for _ in range(2):  # warm-up (and compilation)
        trainer.step(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["eager", "channels_last", "compile"])
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"pix2pix unet_{args.size} + PatchGAN, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.steps} timed steps")
    print(f"{'batch':>6} {'variant':<14}{'images/s':>10}{'x eager':>10}")
    for batch in args.batches:
        base = None
        for variant in args.variants:
            try:
                ips = images_per_second(args.size, batch, args.steps, device, variant)
            except Exception as exc:  # e.g. no compiler for torch.compile: report and go on
                print(f"{batch:>6} {variant:<14}{'failed':>10}  {type(exc).__name__}: {str(exc)[:60]}")
                continue
            base = base or ips
            print(f"{batch:>6} {variant:<14}{ips:>10.2f}{ips / base:>10.2f}")


if __name__ == "__main__":
    main()
