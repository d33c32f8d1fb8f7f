"""How every cost of a later piggyback task grows with the task count t.

    python benchmarks/long_sequence.py computed [--tasks 100] [--at 2 5 10 25 50 75 100]
    python benchmarks/long_sequence.py run [--tasks 12] [--size 32] [--ngf 16] [--steps 50]
                                           [--quality-at 2 10] [--seeds 3] [--bank-limit F] [--out DIR]
    python benchmarks/long_sequence.py costs DIR/model [--at 2 10 25 50 100]
    python benchmarks/long_sequence.py synthetic [--size 128] [--ngf 64] [--at 2 10 25 50 100]

`computed`: from layer shapes alone (meta tensors, the factorizer's own wrap/split/stored_parameters),
per generator and piggyback setting: a task's stored parameters / standalone, the free share of
the largest layer, the bank / standalone, and the first t the setting refuses to train.

`run`: a real sequence on ../shared/data (real tasks interleaved with derived ones), per t: stored
ratio, largest layer's free share, bank size and training time. At the --quality-at points it
also trains the warm full copy of task t (task t-1's generator, exported and imported into a model
of its own, fine-tuned on task t with the same steps and seed) and prints task t's SSIM and PSNR
as ratios to it, for --seeds seeds (each further seed trains task t again on a copy of the model).

`costs`: on the model `run` wrote, per t: loading task t (cold: a new store), its first,
unmaterialized use against a dense forward, a training step of its generator against a plain
generator step (measured in turns), starting task t+1 (choosing its bank rows and fitting its
coefficients) and `pbgan verify` of the first t tasks, per task.

`synthetic`: a sequence grown without training at any size (random coefficients; bank filters made
when read), per t: stored ratio, the largest layer's basis, starting task t, its step against a
plain step and its first use against a dense forward. Layer shapes are what these costs depend on.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbgan_core.cli import main as pbgan
from pbgan_core.bank import LayerBank
from pbgan_core.engine import TrainRequest, bank_for, load_generators, train_task
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore, stored_options
from pbgan_plugins.networks import build_generator
from pbgan_plugins.piggyback import PiggybackConv, PiggybackFactorizer
from pbgan_plugins.verify import verify_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENERATORS = {"32 px, ngf 16": (32, 16), "64 px, ngf 32": (64, 32), "unet_128": (128, 64), "unet_256": (256, 64)}
SETTINGS = {"defaults": {}, "whole bank": {"bank_limit": 0.0},
            "paper": {"allocation": "uniform", "free_last": False, "mix_free": False, "bank_limit": 0.0}}


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


def step_ratio(trainable: torch.nn.Module, size: int, ngf: int, repeat: int) -> float:
    """Training step of a factorized generator / a plain generator's, measured in turns."""
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


def first_use_ratio(gen: torch.nn.Module, size: int, repeat: int) -> float:
    """A factorized generator's forward (computing its filters from the bank rows) / the dense one's."""
    dense = PiggybackFactorizer().materialize(copy.deepcopy(gen)).eval()
    gen.eval()
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        return median_time(lambda: gen(x), repeat) / median_time(lambda: dense(x), repeat)


def request(args, spec: dict, model: Path, factorizer: str = "piggyback", seed: int = 0,
            **options) -> TrainRequest:
    options = {"ngf": args.ngf, "ndf": args.ngf, "max_images": args.max_images, "eval_images": args.eval_images,
               **spec["extra"], **options}
    if factorizer == "piggyback" and args.bank_limit is not None:
        options["bank_limit"] = args.bank_limit
    return TrainRequest(arch="pix2pix", task=spec["task"], data=spec["data"], model_dir=model,
                        direction=spec["direction"], size=args.size, steps=args.steps, dataset=spec["dataset"],
                        factorizer=factorizer, device="cpu", seed=seed, extra=options, loggers=())


def warm_copy(args, spec: dict, previous: dict, before: Path, folder: Path, seed: int) -> dict:
    """Task t as a warm full copy of task t-1's generator (from the model `before` task t), fine-tuned
    on task t with the same steps and seed: its metrics."""
    with contextlib.redirect_stdout(io.StringIO()):  # their reports; the table is what this prints
        assert pbgan(["export", "--task", previous["task"], "--model-dir", str(before), str(folder / "export")]) == 0
        assert pbgan(["import", "--arch", "pix2pix", "--task", previous["task"], "--direction", previous["direction"],
                      "--data", str(previous["data"]), "--model-dir", str(folder / "model"),
                      str(folder / "export" / "latest_net_G.pth")]) == 0
    return train_task(request(args, spec, folder / "model", "standalone", seed, init="warm"),
                      get_plugins(), progress=False)["metrics"]


