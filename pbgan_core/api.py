"""The Python API: everything the `pbgan` command does, from a notebook or a script.

    import pbgan_core as pbgan                       # or: import pbgan

    pbgan.train("pix2pix", "facades", "../shared/data/facades", model_dir="m", direction="BtoA",
                size=64, steps=200, ngf=32, progress=lambda step, total, losses: None)
    model = pbgan.Model.open("m")
    [t.name for t in model.tasks]                    # tasks in training order, with params and metrics
    photo = model.translate("facades", "labels.png")  # a PIL image (tensors in, tensors out)
    G = model.generator("facades")                   # a plain nn.Module in eval mode
    model.evaluate(metrics=["l1", "psnr", "ssim"])   # {task: {metric: value}}

Every error is a `PbganError` with a one-line message. Options that plugins add to
`pbgan train` (`--ngf`, `--max-images`, `--lambda`, ...) are keyword arguments of `train`
spelled with underscores (`lambda_` for `--lambda`).
"""
from __future__ import annotations

import contextlib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn

from . import distributed
from .engine import (DIRECTIONS, TrainRequest, evaluate_task, load_generators, option_table, pick_device,
                     record_missing_stages, train_task)
from .errors import PbganError, UsageError
from .generate import generate, load_condition, pil_condition, plan_outputs, to_task_size
from .images import to_pil, to_rgb8, write_image
from .options import Option, check_options
from .plugins import Plugins, get_plugins
from .protocol import DEFAULT_PROTOCOL, PROTOCOLS, check_protocol, image_seed, translate
from .report import build_report, forgetting, stage_matrix
from .store import ModelStore, default_model_dir
from .taskcache import DEFAULT_BUDGET, TaskCache

ProgressFn = Callable[[int, int, Mapping[str, float]], None]
ImageLike = torch.Tensor | Image.Image | str | Path


@dataclass(frozen=True)
class Task:
    """One stored task, as listed by `pbgan tasks`."""

    name: str
    index: int
    arch: str
    factorizer: str
    direction: str
    dataset: str
    data: str
    size: int
    options: dict[str, Any] = field(repr=False)
    params: dict[str, int] = field(repr=False)  # stored, standalone, bank_before, bank_added
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ratio_to_standalone(self) -> float:
        """Parameters this task stored, as a share of one standalone generator."""
        return self.params["stored"] / self.params["standalone"]

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> "Task":
        return cls(name=entry["name"], index=entry["index"], arch=entry["arch"], factorizer=entry["factorizer"],
                   direction=entry["direction"], dataset=entry["dataset"], data=entry["data"],
                   size=int(entry["options"]["size"]), options=dict(entry["options"]), params=dict(entry["params"]),
                   metrics=dict(entry.get("metrics") or {}))


def train_options(arch: str, factorizer: str = "piggyback", dataset: str | None = None,
                  derive: str | None = None, plugins: Plugins | None = None) -> tuple[list[Option], str]:
    """The options plugins add to `train` for this combination, and a name for it in messages."""
    plugins = plugins or get_plugins()
    architecture = plugins.architectures.get(arch)
    plugins.factorizers.get(factorizer)
    dataset = dataset or ("derived" if derive else architecture.default_dataset)
    plugins.datasets.get(dataset)
    return (option_table(plugins, architecture, factorizer, dataset),
            f"--arch {arch} --factorizer {factorizer} --dataset {dataset}")


def train_request(arch: str, task: str, data: str | Path | None = None, *, model_dir: str | Path | None = None,
                  direction: str | None = None, size: int = 256, steps: int | None = None,
                  epochs: int | None = None, epochs_decay: int | None = None, batch_size: int = 1,
                  factorizer: str = "piggyback", dataset: str | None = None, derive: str | None = None,
                  device: str = "auto", seed: int = 0, resume: bool = False, checkpoint_every: int = 200,
                  precision: str = "fp32", plugins: Plugins | None = None, **options: Any) -> TrainRequest:
    """Check a training request as `pbgan train` does; `options` are the plugins' options."""
    plugins = plugins or get_plugins()
    table, owner = train_options(arch, factorizer, dataset, derive, plugins)
    extra = check_options(options, table, owner)
    if derive:
        dataset = dataset or "derived"
        extra["derive"] = derive
    known = plugins.manager.hook.default_data(task=task)
    if data is None:
        if known is None:
            raise UsageError(f"--data is required: {task!r} is not a known dataset name (see `pbgan data list`)")
        data = Path(known[0])
        if not data.exists():
            raise PbganError(f"no data for {task!r} in {data}; run `pbgan data download {task}` or pass --data")
    if direction is None:
        direction = known[1] if known else "AtoB"
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction must be AtoB or BtoA, got {direction!r}")
    return TrainRequest(arch=arch, task=task, data=Path(data), model_dir=Path(model_dir or default_model_dir()),
                        direction=direction, size=size, steps=steps, epochs=epochs, epochs_decay=epochs_decay,
                        batch_size=batch_size, factorizer=factorizer, dataset=dataset, device=device, seed=seed,
                        extra=extra, resume=resume, checkpoint_every=checkpoint_every, precision=precision)


