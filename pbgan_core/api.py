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
import copy
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import distributed
from .checks import NPROC, as_path, check_request
from .console import training_progress
from .engine import (DIRECTIONS, TrainRequest, evaluate_task, load_generators, option_table, pick_device,
                     record_missing_stages, train_task)
from .errors import PbganError, UsageError
from .generate import generate, load_condition, pil_condition, plan_outputs, to_task_size
from .images import to_pil, to_rgb8, write_image
from .options import Option, check_options
from .plugins import Plugins, get_plugins
from .protocol import DEFAULT_PROTOCOL, PROTOCOLS, check_protocol, image_seed, translate
from .report import build_report, check_report_folder, forgetting, stage_matrix
from .store import ModelStore, default_model_dir
from .taskcache import DEFAULT_BUDGET, TaskCache

ProgressFn = Callable[[int, int, Mapping[str, float]], None]
ImageLike = torch.Tensor | np.ndarray | Image.Image | str | Path
CACHE_BYTES = Option("cache-bytes", DEFAULT_BUDGET, min=0)
EVAL_IMAGES = Option("images", None, type=int, min=0)
SAMPLES = Option("samples", 4, min=1)


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


def model_arch(arch: str | None, model_dir: str | Path | None) -> str:
    """The architecture asked for, else the model's: later tasks inherit it from the first."""
    if arch is not None:
        return arch
    store = ModelStore(model_dir or default_model_dir())
    if not store.tasks:
        raise UsageError(f"--arch is required for the first task of a model ({store.root} has no task yet)")
    return store.tasks[0]["arch"]


def train_request(arch: str | None, task: str, data: str | Path | None = None, *,
                  model_dir: str | Path | None = None, direction: str | None = None, size: int | None = None,
                  steps: int | None = None, epochs: int | None = None, epochs_decay: int | None = None,
                  batch_size: int = 1,
                  factorizer: str = "piggyback", dataset: str | None = None, derive: str | None = None,
                  device: str = "auto", seed: int = 0, resume: bool = False, checkpoint_every: int = 200,
                  precision: str = "fp32", loggers: Sequence[str] = (), log_every: int = 10, sample_every: int = 0,
                  plugins: Plugins | None = None, **options: Any) -> TrainRequest:
    """Check a training request as `pbgan train` does; `options` are the plugins' options. Options
    not given (None, or absent) that shape the generator come from the model's first task."""
    plugins = plugins or get_plugins()
    arch = model_arch(arch, model_dir)
    table, owner = train_options(arch, factorizer, dataset, derive, plugins)
    extra = check_options({**options, **({"derive": derive} if derive else {})}, table, owner)
    if derive:
        dataset = dataset or "derived"
    known = plugins.manager.hook.default_data(task=task)
    if data is None:
        if known is None:
            raise UsageError(f"--data is required: {task!r} is not a known dataset name (see `pbgan data list`)")
        data = Path(known[0])
        if not data.exists():
            raise PbganError(f"no data for {task!r} in {data}; run `pbgan data download {task}` or pass --data")
    if direction is None:
        direction = known[1] if known else "AtoB"
    model_dir = as_path(model_dir, "--model-dir") if model_dir is not None else default_model_dir()
    device = str(device) if isinstance(device, torch.device) else device
    return check_request(TrainRequest(
        arch=arch, task=task, data=as_path(data, "--data"), model_dir=model_dir, direction=direction, size=size,
        steps=steps, epochs=epochs, epochs_decay=epochs_decay, batch_size=batch_size, factorizer=factorizer,
        dataset=dataset, device=device, seed=seed, extra=extra, resume=resume, checkpoint_every=checkpoint_every,
        precision=precision, loggers=logger_names(loggers, plugins), log_every=log_every, sample_every=sample_every))


def logger_names(names: Sequence[str], plugins: Plugins) -> tuple[str, ...]:
    """The loggers of a run: jsonl and the ones named; with "none" among them, only the others."""
    chosen = tuple(n for n in dict.fromkeys(names if "none" in names else ("jsonl", *names)) if n != "none")
    for name in chosen:
        plugins.loggers.get(name)
    return chosen