def quality(args, spec: dict, previous: dict, before: Path, root: Path, mine: dict) -> str:
    """SSIM and PSNR of task t as ratios to a warm full copy, per seed: seed 0 is the sequence's own
    task t; each further seed trains task t again on a copy of the model before it."""
    ratios = {"ssim": [], "psnr": []}
    for seed in range(args.seeds):
        if seed:
            scratch = root / f"seed{seed}-{spec['task']}"
            shutil.copytree(before, scratch)
            mine = train_task(request(args, spec, scratch, seed=seed), get_plugins(), progress=False)["metrics"]
            shutil.rmtree(scratch)
        warm = warm_copy(args, spec, previous, before, root / f"warm{seed}-{spec['task']}", seed)
        for metric in ratios:
            ratios[metric].append(mine[metric] / warm[metric])
    cells = []
    for metric, values in ratios.items():
        mean = statistics.mean(values)
        cells.append(f"{mean:.3f}" + (f" ±{statistics.stdev(values):.3f} (min {min(values):.3f})"
                                      if len(values) > 1 else ""))
    return " / ".join(cells)


def run(args) -> None:
    """Train the sequence; per t: what task t stores and, at --quality-at, its quality."""
    plugins = get_plugins()
    root = Path(args.out or tempfile.mkdtemp(prefix="pbgan-long-"))
    model = root / "model"
    print(f"| t | stored | free (largest) | bank / standalone | train s | SSIM / PSNR to warm copy ({args.seeds} seeds) |"
          "\n|---|---|---|---|---|---|", flush=True)
    previous = None
    for spec in task_sequence(args.tasks):
        t = len(ModelStore(model).tasks) + 1 if model.exists() else 1
        before = root / "before"
        if t in args.quality_at and previous:
            shutil.rmtree(before, ignore_errors=True)
            shutil.copytree(model, before)
        start = time.perf_counter()
        entry = train_task(request(args, spec, model), plugins, progress=False)
        seconds = time.perf_counter() - start
        cell = quality(args, spec, previous, before, root, entry["metrics"]) if t in args.quality_at and previous else "-"
        previous = spec
        params = entry["params"]
        bank = (params["bank_before"] + params["bank_added"]) / params["standalone"]
        gen = load_generators(ModelStore(model), plugins, entry["name"], materialize=False)[1]["G"]
        big = largest_layer(gen)
        print(f"| {t} | {params['stored'] / params['standalone']:.3f} | {big.free_count / big.out_filters:.3f} | "
              f"{bank:.2f} | {seconds:.0f} | {cell} |", flush=True)
    print(f"\nmodel: {model}")


def trainable_copy(store: ModelStore, name: str, size: int, ngf: int) -> torch.nn.Module:
    """Task `name`'s generator wrapped as for training (its own tensors, the bank rows it combines)."""
    plugins = get_plugins()
    entry, factorized = load_generators(store, plugins, name, materialize=False)
    trainable = unet(size, ngf)
    bank = store.load_bank(entry["index"] - 1)
    PiggybackFactorizer().wrap(trainable, bank_for(PiggybackFactorizer(), bank, "G"), stored_options(entry),
                               initialize=False)
    trainable.load_state_dict(factorized["G"].state_dict())
    return trainable