def _as_flags(extra: Mapping[str, Any]) -> list[str]:
    """Plugin options as `pbgan train` flags, for the worker processes of a multi-process run."""
    flags = []
    for key, value in extra.items():
        if key == "derive":
            continue
        flag = key.replace("_", "-")
        flags += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return flags


def train(arch: str, task: str, data: str | Path | None = None, *, progress: ProgressFn | None = None,
          nproc: int = 1, **kwargs: Any) -> Task | None:
    """Train a new task of the model in `model_dir` (the first task seeds the filter bank) and
    return it. Takes the options of `pbgan train` as keywords; `progress(step, total, losses)`
    is called after every step. Returns None in the worker processes of a distributed run.

    Keywords as in `pbgan train`: model_dir, direction, size (256), steps, epochs, epochs_decay,
    batch_size (1), factorizer ("piggyback"), dataset, derive, device ("auto"), seed (0), resume,
    checkpoint_every (200), precision ("fp32"), nproc (1); then the plugin options below."""
    plugins = kwargs.pop("plugins", None) or get_plugins()
    request = train_request(arch, task, data, plugins=plugins, **kwargs)
    if nproc != 1:
        code = distributed.launch(nproc, distributed.train_arguments(request, _as_flags(request.extra)))
        if code:
            raise PbganError(f"training with {nproc} processes failed (exit {code}); see the messages above")
        return Task.from_entry(ModelStore(request.model_dir).task(task))
    entry = train_task(request, plugins, progress)
    return Task.from_entry(entry) if entry else None


