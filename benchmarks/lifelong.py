"""Lifelong benchmark: one task sequence, every sharing method, same steps and seeds.

    facades (labels -> photo, BtoA) -> edges2shoes (edges -> photo, BtoA) -> facades-gray
    (grayscale facades photo -> colour photo, derived from the photo half A) -> shoes-deblur
    (blurred shoe photo -> sharp photo) -> facades-edges (edge map of a facade photo -> photo)

`--tasks 3` runs the first three only.

Each method trains the whole sequence in its own model directory, as `pbgan run` trains an
experiment file (`pbgan_core.experiment`). One table: final PSNR/SSIM/L1 per task, forgetting, total stored
parameters and their ratio to one standalone generator, and training time relative to the
standalone method (or to piggyback when standalone is not installed). A second table gives each
later task's SSIM, PSNR and stored parameters as ratios to `standalone-warm`, the warm full copy
(`--factorizer standalone --init warm`: a whole generator per task, fine-tuned from the latest),
as the mean over `--seeds` and per seed; a fourth gives every method's stored parameters after
each stage as a multiple of one standalone generator.
A third scores every final task on its held-out split under each test-time protocol (`--protocols`).

    python benchmarks/lifelong.py --size 64 --steps 300 --ngf 32 --eval-images 32
    python benchmarks/lifelong.py --size 32 --ngf 16 --steps 1000 --seeds 0 1 2 \
        --methods standalone-warm,piggyback --protocols eval
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pbgan_core import experiment
from pbgan_core.engine import evaluate_task, probe_task
from pbgan_core.plugins import get_plugins
from pbgan_core.protocol import PROTOCOLS, check_protocol
from pbgan_core.report import forgetting, stage_matrix
from pbgan_core.store import ModelStore

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = tuple(experiment.METHODS)
BASELINE = experiment.BASELINE


def sequence(data: Path) -> list[dict]:
    return [
        dict(name="facades", data=data / "facades", direction="BtoA", dataset="aligned"),
        dict(name="edges2shoes", data=data / "edges2shoes", direction="BtoA", dataset="aligned"),
        dict(name="facades-gray", data=data / "facades", direction="AtoB", derive="grayscale", half="A"),
        dict(name="shoes-deblur", data=data / "edges2shoes", direction="AtoB", derive="blur", blur_sigma=1.0,
             half="A"),
        dict(name="facades-edges", data=data / "facades", direction="AtoB", derive="edges", half="A"),
    ]


def benchmark_experiment(args, methods: list[str], root: Path) -> experiment.Experiment:
    """The sequence as an experiment of `pbgan run`, every task with the benchmark's options."""
    common = {"arch": "pix2pix", "size": args.size, "steps": None if args.epochs is not None else args.steps,
              "epochs": args.epochs, "epochs_decay": args.epochs_decay, "device": args.device, "ngf": args.ngf,
              "ndf": args.ngf, "eval_images": args.eval_images, "max_images": args.max_images,
              **({} if args.bn_images is None else {"bn_images": args.bn_images})}
    tasks = [{**common, **spec} for spec in sequence(args.data)[: args.tasks]]
    return experiment.Experiment(Path(__file__), root, methods, args.seeds, tasks)


