"""New-task quality: how well each variant learns a later task, as a ratio to the warm full copy.

Task 1 (facades labels -> photo) is trained once into a model directory; every variant then
trains task 2 (edges2shoes edges -> photo) from a copy of that directory, so all of them start
from the same task-1 model. The baseline is the warm full copy: a whole generator started
from task 1 and fine-tuned on task 2 (`--factorizer standalone --init warm`), measured in
the same run, with the same steps and seeds.

A variant is NAME=FACTORIZER[,option=value...] (option names as in `pbgan train`, with
underscores), e.g. `pb-c100=piggyback,coef_scale=100`. The extra option `warmup=N` first trains
task 2 unconstrained for N steps (a warm full copy, stored as a task of its own), then trains the
variant for the remaining steps starting from it: piggyback then fits its coefficients to the
warmed-up filters by least squares (train unconstrained, factorize onto the bank, fine-tune).

    python benchmarks/new_task_quality.py --size 32 --ngf 16 --steps 300 --seeds 0 1 2 \
        --variant warm=standalone,init=warm --variant piggyback=piggyback
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from pbgan_core.engine import TrainRequest, probe_task, train_task
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BASELINE = "warm=standalone,init=warm"
TASK1 = dict(task="facades", folder="facades", direction="BtoA")
TASK2 = dict(task="edges2shoes", folder="edges2shoes", direction="BtoA")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_variant(spec: str) -> tuple[str, str, dict]:
    name, _, rest = spec.partition("=")
    factorizer, *pairs = rest.split(",")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    return name.strip(), factorizer.strip(), options


def train(args, model_dir: Path, spec: dict, factorizer: str, seed: int, extra: dict, steps: int = 0) -> dict:
    torch.manual_seed(seed)
    common = {"ngf": args.ngf, "ndf": args.ngf, "eval_images": args.eval_images, "max_images": args.max_images}
    request = TrainRequest(arch="pix2pix", task=spec["task"], data=args.data / spec["folder"], model_dir=model_dir,
                           direction=spec["direction"], size=args.size, steps=steps or args.steps,
                           factorizer=factorizer, dataset="aligned", device=args.device, seed=seed,
                           extra={**common, **extra})
    return train_task(request, get_plugins())


def run_variant(args, first: Path, root: Path, name: str, factorizer: str, extra: dict, seed: int) -> dict:
    model_dir = root / f"{name}-seed{seed}"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(first, model_dir)
    plugins = get_plugins()
    before = probe_task(ModelStore(model_dir), plugins, TASK1["task"])
    extra = dict(extra)
    warmup = int(extra.pop("warmup", 0))
    if warmup:
        train(args, model_dir, {**TASK2, "task": "warmup"}, "standalone", seed, {"init": "warm"}, warmup)
        extra["init"] = "warm"
    entry = train(args, model_dir, TASK2, factorizer, seed, extra, args.steps - warmup)
    after = probe_task(ModelStore(model_dir), plugins, TASK1["task"])
    return {"variant": name, "seed": seed, "metrics": entry["metrics"], "stored": entry["params"]["stored"],
            "standalone": entry["params"]["standalone"], "task1_unchanged": before == after,
            "seconds": entry["train"]["seconds"]}


def table(results: list[dict], baseline: str) -> str:
    names = list(dict.fromkeys(r["variant"] for r in results))
    by = {n: [r for r in results if r["variant"] == n] for n in names}

    def mean(rows, key):
        return statistics.fmean(r["metrics"][key] for r in rows)

    base_ssim, base_psnr = mean(by[baseline], "ssim"), mean(by[baseline], "psnr")
    base_stored = by[baseline][0]["stored"]
    lines = [f"task 2 quality, mean over seeds {sorted({r['seed'] for r in results})}; ratios to {baseline}",
             "| variant | SSIM | PSNR | SSIM ratio | PSNR ratio | SSIM ratio per seed | stored / warm copy "
             "| task 1 unchanged |",
             "|---|---|---|---|---|---|---|---|"]
    for n in names:
        rows = by[n]
        ssim, psnr = mean(rows, "ssim"), mean(rows, "psnr")
        base_by_seed = {r["seed"]: r["metrics"]["ssim"] for r in by[baseline]}
        per_seed = " ".join(f"{r['metrics']['ssim'] / base_by_seed[r['seed']]:.3f}" for r in rows
                            if r["seed"] in base_by_seed)
        lines.append(f"| {n} | {ssim:.4f} | {psnr:.3f} | {ssim / base_ssim:.3f} | {psnr / base_psnr:.3f} | "
                     f"{per_seed} | {rows[0]['stored'] / base_stored:.3f} | "
                     f"{'yes' if all(r['task1_unchanged'] for r in rows) else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each task")
    parser.add_argument("--ngf", type=int, default=16, help="generator and discriminator width")
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=0, help="training images per task (0: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="task-2 seeds (task 1 uses the first)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=FACTORIZER[,option=value...]; the baseline is always added first")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None, help="model directories [default: a temp folder]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reuse-task1", action="store_true",
                        help="keep the task-1 model already in --out (trained with the same settings)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results here; results already in it are kept and not rerun")
    args = parser.parse_args()

    variants = [parse_variant(v) for v in [BASELINE, *(args.variant or ["piggyback=piggyback"])]]
    root = args.out or Path(tempfile.mkdtemp(prefix="pbgan-newtask-"))
    first = root / "task1"
    if not (args.reuse_task1 and ModelStore(first).exists and ModelStore(first).has_task(TASK1["task"])):
        shutil.rmtree(first, ignore_errors=True)
        train(args, first, TASK1, "piggyback", args.seeds[0], {})
    # a --json file from an earlier run with the same settings: its results are kept, not rerun
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    done = {(r["variant"], r["seed"]) for r in results}
    for seed in args.seeds:
        for name, factorizer, extra in variants:
            if (name, seed) in done:
                continue
            results.append(run_variant(args, first, root, name, factorizer, extra, seed))
            r = results[-1]
            print(f"  {name} seed {seed}: ssim {r['metrics']['ssim']:.4f} psnr {r['metrics']['psnr']:.3f} "
                  f"({r['seconds']:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print(table(results, variants[0][0]))


if __name__ == "__main__":
    main()