class Model:
    """A lifelong model directory: its tasks, their generators and metrics.

    Generators of recently used tasks stay in memory (least recently used dropped first once
    they hold more than `cache_bytes`), so switching back to a task is a look-up. The first
    use of a task runs it without materializing its filters: each layer convolves with the
    bank and mixes the results 1x1 where that costs less than building `coef.T @ bank`; the
    second use materializes it into a plain dense generator.
    """

    def __init__(self, store: ModelStore, plugins: Plugins | None = None, cache_bytes: int = DEFAULT_BUDGET):
        self.store = store
        self.plugins = plugins or get_plugins()
        self.cache = TaskCache(cache_bytes)
        self._unmaterialized: set[tuple] = set()  # cache keys whose generator still holds the file's tensors

    @classmethod
    def open(cls, model_dir: str | Path | None = None, *, cache_bytes: int = DEFAULT_BUDGET,
             plugins: Plugins | None = None) -> "Model":
        """Open an existing model directory (default: $PBGAN_MODEL_DIR or ./pbgan-model)."""
        store = ModelStore(model_dir or default_model_dir())
        if not store.exists:
            raise PbganError(f"no pbgan model in {store.root}; train a task first or pass --model-dir")
        return cls(store, plugins, cache_bytes)

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def tasks(self) -> list[Task]:
        """Tasks in training order."""
        return [Task.from_entry(e) for e in self.store.tasks]

    def task(self, name: str) -> Task:
        return Task.from_entry(self.store.task(name))

    # --- generators ---------------------------------------------------------------
    def _resolve(self, task: str, direction: str | None, device: str | torch.device,
                 protocol: str) -> tuple[dict[str, Any], tuple]:
        """The task's entry (with the direction asked for) and its generator's cache key
        (task, generator name, device, protocol)."""
        check_protocol(protocol)
        entry = self.store.task(task)
        direction = direction or entry["direction"]
        if direction not in DIRECTIONS:
            raise UsageError(f"--direction must be AtoB or BtoA, got {direction!r}")
        name = self.plugins.architectures.get(entry["arch"]).generator_for(direction)
        return {**entry, "direction": direction}, (entry["name"], name, str(pick_device(str(device))), protocol)

    def _generator(self, task: str, direction: str | None, device: str | torch.device, protocol: str,
                   lazy: bool | None) -> tuple[dict[str, Any], str, nn.Module]:
        """The task's entry, generator name and generator from the cache, loaded on a miss
        (factorized if `lazy`; None: factorized on first use only), and materialized when a
        factorized one is asked for again without `lazy`."""
        entry, key = self._resolve(task, direction, device, protocol)
        name = key[1]
        gen = self.cache.get(key)
        if lazy is None:
            lazy = gen is None
        if gen is None:
            _, generators = load_generators(self.store, self.plugins, entry["name"], key[2], materialize=not lazy)
            gen = self.cache.put(key, generators[name])
            (self._unmaterialized.add if lazy else self._unmaterialized.discard)(key)
        if not lazy and key in self._unmaterialized:
            self.plugins.factorizers.get(entry["factorizer"]).materialize(gen)
            _own_tensors(gen)
            self.cache.put(key, gen)
            self._unmaterialized.discard(key)
        return entry, name, gen

    def generator(self, task: str, direction: str | None = None, device: str | torch.device = "cpu",
                  protocol: str = DEFAULT_PROTOCOL) -> nn.Module:
        """The task's generator as a plain dense nn.Module on `device` under the test-time
        `protocol`. It is the model's cached instance: deep-copy it before changing it."""
        return self._generator(task, direction, device, protocol, lazy=False)[2]

    @torch.no_grad()
    def translate(self, task: str, image: ImageLike, direction: str | None = None, aligned: bool = False,
                  device: str | torch.device = "cpu", protocol: str = DEFAULT_PROTOCOL) -> torch.Tensor | Image.Image:
        """Run a task on one image: a tensor (3, H, W) or a batch (N, 3, H, W) in [-1, 1] gives a
        tensor back; a PIL image or an image file gives a PIL image (the pixels `pbgan generate`
        writes). Inputs are resized to the task's size; `aligned` takes an A|B file's condition half."""
        entry, gname, gen = self._generator(task, direction, device, protocol, lazy=None)
        size = int(entry["options"]["size"])
        if isinstance(image, torch.Tensor):
            if image.dim() not in (3, 4) or image.shape[-3] != 3:
                raise PbganError(f"translate expects a (3, H, W) or (N, 3, H, W) tensor, got {tuple(image.shape)}")
            x = to_task_size(image, size).to(gen_device(gen))
            seeds = [image_seed(entry["name"], gname, str(i)) for i in range(x.shape[0])]
            out = translate(gen, x, protocol, seeds)
            return out if image.dim() == 4 else out[0]
        if isinstance(image, Image.Image):
            name = "<PIL image>"
            x = pil_condition(to_rgb8(image), size, entry["direction"], aligned, Path(name))
        else:
            name = Path(image).name
            x = load_condition(Path(image), size, entry["direction"], aligned)
        y = translate(gen, x[None].to(gen_device(gen)), protocol, [image_seed(entry["name"], gname, name)])
        return to_pil(y[0])

    def generate(self, task: str, source: str | Path, output: str | Path, direction: str | None = None,
                 aligned: bool = False, device: str | torch.device = "cpu", protocol: str = DEFAULT_PROTOCOL,
                 force: bool = False) -> list[Path]:
        """`pbgan generate`: run a task on an image file or a folder; PNGs with the inputs' base
        names (existing files are kept unless `force`)."""
        if direction is not None and direction not in DIRECTIONS:
            raise UsageError(f"--direction must be AtoB or BtoA, got {direction!r}")
        targets = plan_outputs(Path(source), Path(output), self.root, force)  # before the model is read
        entry, gname, gen = self._generator(task, direction, device, protocol, lazy=False)
        return generate(gen, int(entry["options"]["size"]), entry["direction"], targets, aligned, gen_device(gen),
                        force, protocol, (entry["name"], gname))

    # --- metrics and report -------------------------------------------------------
    def evaluate(self, task: str | None = None, metrics: Sequence[str] = ("l1", "psnr", "ssim"),
                 images: int | None = None, fid_weights: str | Path | None = None,
                 lpips_weights: str | Path | None = None, protocol: str = DEFAULT_PROTOCOL) -> dict[str, dict[str, float]]:
        """Score every task (or one) on its test split now: {task: {metric: value}}. `images`
        test images per task (0: all; default: the task's --eval-images); fid/kid and lpips read
        their weights from `fid_weights` / `lpips_weights` when given."""
        check_protocol(protocol)
        names = self.check_metrics(metrics)
        with metric_weights(fid_weights, lpips_weights):
            chosen = [self.store.task(task)["name"]] if task else [t["name"] for t in self.store.tasks]
            return {name: evaluate_task(self.store, self.plugins, name, names, images, protocol=protocol)
                    for name in chosen}

    def check_metrics(self, metrics: Sequence[str]) -> list[str]:
        """The metric names, each known to a plugin (one-line error otherwise)."""
        names = [m for m in metrics if m]
        if not names:
            raise UsageError("--metrics is empty; give names such as l1,psnr,ssim")
        for name in names:
            self.plugins.metrics.get(name)
        return names

    def record_missing_stages(self) -> list[str]:
        """Compute and store the metrics rows an interrupted training left out; the tasks they follow."""
        return record_missing_stages(self.store, self.plugins)

    def history(self, metric: str = "ssim") -> dict[str, Any]:
        """The task-by-stage matrix recorded while training (values[i][j]: `metric` of task j
        after training task i) and each task's forgetting (positive = got worse)."""
        higher = self.plugins.metrics.get(metric).higher_is_better
        stages = self.store.manifest.get("stages", [])
        tasks, matrix = stage_matrix(stages, metric) if stages else ([], [])
        return {"metric": metric, "higher_is_better": higher, "tasks": tasks,
                "after": [s["after"] for s in stages], "values": matrix,
                "forgetting": dict(zip(tasks, forgetting(matrix, higher)))}

    def report(self, out: str | Path | None = None, metric: str = "ssim", samples: int = 4,
               protocol: str = DEFAULT_PROTOCOL, baseline: str | Path | None = None) -> Path:
        """Write the HTML report (default: MODEL_DIR/report/index.html); its path. `baseline`,
        another model directory with the same task names, adds ratios to its tasks."""
        base = Model.open(baseline).store if baseline is not None else None
        out = Path(out) if out else self.root / "report"
        # a report inside the model directory is written under its lock, like every other write there
        inside = out.resolve().is_relative_to(self.root.resolve())
        with self.store.transaction() if inside else contextlib.nullcontext():
            return build_report(self.store, self.plugins, out, metric, samples, check_protocol(protocol), base)