def run_method(method: str, args, exp: experiment.Experiment, seed: int) -> dict:
    plugins = get_plugins()
    model_dir = exp.model_dir / (method if len(args.seeds) == 1 else f"{method}-seed{seed}")
    shutil.rmtree(model_dir, ignore_errors=True)
    started = time.perf_counter()
    experiment.train_model(exp, method, seed, model_dir)
    wall = time.perf_counter() - started
    store = ModelStore(model_dir)
    for t in store.tasks:
        print(f"  {method}: {t['name']} done, metrics {t['metrics']}", flush=True)
    stages = store.manifest["stages"]
    final = stages[-1]["metrics"]
    drops = {}
    for metric in ("psnr", "ssim", "l1"):
        tasks, matrix = stage_matrix(stages, metric)
        drops[metric] = dict(zip(tasks, forgetting(matrix, plugins.metrics.get(metric).higher_is_better)))
    by_protocol = {p: {t["name"]: evaluate_task(store, plugins, t["name"], ("psnr", "ssim", "l1"),
                                                  args.eval_images, protocol=p) for t in store.tasks}
                   for p in args.protocols}
    return {
        "method": method, "seed": seed, "final": final, "forgetting": drops, "protocols": by_protocol,
        "stored": sum(t["params"]["stored"] for t in store.tasks),
        "stored_per_task": {t["name"]: t["params"]["stored"] for t in store.tasks},
        "stored_per_stage": [sum(t["params"]["stored"] for t in store.tasks[: k + 1]) for k in range(len(store.tasks))],
        # every task's outputs still bit-identical to those recorded when it was committed
        "unchanged": all(probe_task(store, plugins, t["name"]) == t["probe_sha256"] for t in store.tasks),
        "standalone": store.tasks[0]["params"]["standalone"],
        "train_seconds": sum(t["train"]["seconds"] for t in store.tasks), "wall_seconds": wall,
    }


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["method"] == "standalone"), None) or \
        next((r for r in results if r["method"] == "piggyback"), results[0])
    lines = [f"time ratio is training seconds relative to {base['method']}",
             "| method | task | PSNR | SSIM | L1 | forgetting SSIM | forgetting PSNR | stored params (all tasks) "
             "| x one standalone | time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for k, (task, m) in enumerate(r["final"].items()):
            fs, fp = r["forgetting"]["ssim"][task], r["forgetting"]["psnr"][task]
            tail = (f"{r['stored']:,} | {r['stored'] / r['standalone']:.3f} | "
                    f"{r['train_seconds'] / base['train_seconds']:.2f}") if k == 0 else " | | "
            lines.append(f"| {r['method']} | {task} | {m['psnr']:.3f} | {m['ssim']:.4f} | {m['l1']:.4f} | "
                         f"{'-' if fs is None else f'{fs:+.4f}'} | {'-' if fp is None else f'{fp:+.3f}'} | {tail} |")
    return "\n".join(lines)


def protocol_table(results: list[dict]) -> str:
    """Final metrics on the held-out splits under each test-time protocol, side by side."""
    protocols = list(results[0]["protocols"])
    head = " | ".join(f"{m} {p}" for p in protocols for m in ("PSNR", "SSIM", "L1"))
    lines = [f"| method | task | {head} |", "|---|---|" + "---|" * (3 * len(protocols))]
    for r in results:
        for task in r["final"]:
            cells = " | ".join(f"{r['protocols'][p][task]['psnr']:.3f} | {r['protocols'][p][task]['ssim']:.4f} | "
                               f"{r['protocols'][p][task]['l1']:.4f}" for p in protocols)
            lines.append(f"| {r['method']} | {task} | {cells} |")
    for p in protocols:
        values = [r["protocols"][p][t] for r in results for t in r["final"]]
        means = {m: sum(v[m] for v in values) / len(values) for m in ("psnr", "ssim", "l1")}
        lines.append(f"mean over all rows, {p}: PSNR {means['psnr']:.3f}, SSIM {means['ssim']:.4f}, "
                     f"L1 {means['l1']:.4f}")
    return "\n".join(lines)


def ratio_table(results: list[dict]) -> str:
    """Each later task's final quality and stored parameters as ratios to the warm full copy's:
    mean over seeds (ratio of the means) and per seed (ratio to the warm copy of the same seed)."""
    base = [r for r in results if r["method"] == BASELINE]
    if not base:
        return f"(no ratio table: {BASELINE} was not run)"
    seeds = sorted({r["seed"] for r in results})
    by_seed = {r["seed"]: r for r in base}

    def mean(rows, task, metric):
        return statistics.fmean(r["final"][task][metric] for r in rows)

    lines = [f"later tasks against {BASELINE} (the warm full copy), same steps and seeds {seeds}",
             "| method | task | SSIM ratio | PSNR ratio | SSIM ratio per seed | PSNR ratio per seed "
             "| stored params ratio | forgetting (max over seeds) | bit-identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        for task in list(rows[0]["final"])[1:]:
            per = {m: " ".join(f"{r['final'][task][m] / by_seed[r['seed']]['final'][task][m]:.3f}"
                               for r in rows if r["seed"] in by_seed) for m in ("ssim", "psnr")}
            stored = rows[0]["stored_per_task"][task] / base[0]["stored_per_task"][task]
            drops = [abs(r["forgetting"][m][task] or 0.0) for r in rows for m in ("ssim", "psnr", "l1")]
            lines.append(f"| {method} | {task} | {mean(rows, task, 'ssim') / mean(base, task, 'ssim'):.3f} | "
                         f"{mean(rows, task, 'psnr') / mean(base, task, 'psnr'):.3f} | {per['ssim']} | {per['psnr']} | "
                         f"{stored:.3f} | {max(drops):.4f} | {'yes' if all(r['unchanged'] for r in rows) else 'NO'} |")
    return "\n".join(lines)


def stage_table(results: list[dict]) -> str:
    """Stored parameters of the whole model after each stage, as a multiple of one standalone generator."""
    first = {}
    for r in results:
        first.setdefault(r["method"], r)
    tasks = list(next(iter(first.values()))["final"])
    lines = ["stored parameters after each stage, x one standalone generator",
             "| method | " + " | ".join(f"after {t}" for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method, r in first.items():
        lines.append(f"| {method} | " + " | ".join(f"{s / r['standalone']:.3f}" for s in r["stored_per_stage"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="training steps per task, every method")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train every task for --epochs at the initial learning rate, then --epochs-decay "
                             "with the rate falling linearly, as the reference's schedule (instead of --steps at a "
                             "constant rate)")
    parser.add_argument("--epochs-decay", type=int, default=None, help="with --epochs (default: --epochs)")
    parser.add_argument("--ngf", type=int, default=32, help="generator and discriminator width")
    parser.add_argument("--bn-images", type=int, default=None,
                        help="as `pbgan train --bn-images`: training images the BatchNorm statistics are "
                             "recomputed from after each task (0: keep the moving averages; default: pbgan's)")
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=0, help="training images per task (0: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None, help="model directories [default: a temp folder]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of the sequence per seed")
    parser.add_argument("--tasks", type=int, default=5, choices=(2, 3, 4, 5), help="length of the task sequence")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results here; results already in it are kept and not rerun")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="test-time protocols of the final scores")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs_decay is None:
        args.epochs_decay = args.epochs
    args.protocols = [check_protocol(p.strip()) for p in args.protocols.split(",") if p.strip()]

    registered = get_plugins().factorizers
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = [m for m in wanted if experiment.METHODS.get(m, {}).get("factorizer") in registered]
    skipped = [m for m in wanted if m not in methods]
    if skipped:
        print(f"skipped (not installed): {', '.join(skipped)}")
    if not methods:
        raise SystemExit("no requested method is installed; see `pbgan list-plugins`")
    exp = benchmark_experiment(args, methods, args.out or Path(tempfile.mkdtemp(prefix="pbgan-bench-")))
    # a --json file from an earlier run with the same settings: its results are kept, not rerun
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    done = {(r["method"], r.get("seed", 0)) for r in results}
    for seed in args.seeds:
        for method in methods:
            if (method, seed) in done:
                continue
            results.append(run_method(method, args, exp, seed))
            if args.json:  # after every run, so a long benchmark keeps what it finished
                args.json.write_text(json.dumps(results, indent=2))
    results = [r for r in results if r["seed"] in args.seeds and r["method"] in methods]
    print(f"seed {args.seeds[0]}:")
    print(table([r for r in results if r["seed"] == args.seeds[0]]))
    print()
    print(stage_table(results))
    print()
    print(ratio_table(results))
    print()
    print(protocol_table([r for r in results if r["seed"] == args.seeds[0]]))


if __name__ == "__main__":
    main()