def _as_flags(extra: Mapping[str, Any]) -> list[str]:
    """Plugin options as `pbgan train` flags, for the worker processes of a multi-process run."""
    flags = []
    for key, value in extra.items():
        if key == "derive":
            continue
        flag = key.replace("_", "-")
        flags += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return flags


def train(arch: str | None, task: str, data: str | Path | None = None, *, progress: bool | ProgressFn | None = True,
          listeners: Sequence[Any] = (), nproc: int = 1, **kwargs: Any) -> Task | None:
    """Train a new task of the model in `model_dir` (the first task seeds the filter bank) and
    return it. Takes the options of `pbgan train` as keywords (`loggers=["tensorboard"]`).
    `progress`: True shows a bar (plain lines without a terminal), False none, a function
    `progress(step, total, losses)` is called after every step; `listeners` hear every event
    (pbgan_core/events.py). Returns None in the worker processes of a distributed run.

    Keywords as in `pbgan train`: model_dir, direction, size (256, or the model's first task's),
    steps, epochs, epochs_decay, batch_size (1), factorizer ("piggyback"), dataset, derive, device
    ("auto"), seed (0), resume, checkpoint_every (200), precision ("fp32"), nproc (1), loggers,
    log_every (10), sample_every; then the plugin options below."""
    plugins = kwargs.pop("plugins", None) or get_plugins()
    nproc = NPROC.check(nproc)
    request = train_request(arch, task, data, plugins=plugins, **kwargs)
    if nproc != 1 and (listeners or callable(progress)):
        raise UsageError("listeners and a progress function hear a run in this process only: "
                         "use them with nproc=1 (the first of several processes shows its own bar)")
    if progress is True:
        listeners, progress = [training_progress(task), *listeners], None
    if nproc != 1:
        code = distributed.launch(nproc, distributed.train_arguments(request, _as_flags(request.extra)))
        if code:
            raise PbganError(f"training with {nproc} processes failed (exit {code}); see the messages above")
        return Task.from_entry(ModelStore(request.model_dir).task(task))
    entry = train_task(request, plugins, progress or None, listeners)
    return Task.from_entry(entry) if entry else None


