"""Piggyback cost against the plain generator, measured in one run.

    python benchmarks/piggyback_speed.py [--size 256] [--batches 1 4] [--repeat 5] [--device cpu]

Rows (ratios to the plain, standalone unet generator measured in the same run):
  train step     piggyback task 2 (auto path per layer) / plain, and the per-step
                 materialization path (dense coef.T @ bank in every layer) beside it
  inference      materialized task 2 / plain
  task switch    load a stored task + materialize, in ms
  parameters     task-2 stored / standalone, and the growth of that ratio over 10 tasks
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbgan_core.engine import load_generators
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import build_generator, init_weights
from pbgan_plugins.piggyback import PiggybackConv, PiggybackFactorizer


def unet(size: int, ngf: int) -> torch.nn.Module:
    return init_weights(build_generator("auto", 3, 3, ngf, "batch", True, size))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    sync(device)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def train_step(gen: torch.nn.Module, x: torch.Tensor):
    params = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        gen(x).abs().mean().backward()
        opt.step()

    return step


def task2(size: int, ngf: int, lam: float, device: torch.device, path: str = "auto") -> torch.nn.Module:
    first = unet(size, ngf)
    bank = {p: m.weight.detach().transpose(0, 1) if isinstance(m, torch.nn.ConvTranspose2d) else m.weight.detach()
            for p, m in first.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    gen = unet(size, ngf)
    PiggybackFactorizer().wrap(gen, bank, {"lambda": lam}, initialize=False)
    for m in gen.modules():
        if isinstance(m, PiggybackConv) and m.coef is not None:
            torch.nn.init.normal_(m.coef, std=1 / math.sqrt(m.coef.shape[0]))
            if path == "dense":
                m._bank_path_is_cheaper = lambda x: False
    return gen.to(device).train()


def parameter_growth(size: int, ngf: int, lam: float, tasks: int) -> list[float]:
    """Stored parameters of task t / standalone, for t = 1..tasks (bank grows by the free filters)."""
    fac = PiggybackFactorizer()
    with torch.device("meta"):
        standalone = sum(p.numel() for p in unet(size, ngf).parameters())
    bank: dict[str, torch.Tensor] = {}
    ratios = []
    for _ in range(tasks):
        with torch.device("meta"):
            gen = unet(size, ngf)
            fac.wrap(gen, bank, {"lambda": lam}, initialize=False)
        ratios.append(fac.stored_parameters(gen) / standalone)
        _, added = fac.split(gen)
        bank = {k: torch.cat([bank[k], v]) if k in bank else v for k, v in added.items()}
    return ratios


def store_tasks(root: Path, size: int, ngf: int, names=("t1", "t2"), lam: float = 0.25) -> ModelStore:
    """A model directory of unet tasks with random weights, stored as training stores them."""
    fac = PiggybackFactorizer()
    opts = {"netG": "auto", "size": size, "ngf": ngf, "norm": "batch", "no_dropout": False, "init_type": "normal",
            "lambda": lam}
    store = ModelStore(root)
    with store.transaction():
        bank = store.load_bank()
        for name in names:
            gen = unet(size, ngf)
            fac.wrap(gen, bank.prefix(len(bank), "G"), opts, initialize=False)
            for m in gen.modules():
                if isinstance(m, PiggybackConv) and m.coef is not None:
                    torch.nn.init.normal_(m.coef, std=1 / math.sqrt(m.coef.shape[0]))
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = None  # running statistics: the average over the calibration batches
            with torch.no_grad():  # calibrated statistics keep eval-mode outputs off tanh's saturation
                for seed in range(2):
                    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
                    gen.train()(x * 2 - 1)
            kept, added = fac.split(gen.eval())
            entry = {"name": name, "arch": "pix2pix", "factorizer": "piggyback", "dataset": "aligned", "data": "",
                     "direction": "AtoB", "options": opts, "params": {}}
            store.add_task(entry, {f"G/{k}": v for k, v in kept.items()}, {f"G/{k}": v for k, v in added.items()},
                           bank.fingerprint())
            bank = store.load_bank()
    return store


def task_switch_ms(size: int, ngf: int, repeat: int) -> float:
    """Load task 2 from a real model directory and materialize it (CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = store_tasks(Path(tmp), size, ngf)
        return 1000 * time_it(lambda: load_generators(store, get_plugins(), "t2"), repeat, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lam", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"unet_{args.size} ngf {args.ngf}, lambda {args.lam}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, median of {args.repeat}")
    print(f"{'measure':<44}{'value':>12}{'target':>12}")
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        plain = time_it(train_step(unet(args.size, args.ngf).to(device).train(), x), args.repeat, device)
        auto = time_it(train_step(task2(args.size, args.ngf, args.lam, device), x), args.repeat, device)
        dense = time_it(train_step(task2(args.size, args.ngf, args.lam, device, "dense"), x), args.repeat, device)
        target = "<= 0.85" if batch == 1 else "<= 1.00"
        print(f"{'plain train step, batch ' + str(batch) + ' (s)':<44}{plain:>12.3f}{'':>12}")
        print(f"{'piggyback step / plain, batch ' + str(batch):<44}{auto / plain:>12.2f}{target:>12}")
        print(f"{'per-step materialization / plain, batch ' + str(batch):<44}{dense / plain:>12.2f}{'':>12}")
        with torch.no_grad():
            standalone = unet(args.size, args.ngf).to(device).eval()
            materialized = PiggybackFactorizer().materialize(task2(args.size, args.ngf, args.lam, device)).eval()
            t_plain = time_it(lambda: standalone(x), args.repeat, device)
            t_mat = time_it(lambda: materialized(x), args.repeat, device)
        print(f"{'materialized inference / plain, batch ' + str(batch):<44}{t_mat / t_plain:>12.2f}{'1.00':>12}")
    print(f"{'task switch: load + materialize (ms)':<44}{task_switch_ms(args.size, args.ngf, args.repeat):>12.1f}"
          f"{'< 100':>12}")
    ratios = parameter_growth(args.size, args.ngf, args.lam, 10)
    print(f"{'task-2 stored / standalone':<44}{ratios[1]:>12.3f}{'<= 0.30':>12}")
    print(f"{'task-10 stored / standalone':<44}{ratios[9]:>12.3f}{'(0.355)':>12}")
    print("growth over tasks 1..10: " + " ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
