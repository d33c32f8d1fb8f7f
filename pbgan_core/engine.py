"""The lifelong loop: build -> factorize against the bank -> train -> store -> grow the bank
-> evaluate every task so far."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import __version__
from .errors import PbganError
from .interfaces import Architecture
from .options import Option, defaults
from .plugins import Plugins
from .store import ModelStore, check_task_name

DIRECTIONS = ("AtoB", "BtoA")
ENGINE_OPTIONS = (
    Option("init", "warm", "warm: start a later task from the latest task's generator; scratch: fresh weights",
           choices=("warm", "scratch")),
    Option("eval-images", 32, "test images per task used for the metrics after each task (0: all)"),
    Option("num-workers", 0, "data loader worker processes"),
)


@dataclass
class TrainRequest:
    arch: str
    task: str
    data: Path
    model_dir: Path
    direction: str = "AtoB"
    size: int = 256
    steps: int | None = None
    epochs: int | None = None
    epochs_decay: int = 0
    batch_size: int = 1
    factorizer: str = "piggyback"
    dataset: str | None = None
    device: str = "auto"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[int, int, Mapping[str, float]], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PbganError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PbganError(f"unknown --device {name!r}; use auto, cpu or cuda") from None


def option_table(plugins: Plugins, arch: Architecture, factorizer: str, dataset: str) -> list[Option]:
    return [*ENGINE_OPTIONS, *arch.options, *plugins.factorizers.get(factorizer).options,
            *plugins.datasets.get(dataset).options]


def task_options(req: TrainRequest, plugins: Plugins) -> dict[str, Any]:
    arch = plugins.architectures.get(req.arch)
    dataset = req.dataset or arch.default_dataset
    opts = defaults(option_table(plugins, arch, req.factorizer, dataset))
    opts.update(req.extra)
    if req.direction not in DIRECTIONS:
        raise PbganError(f"--direction must be AtoB or BtoA, got {req.direction!r}")
    if req.size < 8 or req.batch_size < 1:
        raise PbganError("--size must be at least 8 and --batch-size at least 1")
    opts.update(size=req.size, direction=req.direction, batch_size=req.batch_size, seed=req.seed, dataset=dataset)
    return opts


def generator_signature(generators: dict[str, nn.Module]) -> dict[str, list[int]]:
    """Layer path -> weight shape: later tasks must build the same convolutions."""
    return {f"{g}/{path}": list(m.weight.shape) for g, gen in generators.items()
            for path, m in gen.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}


def count_parameters(generators: dict[str, nn.Module]) -> int:
    return sum(p.numel() for gen in generators.values() for p in gen.parameters())


def _prefixed(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    lead = f"{name}/"
    return {k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)}


def load_generators(store: ModelStore, plugins: Plugins, name: str,
                    device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Rebuild a stored task as dense, plain generators in eval mode."""
    entry, tensors, new_filters, bank = store.load_task(name)
    if not plugins.factorizers.get(entry["factorizer"]).keeps_old_tasks:
        latest = store.tasks[-1]["name"]
        if latest != name:  # one shared model: every task uses the latest weights
            entry_latest, gens = load_generators(store, plugins, latest, device)
            return entry, gens
    arch = plugins.architectures.get(entry["arch"])
    factorizer = plugins.factorizers.get(entry["factorizer"])
    opts = entry["options"]
    with torch.device("meta"):  # shapes only: every value comes from the task file
        generators = arch.build_generators(opts)
    for gname, gen in generators.items():
        gen.to_empty(device="cpu")
        factorizer.wrap(gen, bank.prefix(len(bank), gname), opts, initialize=False)
        state = factorizer.join(_prefixed(tensors, gname), _prefixed(new_filters, gname))
        try:
            gen.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "mismatch"
            raise PbganError(f"{store.root / entry['file']} does not fit the {entry['arch']} generator "
                             f"({first}); the file is damaged or from another model") from None
        factorizer.materialize(gen)
        gen.to(device).eval()
    return entry, generators


def _loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, workers: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                                       num_workers=workers, generator=g)