class Model:
    """A lifelong model directory: its tasks, their generators and metrics.

    Generators of recently used tasks stay in memory as plain dense generators (least recently
    used dropped first once they hold more than `cache_bytes`), so switching back to a task is a
    look-up, and every output of a task, first use or not, comes from the same dense weights.
    """

    def __init__(self, store: ModelStore, plugins: Plugins | None = None, cache_bytes: int = DEFAULT_BUDGET):
        self.store = store
        self.plugins = plugins or get_plugins()
        self.cache = TaskCache(CACHE_BYTES.check(cache_bytes, "cache_bytes"))

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

    def _generator(self, task: str, direction: str | None, device: str | torch.device,
                   protocol: str) -> tuple[dict[str, Any], str, nn.Module]:
        """The task's entry, generator name and cached dense generator (loaded on a miss)."""
        entry, key = self._resolve(task, direction, device, protocol)
        gen = self.cache.get(key)
        if gen is None:
            _, generators = load_generators(self.store, self.plugins, entry["name"], key[2])
            gen = self.cache.put(key, generators[key[1]])
        return entry, key[1], gen

    def generator(self, task: str, direction: str | None = None, device: str | torch.device = "cpu",
                  protocol: str = DEFAULT_PROTOCOL) -> nn.Module:
        """The task's generator as a plain dense nn.Module on `device` under the test-time
        `protocol`: a copy of the model's cached one, free to train or change."""
        return copy.deepcopy(self._generator(task, direction, device, protocol)[2])

    @torch.no_grad()
    def translate(self, task: str, image: ImageLike, direction: str | None = None, aligned: bool = False,
                  device: str | torch.device = "cpu", protocol: str = DEFAULT_PROTOCOL) -> torch.Tensor | Image.Image:
        """Run a task on one image: a tensor or numpy array, (3, H, W) or a batch (N, 3, H, W), or
        channels last, float in [-1, 1] or uint8 in [0, 255] (see `image_batch`), gives a float
        tensor in [-1, 1] back, (3, H, W) or (N, 3, H, W); a PIL image or an image file gives a PIL
        image (the pixels `pbgan generate` writes). Inputs are resized to the task's size; `aligned`
        takes an A|B file's condition half."""
        if isinstance(image, (torch.Tensor, np.ndarray)):
            batch = image_batch(image, "translate")
        entry, gname, gen = self._generator(task, direction, device, protocol)
        size = int(entry["options"]["size"])
        if isinstance(image, (torch.Tensor, np.ndarray)):
            x = to_task_size(batch, size).to(gen_device(gen))
            seeds = [image_seed(entry["name"], gname, str(i)) for i in range(x.shape[0])]
            out = translate(gen, x, protocol, seeds)
            return out if image.ndim == 4 else out[0]
        if isinstance(image, Image.Image):
            name = "<PIL image>"
            x = pil_condition(to_rgb8(image), size, entry["direction"], aligned, Path(name))
        else:
            path = as_path(image, "translate's image")
            name = path.name
            x = load_condition(path, size, entry["direction"], aligned)
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
        entry, gname, gen = self._generator(task, direction, device, protocol)
        return generate(gen, int(entry["options"]["size"]), entry["direction"], targets, aligned, gen_device(gen),
                        force, protocol, (entry["name"], gname))

    # --- metrics and report -------------------------------------------------------
    def evaluate(self, task: str | None = None, metrics: Sequence[str] = ("l1", "psnr", "ssim"),
                 images: int | None = None, fid_weights: str | Path | None = None,
                 lpips_weights: str | Path | None = None, protocol: str = DEFAULT_PROTOCOL,
                 data: Mapping[str, str | Path] | None = None) -> dict[str, dict[str, float]]:
        """Score every task (or one) on its test split now: {task: {metric: value}}. `images`
        test images per task (0: all; default: the task's --eval-images); fid/kid and lpips read
        their weights from `fid_weights` / `lpips_weights` when given; `data` ({task: folder})
        says where tasks' data is now, if it moved."""
        check_protocol(protocol)
        images = EVAL_IMAGES.check(images, "images")
        names = self.check_metrics(metrics)
        moved = self.check_data(data)
        with metric_weights(fid_weights, lpips_weights):
            chosen = [self.store.task(task)["name"]] if task else [t["name"] for t in self.store.tasks]
            return {name: evaluate_task(self.store, self.plugins, name, names, images, protocol=protocol, data=moved)
                    for name in chosen}

    def check_data(self, data: Mapping[str, str | Path] | None) -> dict[str, Path]:
        """New data folders by task name, each naming a stored task and an existing folder."""
        moved = {}
        for name, path in (data or {}).items():
            name = self.store.task(name)["name"]
            if not Path(path).exists():
                raise PbganError(f"the data folder {path} given for task {name!r} does not exist")
            moved[name] = Path(path)
        return moved

    def check_metrics(self, metrics: Sequence[str]) -> list[str]:
        """The metric names, each known to a plugin (one-line error otherwise)."""
        names = [m for m in metrics if m]
        if not names:
            raise UsageError("--metrics is empty; give names such as l1,psnr,ssim")
        for name in names:
            self.plugins.metrics.get(name)
        return names

    def record_missing_stages(self, data: Mapping[str, str | Path] | None = None) -> list[str]:
        """Compute and store the metrics rows an interrupted training left out; the tasks they follow.
        `data` as for `evaluate`."""
        return record_missing_stages(self.store, self.plugins, self.check_data(data))

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
               protocol: str = DEFAULT_PROTOCOL, baseline: str | Path | None = None, force: bool = False,
               data: Mapping[str, str | Path] | None = None) -> Path:
        """Write the HTML report (default: MODEL_DIR/report/index.html); its path. `baseline`,
        another model directory with the same task names, adds ratios to its tasks; `data`
        ({task: folder}) says where tasks' data is now, if it moved. Elsewhere an earlier report is
        replaced only with `force`."""
        samples = SAMPLES.check(samples, "samples")
        moved = self.check_data(data)
        out = Path(out) if out else self.root / "report"
        check_report_folder(out, self.root, force)
        base = Model.open(baseline).store if baseline is not None else None
        # a report inside the model directory is written under its lock, like every other write there
        inside = out.resolve().is_relative_to(self.root.resolve())
        with self.store.transaction() if inside else contextlib.nullcontext():
            return build_report(self.store, self.plugins, out, metric, samples, check_protocol(protocol), base,
                                data=moved)


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