def costs(args) -> None:
    """Per t, on a stored sequence: what task t costs to load, use, train, start and verify."""
    plugins = get_plugins()
    model = args.model
    tasks = ModelStore(model).tasks
    first = stored_options(tasks[0])
    size, ngf = int(first["size"]), int(first["ngf"])
    print("| t | bank / standalone | load s | files read / standalone | first use / dense | step / plain | "
          "start next s | verify s / task |\n|---|---|---|---|---|---|---|---|", flush=True)
    standalone_bytes = 4 * sum(p.numel() for p in unet(size, ngf).parameters())
    for t in args.at:
        entry = tasks[t - 1]
        load = median_time(lambda: load_generators(ModelStore(model), plugins, entry["name"]), args.repeat)
        reading = ModelStore(model)
        read_tensors, read = reading.read_tensors, []
        reading.read_tensors = lambda rel, sha: (read.append((model / rel).stat().st_size), read_tensors(rel, sha))[1]
        load_generators(reading, plugins, entry["name"])
        store = ModelStore(model)
        gen = load_generators(store, plugins, entry["name"], materialize=False)[1]["G"]
        first_use = first_use_ratio(gen, size, args.repeat)
        step = step_ratio(trainable_copy(store, entry["name"], size, ngf), size, ngf, args.repeat)
        # what starting task t+1 costs: choosing its bank rows and fitting its coefficients (the warm start)
        warm = load_generators(store, plugins, entry["name"])[1]["G"]
        state = PiggybackFactorizer().join(*PiggybackFactorizer().split(gen))
        previous = {"state": state, "options": stored_options(entry)}
        bank = bank_for(PiggybackFactorizer(), store.load_bank(t), "G")
        starting = unet(size, ngf)

        def start_next():
            fresh = copy.deepcopy(starting)
            fresh.load_state_dict(warm.state_dict())
            PiggybackFactorizer().wrap(fresh, bank, stored_options(entry), previous=previous)
        start = median_time(start_next, max(1, args.repeat // 2))
        prefix = ModelStore(model)
        prefix.manifest["tasks"] = prefix.manifest["tasks"][:t]
        begun = time.perf_counter()
        assert verify_model(prefix, plugins, lambda name, problems: None) == 0
        verify = (time.perf_counter() - begun) / t
        ratio = ModelStore(model).load_bank(t).size() / sum(p.numel() for p in unet(size, ngf).parameters())
        print(f"| {t} | {ratio:.2f} | {load:.3f} | {sum(read) / standalone_bytes:.2f} | {first_use:.2f} | "
              f"{step:.2f} | {start:.3f} | {verify:.3f} |", flush=True)


def synthetic(args) -> None:
    """Per t, from a sequence grown without training (random coefficients, random bank filters made
    when read): a later task's step against a plain one, its first use, and starting task t."""
    fac = PiggybackFactorizer()
    opts = {} if args.bank_limit is None else {"bank_limit": args.bank_limit}
    first = fac.wrap(unet(args.size, args.ngf), {}, opts)
    # as a file holds them (filter-major and contiguous, as the store reads them back)
    parts: dict[str, list] = {k: [(len(v), (lambda v=v.contiguous(): v))] for k, v in fac.split(first)[1].items()}
    weights = {k: v[0][1]()[0].numel() for k, v in parts.items()}  # per filter
    previous = None
    print("| t | stored | bank / standalone | basis (largest layer) | start s | step / plain | first use / dense |"
          "\n|---|---|---|---|---|---|---|", flush=True)
    standalone = sum(p.numel() for p in unet(args.size, args.ngf).parameters())
    for t in range(2, max(args.at) + 1):
        banks = {k: LayerBank(list(v), tuple(v[0][1]().shape[1:])) for k, v in parts.items()}
        torch.manual_seed(t)
        begun = time.perf_counter()
        gen = fac.wrap(unet(args.size, args.ngf), banks, opts, previous=previous)
        start = time.perf_counter() - begun
        for m in gen.modules():  # trained coefficients: not all zero
            if isinstance(m, PiggybackConv) and m.coef is not None:
                torch.nn.init.normal_(m.coef)
        kept, added = fac.split(gen)
        previous = {"state": fac.join(kept, added), "options": opts}
        for k, v in added.items():  # made again when read: only the rows a task combines are held
            shape, seed = tuple(v.shape), t * 1000 + len(parts[k])
            parts[k].append((shape[0], lambda shape=shape, seed=seed: torch.randn(
                shape, generator=torch.Generator().manual_seed(seed)) * 0.02))
        if t not in args.at:
            continue
        big = largest_layer(gen)
        bank = sum(c * weights[k] for k, v in parts.items() for c, _ in v) / standalone
        print(f"| {t} | {fac.stored_parameters(gen) / standalone:.3f} | {bank:.1f} | {big.coef.shape[0]} | "
              f"{start:.2f} | {step_ratio(gen, args.size, args.ngf, args.repeat):.2f} | "
              f"{first_use_ratio(gen, args.size, args.repeat):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    comp = sub.add_parser("computed")
    comp.add_argument("--tasks", type=int, default=100)
    comp.add_argument("--at", type=int, nargs="+", default=[2, 5, 10, 25, 50, 75, 100])
    real = sub.add_parser("run")
    real.add_argument("--tasks", type=int, default=12)
    real.add_argument("--size", type=int, default=32)
    real.add_argument("--ngf", type=int, default=16)
    real.add_argument("--steps", type=int, default=50)
    real.add_argument("--max-images", type=int, default=64)
    real.add_argument("--eval-images", type=int, default=8)
    real.add_argument("--quality-at", type=int, nargs="*", default=[])
    real.add_argument("--seeds", type=int, default=1, help="seeds for each --quality-at point")
    real.add_argument("--bank-limit", type=float, default=None, help="piggyback --bank-limit (default: its default)")
    real.add_argument("--out", type=Path, default=None)
    cost = sub.add_parser("costs")
    cost.add_argument("model", type=Path, help="a model directory `run` wrote")
    cost.add_argument("--at", type=int, nargs="+", default=[2, 10, 25, 50, 100])
    cost.add_argument("--repeat", type=int, default=5)
    synth = sub.add_parser("synthetic")
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--ngf", type=int, default=64)
    synth.add_argument("--at", type=int, nargs="+", default=[2, 10, 25, 50, 100])
    synth.add_argument("--repeat", type=int, default=5)
    synth.add_argument("--bank-limit", type=float, default=None, help="piggyback --bank-limit (default: its default)")
    args = parser.parse_args()
    torch.manual_seed(0)
    {"computed": computed, "run": run, "costs": costs, "synthetic": synthetic}[args.mode](args)


if __name__ == "__main__":
    main()
