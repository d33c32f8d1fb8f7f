"""How every cost of a later piggyback task grows with the task count t.

    python benchmarks/long_sequence.py computed [--tasks 100] [--at 2 5 10 25 50 75 100]
    python benchmarks/long_sequence.py run [--tasks 12] [--size 32] [--ngf 16] [--steps 50] [--at 2 5 10]
                                           [--quality-at 2 10] [--bank-limit F]

`computed`: from layer shapes alone (meta tensors, the factorizer's own wrap/split/stored_parameters),
per generator and piggyback setting: a task's stored parameters / standalone, the free share of
the largest layer, the bank / standalone, and the first t the setting refuses to train.

`run`: a real sequence on ../shared/data (real tasks interleaved with derived ones), per t: stored
ratio, largest layer's free share, bank size, a training step of task t's generator against a
plain generator step measured in turns in the same run, loading task t (cold: a new store),
its first, unmaterialized use against a dense forward, and verifying the first t tasks. At the
--quality-at points it also trains the warm full copy of task t (task t-1's generator, exported and
imported into a model of its own, fine-tuned on task t with the same steps and seed) and prints
task t's SSIM and PSNR as ratios to it.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbgan_core.cli import main as pbgan
from pbgan_core.engine import TrainRequest, load_generators, train_task
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import build_generator
from pbgan_plugins.piggyback import PiggybackConv, PiggybackFactorizer
from pbgan_plugins.verify import verify_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENERATORS = {"32 px, ngf 16": (32, 16), "64 px, ngf 32": (64, 32), "unet_128": (128, 64), "unet_256": (256, 64)}
SETTINGS = {"defaults": {}, "bank-limit 1": {"bank_limit": 1.0},
            "paper": {"allocation": "uniform", "free_last": False, "mix_free": False}}


def unet(size: int, ngf: int) -> torch.nn.Module:
    return build_generator("auto", 3, 3, ngf, "batch", True, size, "transpose")


def largest_layer(gen: torch.nn.Module) -> PiggybackConv:
    layers = [m for m in gen.modules() if isinstance(m, PiggybackConv)]
    return max(layers, key=lambda m: m.free.numel() / max(m.free_count, 1) * m.out_filters)


def computed_growth(size: int, ngf: int, opts: dict, tasks: int) -> list[dict]:
    """Per t = 2..tasks, what task t stores, from shapes only; stops at the first refused t."""
    fac = PiggybackFactorizer()
    with torch.device("meta"):
        first = unet(size, ngf)
        standalone = sum(p.numel() for p in first.parameters())
        fac.wrap(first, {}, opts, initialize=False)
    bank = fac.split(first)[1]
    rows = []
    for t in range(2, tasks + 1):
        try:
            with torch.device("meta"):
                gen = fac.wrap(unet(size, ngf), bank, opts, initialize=False)
        except PbganError as exc:
            rows.append({"t": t, "refused": str(exc)})
            break
        big = largest_layer(gen)
        _, added = fac.split(gen)
        bank = {k: torch.cat([bank[k], v]) for k, v in added.items()}
        rows.append({"t": t, "stored": fac.stored_parameters(gen) / standalone,
                     "free": big.free_count / big.out_filters,
                     "bank": sum(v.numel() for v in bank.values()) / standalone})
    return rows


def computed(args) -> None:
    print(f"| generator | setting | {' | '.join(f't={t}' for t in args.at)} | refused at |")
    print(f"|---|---|{'---|' * len(args.at)}---|")
    for gname, (size, ngf) in GENERATORS.items():
        for sname, opts in SETTINGS.items():
            rows = {r["t"]: r for r in computed_growth(size, ngf, opts, args.tasks)}
            refused = next((t for t, r in rows.items() if "refused" in r), None)
            cells = [f"{rows[t]['stored']:.3f} / {rows[t]['free']:.3f} / {rows[t]['bank']:.1f}x"
                     if t in rows and "refused" not in rows[t] else "-" for t in args.at]
            print(f"| {gname} | {sname} | {' | '.join(cells)} | {refused or 'never'} |")
    print("\ncells: stored / standalone, free share of the largest layer, bank / standalone")


def task_sequence(count: int) -> list[dict]:
    """Real tasks interleaved with cheap derived ones, repeated with fresh names."""
    facades, shoes = DATA / "facades", DATA / "edges2shoes"
    kinds = [
        dict(data=facades, direction="BtoA", dataset="aligned", extra={}),
        dict(data=shoes, direction="BtoA", dataset="aligned", extra={}),
        dict(data=facades, direction="AtoB", dataset="derived", extra={"derive": "grayscale", "half": "A"}),
        dict(data=shoes, direction="AtoB", dataset="derived", extra={"derive": "blur", "half": "A"}),
        dict(data=facades, direction="AtoB", dataset="derived", extra={"derive": "negative", "half": "A"}),
        dict(data=shoes, direction="AtoB", dataset="derived", extra={"derive": "dark", "half": "A"}),
    ]
    return [dict(kinds[i % len(kinds)], task=f"t{i + 1:03d}") for i in range(count)]


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_ratio(store: ModelStore, name: str, size: int, ngf: int, repeat: int) -> float:
    """Training step of task `name`'s factorized generator / a plain generator's, in turns."""
    plugins = get_plugins()
    entry, factorized = load_generators(store, plugins, name, materialize=False)
    gen = factorized["G"]
    # a trainable copy: the loaded layers share the stored tensors
    trainable = unet(size, ngf)
    bank = store.load_bank(entry["index"] - 1).prefix(entry["index"] - 1, "G")
    PiggybackFactorizer().wrap(trainable, bank, entry["options"], initialize=False)
    trainable.load_state_dict(gen.state_dict())
    plain = unet(size, ngf)
    x = torch.rand(1, 3, size, size) * 2 - 1

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            model(x).abs().mean().backward()
            opt.step()
        return run

    runs = {"piggy": step(trainable.train(), torch.optim.Adam(trainable.parameters())),
            "plain": step(plain.train(), torch.optim.Adam(plain.parameters()))}
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeat):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times["piggy"]) / statistics.median(times["plain"])


def request(args, spec: dict, model: Path, factorizer: str = "piggyback", **options) -> TrainRequest:
    options = {"ngf": args.ngf, "ndf": args.ngf, "max_images": args.max_images, "eval_images": args.eval_images,
               **spec["extra"], **options}
    if factorizer == "piggyback" and args.bank_limit is not None:
        options["bank_limit"] = args.bank_limit
    return TrainRequest(arch="pix2pix", task=spec["task"], data=spec["data"], model_dir=model,
                        direction=spec["direction"], size=args.size, steps=args.steps, dataset=spec["dataset"],
                        factorizer=factorizer, device="cpu", seed=0, extra=options)


def warm_copy_ratios(args, spec: dict, previous: dict, model: Path, root: Path, mine: dict) -> str:
    """Task t as a warm full copy of task t-1's generator: ratios of task t's SSIM and PSNR to it."""
    folder = root / f"warm-{spec['task']}"
    assert pbgan(["export", "--task", previous["task"], "--model-dir", str(model), str(folder / "export")]) == 0
    assert pbgan(["import", "--arch", "pix2pix", "--task", previous["task"], "--direction", previous["direction"],
                  "--data", str(previous["data"]), "--model-dir", str(folder / "model"),
                  str(folder / "export" / "latest_net_G.pth")]) == 0
    warm = train_task(request(args, spec, folder / "model", "standalone", init="warm"), get_plugins())
    return " / ".join(f"{mine[m] / warm['metrics'][m]:.3f}" for m in ("ssim", "psnr"))


def run(args) -> None:
    plugins = get_plugins()
    root = Path(args.out or tempfile.mkdtemp(prefix="pbgan-long-"))
    model = root / "model"
    at = set(args.at)
    print("| t | stored | free (largest) | bank / standalone | step / plain | load s | first use / dense | "
          "verify t tasks s | SSIM / PSNR to warm copy |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    previous = None
    for spec in task_sequence(args.tasks):
        entry = train_task(request(args, spec, model), plugins)
        t, before, previous = entry["index"], previous, spec
        if t not in at and t not in args.quality_at:
            continue
        quality = (warm_copy_ratios(args, spec, before, model, root, entry["metrics"])
                   if t in args.quality_at and before else "-")
        store = ModelStore(model)
        params = entry["params"]
        bank = store.load_bank()
        _, factorized = load_generators(store, plugins, entry["name"], materialize=False)
        big = largest_layer(factorized["G"])
        x = torch.rand(1, 3, args.size, args.size) * 2 - 1
        _, dense = load_generators(store, plugins, entry["name"])
        with torch.no_grad():
            first_use = median_time(lambda: factorized["G"](x), args.repeat)
            dense_forward = median_time(lambda: dense["G"](x), args.repeat)
        load = median_time(lambda: load_generators(ModelStore(model), plugins, entry["name"]), args.repeat)
        single = ModelStore(model)
        single.manifest["tasks"] = single.manifest["tasks"][: t]
        verify = median_time(lambda: verify_model(single, plugins, lambda name, problems: None), 1)
        print(f"| {t} | {params['stored'] / params['standalone']:.3f} | {big.free_count / big.out_filters:.3f} | "
              f"{bank.size() / params['standalone']:.2f} | "
              f"{step_ratio(store, entry['name'], args.size, args.ngf, args.repeat):.2f} | {load:.2f} | "
              f"{first_use / dense_forward:.2f} | {verify:.1f} | {quality} |", flush=True)
    print(f"\nmodel: {model}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    comp = sub.add_parser("computed")
    comp.add_argument("--tasks", type=int, default=100)
    comp.add_argument("--at", type=int, nargs="+", default=[2, 5, 10, 25, 50, 75, 100])
    real = sub.add_parser("run")
    real.add_argument("--tasks", type=int, default=12)
    real.add_argument("--at", type=int, nargs="+", default=[2, 5, 10])
    real.add_argument("--size", type=int, default=32)
    real.add_argument("--ngf", type=int, default=16)
    real.add_argument("--steps", type=int, default=50)
    real.add_argument("--max-images", type=int, default=64)
    real.add_argument("--eval-images", type=int, default=8)
    real.add_argument("--repeat", type=int, default=5)
    real.add_argument("--quality-at", type=int, nargs="*", default=[])
    real.add_argument("--bank-limit", type=float, default=None, help="piggyback --bank-limit (default: its default)")
    real.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    (computed if args.mode == "computed" else run)(args)


if __name__ == "__main__":
    main()