def _batches(loader) -> Any:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise PbganError("the training data yielded no batch; check --data and --max-images")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_task(req: TrainRequest, plugins: Plugins, progress: ProgressFn | None = None) -> dict[str, Any]:
    check_task_name(req.task)
    store = ModelStore(req.model_dir)
    if store.has_task(req.task):
        raise PbganError(f"task {req.task!r} exists already in {store.root}; choose another --task name "
                         "or another --model-dir")
    arch = plugins.architectures.get(req.arch)
    factorizer = plugins.factorizers.get(req.factorizer)
    opts = task_options(req, plugins)
    dataset_plugin = plugins.datasets.get(opts["dataset"])
    device = pick_device(req.device)

    with store.lock():
        torch.manual_seed(req.seed)
        train_data = dataset_plugin.build(Path(req.data), "train", opts, train=True)
        if len(train_data) == 0:
            raise PbganError(f"no training images in {req.data}")
        steps_per_epoch = math.ceil(len(train_data) / req.batch_size)
        if req.steps is not None:
            total = req.steps
            opts["decay_start"] = total // 2 if req.epochs_decay else total
        else:
            epochs = req.epochs if req.epochs is not None else 1
            total = (epochs + req.epochs_decay) * steps_per_epoch
            opts["decay_start"] = epochs * steps_per_epoch
        if total < 1:
            raise PbganError("nothing to train: give --steps or --epochs of at least 1")

        generators = arch.build_generators(opts)
        signature = generator_signature(generators)
        standalone = count_parameters(generators)
        if store.tasks:
            first = store.tasks[0]
            if first.get("signature") != signature:
                raise PbganError(f"task {req.task!r} builds a different generator than this model's first task "
                                 f"{first['name']!r} ({first['arch']}, netG {first['options'].get('netG')}, size "
                                 f"{first['options'].get('size')}); use the same architecture options or a new --model-dir")
            if opts["init"] == "warm":
                _, previous = load_generators(store, plugins, store.tasks[-1]["name"])
                for gname, gen in generators.items():
                    gen.load_state_dict(previous[gname].state_dict())
        bank = store.load_bank()
        for gname, gen in generators.items():
            factorizer.wrap(gen, bank.prefix(len(bank), gname), opts)
            gen.to(device).train()
        trainer = arch.build_trainer(generators, opts, device, total)

        started = time.perf_counter()
        losses: dict[str, float] = {}
        loader = _loader(train_data, req.batch_size, True, opts["num_workers"], req.seed)
        for step, batch in zip(range(total), _batches(loader)):
            losses = trainer.step(to_device(batch, device))
            if not all(math.isfinite(v) for v in losses.values()):
                raise PbganError(f"training diverged at step {step + 1} (losses {losses}); lower --lr")
            if progress:
                progress(step + 1, total, losses)
        seconds = time.perf_counter() - started

        task_tensors: dict[str, torch.Tensor] = {}
        new_filters: dict[str, torch.Tensor] = {}
        stored = 0
        for gname, gen in generators.items():
            gen.eval()
            kept, added = factorizer.split(gen)
            stored += factorizer.stored_parameters(gen)
            task_tensors.update({f"{gname}/{k}": v for k, v in kept.items()})
            new_filters.update({f"{gname}/{k}": v for k, v in added.items()})
        json_opts = {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool, type(None)))}
        entry = {
            "name": req.task, "arch": req.arch, "factorizer": req.factorizer, "dataset": opts["dataset"],
            "data": str(req.data), "direction": req.direction, "options": json_opts, "signature": signature,
            "params": {"stored": stored, "standalone": standalone, "bank_before": bank.size(),
                       "bank_added": sum(t.numel() for t in new_filters.values())},
            "train": {"steps": total, "seconds": round(seconds, 3), "final_losses": losses,
                      "device": str(device), "pbgan": __version__},
        }
        store.add_task(entry, task_tensors, new_filters, bank.fingerprint())
        evaluate_all(store, plugins, after=req.task)
    return store.task(req.task)


def test_split(entry: Mapping[str, Any], plugins: Plugins) -> torch.utils.data.Dataset:
    dataset = plugins.datasets.get(entry["dataset"])
    return dataset.build(Path(entry["data"]), "test", entry["options"], train=False)


@torch.no_grad()
def evaluate_task(store: ModelStore, plugins: Plugins, name: str, metric_names=("l1", "psnr", "ssim"),
                  limit: int | None = None) -> dict[str, float]:
    entry, generators = load_generators(store, plugins, name)
    arch = plugins.architectures.get(entry["arch"])
    gen = generators[arch.generator_for(entry["direction"])]
    source, target = ("A", "B") if entry["direction"] == "AtoB" else ("B", "A")
    data = test_split(entry, plugins)
    limit = limit if limit is not None else entry["options"].get("eval_images", 0)
    count = len(data) if not limit else min(limit, len(data))
    metrics = [plugins.metrics.get(m) for m in metric_names]
    sums = {m.name: 0.0 for m in metrics}
    loader = _loader(torch.utils.data.Subset(data, range(count)), 8, False, 0, 0)
    for batch in loader:
        fake = gen(batch[source])
        for m in metrics:
            sums[m.name] += float(m.fn(fake, batch[target]).sum())
    return {k: round(v / max(count, 1), 6) for k, v in sums.items()}


def evaluate_all(store: ModelStore, plugins: Plugins, after: str) -> dict[str, dict[str, float]]:
    """Metrics of every task so far, recorded as one row of the task-by-stage matrix."""
    row = {entry["name"]: evaluate_task(store, plugins, entry["name"]) for entry in store.tasks}
    store.manifest.setdefault("stages", []).append({"after": after, "metrics": row})
    store.task(after)["metrics"] = row[after]
    store.save_manifest()
    return row