def image_batch(image: torch.Tensor | np.ndarray, who: str) -> torch.Tensor:
    """An image tensor or array as an (N, 3, H, W) float32 batch in [-1, 1]. Takes (3, H, W) or
    (N, 3, H, W), or channels last, (H, W, 3) or (N, H, W, 3); float values in [-1, 1] (any float
    precision) or uint8 values in [0, 255]. Anything else is refused: its meaning would be a guess.
    Where both layouts fit (3, H, 3), channels come first, as in torch."""
    if isinstance(image, np.ndarray) and image.dtype.kind not in "uif":
        raise PbganError(f"{who} expects a float image in [-1, 1] or a uint8 one in [0, 255], got {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image.detach()
    shape = tuple(x.shape)
    wanted = "(3, H, W), (N, 3, H, W), (H, W, 3) or (N, H, W, 3)"
    if x.dim() not in (3, 4) or 3 not in (shape[-3], shape[-1]) or 0 in shape:
        raise PbganError(f"{who} expects an image of shape {wanted}, got {shape}")
    if shape[-3] != 3:  # channels last
        x = x.movedim(-1, -3)
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1
    elif x.dtype.is_floating_point:
        x = x.float()
        if not bool(torch.isfinite(x).all()) or float(x.min()) < -1 or float(x.max()) > 1:
            raise PbganError(f"{who} expects float values in [-1, 1], got values in [{float(x.min()):g}, "
                             f"{float(x.max()):g}]; give uint8 for values in [0, 255]")
    else:
        raise PbganError(f"{who} expects a float image in [-1, 1] or a uint8 one in [0, 255], got {x.dtype}")
    return x if x.dim() == 4 else x[None]


def save_image(image: torch.Tensor | np.ndarray | Image.Image, path: str | Path) -> Path:
    """Write an image as PNG, byte for byte as `pbgan generate`: a PIL image, or one image tensor
    or array as `translate` takes them ((3, H, W) or (H, W, 3); float in [-1, 1] or uint8)."""
    if not isinstance(image, Image.Image):
        if not isinstance(image, (torch.Tensor, np.ndarray)) or image.ndim != 3:
            shape = tuple(image.shape) if isinstance(image, (torch.Tensor, np.ndarray)) else type(image).__name__
            raise PbganError(f"save_image expects a PIL image or one image of shape (3, H, W) or (H, W, 3), "
                             f"got {shape}")
        image = image_batch(image, "save_image")[0]
    return write_image(image, as_path(path, "save_image's path"))


def _document_train() -> None:
    """Append the installed plugins' options to `train`'s docstring, so help(pbgan.train) lists them."""
    from .optiondocs import options_docstring

    try:
        train.__doc__ = f"{train.__doc__}\n\n{textwrap.indent(options_docstring(get_plugins()), '    ')}"
    except PbganError:  # plugins that cannot load: commands report it, importing the API must not fail
        pass


_document_train()

__all__ = ["Model", "Task", "train", "train_request", "train_options", "save_image", "PROTOCOLS", "PbganError"]