def _own_tensors(gen: nn.Module) -> None:
    """Give a generator loaded unmaterialized its own copy of every tensor it took from the task
    file (read-only memory), so that it can be changed in place like any module."""
    with torch.no_grad():
        for t in (*gen.parameters(), *gen.buffers()):
            t.data = t.data.clone()


def gen_device(gen: nn.Module) -> torch.device:
    return next(gen.parameters()).device


@contextlib.contextmanager
def metric_weights(fid_weights: str | Path | None, lpips_weights: str | Path | None):
    """Use these weight files for fid/kid and lpips while evaluating."""
    from pbgan_plugins import metrics as metric_plugin

    metric_plugin.configure(fid_weights=fid_weights, lpips_weights=lpips_weights)
    try:
        yield
    finally:
        metric_plugin.configure()


def save_image(image: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write a (3, H, W) tensor in [-1, 1] or a PIL image as PNG, byte for byte as `pbgan generate`."""
    return write_image(image, path)


def _document_train() -> None:
    """Append the installed plugins' options to `train`'s docstring, so help(pbgan.train) lists them."""
    from .optiondocs import options_docstring

    try:
        train.__doc__ = f"{train.__doc__}\n\n{textwrap.indent(options_docstring(get_plugins()), '    ')}"
    except PbganError:  # plugins that cannot load: commands report it, importing the API must not fail
        pass


_document_train()

__all__ = ["Model", "Task", "train", "train_request", "train_options", "save_image", "PROTOCOLS", "PbganError"]
