"""Piggyback cost against the plain generator, measured in one run.

    python benchmarks/piggyback_speed.py [--sizes 64 128] [--ngfs 32 64] [--batches 1 4] [--repeat 5]

One row per size x ngf x batch (ratios to the plain, standalone unet generator measured in the
same run, in turns with it):
  train step     piggyback task 2 (auto path per layer) / plain, and the per-step
                 materialization path (dense coef.T @ bank in every layer) beside it
  inference      materialized task 2 / plain
Then, for the largest size and ngf:
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


UPSAMPLE = "transpose"  # --upsample


def unet(size: int, ngf: int) -> torch.nn.Module:
    return init_weights(build_generator("auto", 3, 3, ngf, "batch", True, size, UPSAMPLE))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def once(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_it(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    sync(device)
    return statistics.median(once(fn, device) for _ in range(repeat))


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
    PiggybackFactorizer().wrap(gen, bank, {"lambda": lam, "allocation": "uniform"}, initialize=False)
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
            fac.wrap(gen, bank, {"lambda": lam, "allocation": "uniform"}, initialize=False)
        ratios.append(fac.stored_parameters(gen) / standalone)
        _, added = fac.split(gen)
        bank = {k: torch.cat([bank[k], v]) if k in bank else v for k, v in added.items()}
    return ratios


def store_tasks(root: Path, size: int, ngf: int, names=("t1", "t2"), lam: float = 0.25) -> ModelStore:
    """A model directory of unet tasks with random weights, stored as training stores them."""
    fac = PiggybackFactorizer()
    opts = {"netG": "auto", "size": size, "ngf": ngf, "norm": "batch", "no_dropout": False, "init_type": "normal",
            "lambda": lam, "allocation": "uniform"}
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


def interleaved_steps(size: int, ngf: int, batch: int, lam: float, repeat: int,
                      device: torch.device) -> dict[str, float]:
    """Train-step time of plain, piggyback (auto path) and per-step materialization, run in turns
    so that a busy machine slows all three alike; ratios are medians of the per-turn ratios."""
    x = torch.randn(batch, 3, size, size, device=device)
    steps = {"plain": train_step(unet(size, ngf).to(device).train(), x),
             "auto": train_step(task2(size, ngf, lam, device), x),
             "dense": train_step(task2(size, ngf, lam, device, "dense"), x)}
    for step in steps.values():
        step()  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            seconds[name].append(once(step, device))
    ratio = {k: statistics.median(a / b for a, b in zip(seconds[k], seconds["plain"])) for k in ("auto", "dense")}
    return {"plain": statistics.median(seconds["plain"]), **ratio}


def inference_ratio(size: int, ngf: int, batch: int, lam: float, repeat: int, device: torch.device) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        standalone = unet(size, ngf).to(device).eval()
        materialized = PiggybackFactorizer().materialize(task2(size, ngf, lam, device)).eval()
        return time_it(lambda: materialized(x), repeat, device) / time_it(lambda: standalone(x), repeat, device)


def layer_paths(size: int, ngf: int, batch: int, lam: float, repeat: int) -> None:
    """Per piggyback layer of task 2: forward + backward time of the bank and the dense path
    (best of `repeat`, in turns) and the path the layer's cost model picks."""
    gen = task2(size, ngf, lam, torch.device("cpu"))
    layers = [m for m in gen.modules() if isinstance(m, PiggybackConv) and m.coef is not None]
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, args, out: inputs.__setitem__(m, args[0].detach())) for m in layers]
    gen(torch.randn(batch, 3, size, size))
    for h in hooks:
        h.remove()
    print(f"unet_{size} ngf {ngf} batch {batch}: layer input, bank ms, dense ms, chosen")
    for m in layers:
        x, best, chosen = inputs[m].requires_grad_(True), {}, m._bank_path_is_cheaper(inputs[m])
        for path in ("bank", "dense") * repeat:
            m._bank_path_is_cheaper = lambda x, bank=path == "bank": bank
            m.zero_grad(set_to_none=True)
            best[path] = min(best.get(path, math.inf), once(lambda: m(x).sum().backward(), torch.device("cpu")))
        del m._bank_path_is_cheaper  # back to the cost model
        kind = "convT" if m.transposed else "conv"
        print(f"  {kind} {m.bank.shape[1]}->{m.out_filters} on {tuple(x.shape)}: {best['bank'] * 1e3:8.2f} "
              f"{best['dense'] * 1e3:8.2f}  {'bank' if chosen else 'dense'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--ngfs", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lam", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--upsample", default="transpose", choices=("transpose", "resize"), help="U-Net upsampling")
    ap.add_argument("--layers", action="store_true", help="per-layer times of the two piggyback paths instead")
    ap.add_argument("--no-extras", action="store_true", help="train steps only (no inference, task switch, "
                    "parameter rows)")
    args = ap.parse_args()
    device = torch.device(args.device)
    global UPSAMPLE
    UPSAMPLE = args.upsample
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.layers:
        for size in args.sizes:
            for ngf in args.ngfs:
                for batch in args.batches:
                    layer_paths(size, ngf, batch, args.lam, args.repeat)
        return
    print(f"unet (auto depth, batch norm, {args.upsample} upsampling), lambda {args.lam}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, median of {args.repeat} interleaved turns")
    print("| size | ngf | batch | plain step (s) | piggyback / plain | per-step materialization / plain |"
          + ("" if args.no_extras else " materialized inference / plain |"))
    print("|---|---|---|---|---|---|" + ("" if args.no_extras else "---|"))
    worst = 0.0
    for size in args.sizes:
        for ngf in args.ngfs:
            for batch in args.batches:
                t = interleaved_steps(size, ngf, batch, args.lam, args.repeat, device)
                worst = max(worst, t["auto"])
                row = f"| {size} | {ngf} | {batch} | {t['plain']:.3f} | **{t['auto']:.2f}** | {t['dense']:.2f} |"
                if not args.no_extras:
                    row += f" {inference_ratio(size, ngf, batch, args.lam, args.repeat, device):.2f} |"
                print(row, flush=True)
    print(f"largest piggyback / plain: {worst:.2f} (target <= 1.00)")
    if args.no_extras:
        return
    size, ngf = max(args.sizes), max(args.ngfs)
    print(f"unet_{size} ngf {ngf}:")
    print(f"{'task switch: load + materialize (ms)':<44}{task_switch_ms(size, ngf, args.repeat):>12.1f}{'< 100':>12}")
    ratios = parameter_growth(size, ngf, args.lam, 10)
    print(f"{'task-2 stored / standalone':<44}{ratios[1]:>12.3f}{'<= 0.30':>12}")
    print(f"{'task-10 stored / standalone':<44}{ratios[9]:>12.3f}{'(0.355)':>12}")
    print("growth over tasks 1..10: " + " ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
