"""The lifelong loop: build -> factorize against the bank -> train -> store -> grow the bank
-> evaluate every task so far."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import math
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import __version__, distributed
from .bank import FilterBank
from .batchnorm import has_batchnorm, recompute_batchnorm, spread_indices
from .checkpoint import (DeferredInterrupt, checkpoint_path, load_checkpoint, remove_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .atomic import sha256_bytes
from .errors import PbganError
from .events import Dispatcher, Evaluated, Periodic, ProgressCallback, RunState, Start, Stored, learning_rates
from .interfaces import Architecture
from .options import Option, defaults
from .plugins import Plugins
from .manifest import DIRECTIONS, check_entry_plugins, entry_sha256
from .modelcard import write_model_card
from .protocol import DEFAULT_PROTOCOL, check_protocol, image_seed, translate
from .samples import sample_maker
from .store import ModelStore, check_task_name, stored_options

ENGINE_OPTIONS = (
    Option("init", "auto", "how a later task's weights start: warm (from the latest task's generator), "
           "scratch (fresh random weights) or auto (the factorizer's choice: warm, except for standalone)",
           choices=("auto", "warm", "scratch")),
    Option("eval-images", 32, "test images per task used for the metrics after each task (0: all)", min=0),
    Option("num-workers", 0, "data loader worker processes (0: load in the training process)", min=0, max=256),
    Option("channels-last", False, "train in the channels-last memory format (often faster on GPUs)"),
    Option("compile", False, "compile the generators and discriminators with torch.compile"),
    Option("bn-images", 400, "after training, recompute the generators' BatchNorm running statistics as their "
           "plain mean over up to this many training images, spread over the set (0: keep the moving averages, "
           "which reflect only the last few dozen images at batch size 1)", min=0),
)


@dataclass
class TrainRequest:
    arch: str
    task: str
    data: Path
    model_dir: Path
    direction: str = "AtoB"
    size: int | None = None  # None: the model's first task's, else DEFAULT_SIZE
    steps: int | None = None
    epochs: int | None = None  # None: the architecture's (reference: 100)
    epochs_decay: int | None = None  # None: the architecture's (reference: 100)
    batch_size: int = 1
    factorizer: str = "piggyback"
    dataset: str | None = None
    device: str = "auto"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    checkpoint_every: int = 200
    precision: str = "fp32"
    loggers: tuple[str, ...] = ("jsonl",)  # logger plugins, by name
    log_every: int = 10
    sample_every: int = 0  # 0: ten times a run


ProgressFn = Callable[[int, int, Mapping[str, float]], None]
DEFAULT_SIZE = 256


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
    size = req.size if req.size is not None else DEFAULT_SIZE
    if req.direction not in DIRECTIONS:
        raise PbganError(f"--direction must be AtoB or BtoA, got {req.direction!r}")
    if size < 8 or req.batch_size < 1:
        raise PbganError("--size must be at least 8 and --batch-size at least 1")
    opts.update(size=size, direction=req.direction, batch_size=req.batch_size, seed=req.seed, dataset=dataset)
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


def load_generators(store: ModelStore, plugins: Plugins, name: str, device: torch.device | str = "cpu",
                    as_of: str | None = None, materialize: bool = True) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Rebuild a stored task as dense, plain generators in eval mode, as they stood after training
    task `as_of` (default: now; it matters only to factorizers that do not keep old tasks).

    With `materialize=False` the layers stay factorized and take the loaded tensors as they are
    (nothing is copied, the bank is shared): each layer computes its filters, or convolves with the
    bank, in every forward. Such a generator must not be changed in place; materializing it makes
    new weights."""
    entry, tensors, new_filters, bank = store.load_task(name)
    check_entry_plugins(entry, plugins, store.manifest_path)
    if not plugins.factorizers.get(entry["factorizer"]).keeps_old_tasks:
        latest = as_of or store.tasks[-1]["name"]
        if latest != name:  # one shared model: every task uses the latest weights
            entry_latest, gens = load_generators(store, plugins, latest, device, as_of=latest, materialize=materialize)
            return entry, gens
    factorizer = plugins.factorizers.get(entry["factorizer"])
    with torch.device("meta"):
        names = list(plugins.architectures.get(entry["arch"]).build_generators(stored_options(entry)))
    generators = {}
    for gname in names:
        state = factorizer.join(_prefixed(tensors, gname), _prefixed(new_filters, gname))
        gen = _stored_generator(store, entry, gname, bank_for(factorizer, bank, gname), state, plugins,
                                assign=not materialize)
        if any(t.is_meta for t in (*gen.parameters(), *gen.buffers())):  # a layer holds values no file has
            gen = _stored_generator(store, entry, gname, bank_for(factorizer, bank, gname), state, plugins, False)
        if materialize:
            factorizer.materialize(gen)
        generators[gname] = gen.to(device).eval()
    return entry, generators


def bank_for(factorizer, bank: FilterBank, generator: str) -> dict[str, Any]:
    """The whole bank for one generator, as the factorizer's `wrap` takes it."""
    return bank.prefix(len(bank), generator, lazy=getattr(factorizer, "reads_bank_rows", False))


def latest_task_state(store: ModelStore, factorizer, generators: Mapping[str, nn.Module]) -> dict[str, dict]:
    """Per generator, `{"previous": {"state": ..., "options": ...}}` of the model's latest task, for a
    factorizer that builds a later task from it (`uses_previous_task`); else empty."""
    if not (store.tasks and getattr(factorizer, "uses_previous_task", False)):
        return {}
    entry, tensors, new_filters, _ = store.load_task(store.tasks[-1]["name"])
    if entry["factorizer"] != factorizer.name:
        return {}
    return {g: {"previous": {"state": factorizer.join(_prefixed(tensors, g), _prefixed(new_filters, g)),
                             "options": stored_options(entry)}} for g in generators}


def _stored_generator(store: ModelStore, entry: Mapping[str, Any], gname: str, bank: dict[str, torch.Tensor],
                      state: dict[str, torch.Tensor], plugins: Plugins, assign: bool) -> nn.Module:
    """One wrapped generator holding a task's stored values: copied into fresh memory, or (`assign`)
    taking the loaded tensors themselves."""
    factorizer = plugins.factorizers.get(entry["factorizer"])
    opts = stored_options(entry)
    with torch.device("meta"):  # shapes only: every value comes from the task file
        gen = plugins.architectures.get(entry["arch"]).build_generators(opts)[gname]
    if not assign:
        gen.to_empty(device="cpu")
    factorizer.wrap(gen, bank, opts, initialize=False)
    try:
        gen.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise PbganError(f"{store.root / entry['file']} does not fit the {entry['arch']} generator "
                         f"({first}); the file is damaged or from another model") from None
    return gen


def _loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, workers: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                                       num_workers=workers, generator=g)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def _batches(data: torch.utils.data.Dataset, batch_size: int, workers: int, seed: int, start: int = 0,
             ranks: distributed.Ranks = distributed.Ranks()) -> Any:
    """Training batches from step `start` on. Each epoch's order depends only on (seed, epoch),
    so a resumed run continues with exactly the batches an uninterrupted one would see; each
    process of a distributed run takes its own shard of that order."""
    epoch, skip = divmod(start, math.ceil(len(data) // ranks.world / batch_size))
    while True:
        order = distributed.shard(_epoch_order(len(data), seed, epoch), ranks)[skip * batch_size:]
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=order, num_workers=workers,
                                             generator=torch.Generator().manual_seed(seed + epoch))
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded and not skip:
            raise PbganError("the training data yielded no batch; check --data and --max-images")
        epoch, skip = epoch + 1, 0


def _json_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool, type(None)))}


# options that may change between an interrupted run and its resumption
RESUME_MAY_CHANGE = ("num_workers", "eval_images", "channels_last", "compile", "bn_images")


def _check_resumable(ckpt: Mapping[str, Any], req: TrainRequest, opts: Mapping[str, Any], total: int,
                     store: ModelStore, bank_fingerprint: str, where: Path) -> None:
    if Path(ckpt["request"]["data"]).resolve() != Path(req.data).resolve():
        raise PbganError(f"the checkpoint {where} was made with --data {ckpt['request']['data']}, this run has "
                         f"--data {req.data}; resume with the same data, or delete the checkpoint folder to start over")
    then, now = dict(ckpt["options"]), _json_options(opts)
    then.update(arch=ckpt["request"]["arch"], factorizer=ckpt["request"]["factorizer"], total_steps=ckpt["total"])
    now.update(arch=req.arch, factorizer=req.factorizer, total_steps=total)
    changed = sorted(k for k in set(then) | set(now) if k not in RESUME_MAY_CHANGE and then.get(k) != now.get(k))
    if changed:
        k = changed[0]
        raise PbganError(f"the checkpoint {where} was made with {k}={then.get(k)!r}, this run has {now.get(k)!r}; "
                         "resume with the same options, or delete the checkpoint folder to start over")
    if ckpt["bank_fingerprint"] != bank_fingerprint:
        # the task stored next after the checkpoint was made trained on the bank the checkpoint had
        voider = next((e["name"] for e in store.tasks if e["bank_fingerprint"] == ckpt["bank_fingerprint"]), None)
        which = f"task {voider!r} was stored after it was made" if voider else "another task was stored"
        raise PbganError(f"the model changed since the checkpoint {where} was made ({which}, adding to the filter "
                         "bank it trained against); delete the checkpoint folder and train the task again")


# Probe outputs recomputed on another machine (another CPU's kernels, another torch build) may
# round differently: they count as the same when no value moved by more than this. Outputs are
# in [-1, 1]; the largest difference measured across CPU kernel sets was 7.4e-6 (README).
PROBE_TOLERANCE = 1e-4


def probe_task(store: ModelStore, plugins: Plugins, name: str) -> str:
    """The probe hash of a stored task (see `probe_task_outputs`)."""
    return outputs_sha256(probe_task_outputs(store, plugins, name))


def probe_task_outputs(store: ModelStore, plugins: Plugins, name: str,
                       as_of: str | None = None) -> dict[str, torch.Tensor]:
    """The probe outputs of a stored task as it stood after task `as_of` (default: now), computed
    on one CPU thread: summation order (and so the last bits) of matrix products can depend on the
    thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        entry, generators = load_generators(store, plugins, name, as_of=as_of)
        return probe_outputs(generators, int(entry["options"]["size"]))
    finally:
        torch.set_num_threads(threads)


def probe_outputs(generators: Mapping[str, nn.Module], size: int) -> dict[str, torch.Tensor]:
    """Each generator's output on a fixed seeded input: recomputed, it shows whether they still
    compute the same function (`pbgan verify`)."""
    outputs = {}
    with torch.no_grad():
        for gname in sorted(generators):
            gen = generators[gname]
            first = next(m for m in gen.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
            x = torch.rand(1, first.in_channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            outputs[gname] = gen(x.to(next(gen.parameters()).device)).detach().cpu().contiguous()
    return outputs


def outputs_sha256(outputs: Mapping[str, torch.Tensor]) -> str:
    """The bit-level hash of probe outputs, as every manifest records it."""
    h = hashlib.sha256()
    for gname in sorted(outputs):
        y = outputs[gname]
        h.update(f"{gname}|{tuple(y.shape)}|".encode())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


def probe_difference(recorded: Mapping[str, torch.Tensor], now: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute difference between two sets of probe outputs (inf if they do not pair up)."""
    if set(recorded) != set(now) or any(recorded[g].shape != now[g].shape for g in recorded):
        return math.inf
    return max((float((recorded[g].double() - now[g].double()).abs().max()) for g in recorded), default=0.0)


def to_device(batch: Mapping[str, Any], device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            if torch.is_tensor(v) and v.dim() == 4 else v.to(device) if torch.is_tensor(v) else v
            for k, v in batch.items()}


class Interrupted(PbganError):
    exit_code = 130


def _warn_pending(store: ModelStore, task: str, bank_fingerprint: str) -> None:
    """Storing a task adds to the filter bank, which voids the checkpoints of other tasks' interrupted
    runs: say so while they can still be resumed first."""
    folder = store.root / "checkpoints"
    others = sorted(p.name for p in folder.iterdir() if p.name != task and not store.has_task(p.name)) \
        if folder.is_dir() else []
    for other in others:
        try:
            ckpt = load_checkpoint(store.root, other)
        except PbganError:  # unusable anyway: resuming it says so
            continue
        if ckpt is not None and ckpt["bank_fingerprint"] == bank_fingerprint:
            warnings.warn(f"task {other!r} has an interrupted run in {checkpoint_path(store.root, other).parent}, "
                          f"which storing {task!r} makes unresumable; to keep it, stop this run (Ctrl-C) and "
                          f"first finish that one: {_resume_command(ckpt['request'])}")


def _resume_command(request: Mapping[str, Any]) -> str:
    """The `pbgan train` command that resumes the run a checkpoint's request describes."""
    from .api import _as_flags

    fields = {k: v for k, v in request.items() if k in TrainRequest.__dataclass_fields__}
    req = TrainRequest(**{**fields, "resume": True})
    return shlex.join(["pbgan", "train", *distributed.train_arguments(req, _as_flags(req.extra))])


def _find_checkpoint(store: ModelStore, req: TrainRequest) -> dict[str, Any] | None:
    ckpt = load_checkpoint(store.root, req.task)
    where = checkpoint_path(store.root, req.task)
    if req.resume and ckpt is None:
        raise PbganError(f"no checkpoint of task {req.task!r} in {where.parent}: nothing to resume; "
                         "run without --resume to start the task")
    if not req.resume and ckpt is not None:
        raise PbganError(f"task {req.task!r} has a checkpoint of an interrupted run in {where.parent}; "
                         "add --resume to continue it, or delete that folder to start over")
    return ckpt


def schedule(req: TrainRequest, arch: Architecture, images: int) -> tuple[int, dict[str, int]]:
    """(total steps, the learning-rate schedule's options). The rate is constant for `epochs`
    epochs, then falls linearly over `epochs_decay` more, per epoch as the reference's linear
    policy; `--steps` only says where training stops."""
    epochs = req.epochs if req.epochs is not None else arch.epochs
    decay = req.epochs_decay if req.epochs_decay is not None else arch.epochs_decay
    if epochs < 0 or decay < 0:
        raise PbganError(f"--epochs and --epochs-decay cannot be negative (got {epochs} and {decay})")
    steps_per_epoch = math.ceil(images / req.batch_size)
    total = req.steps if req.steps is not None else (epochs + decay) * steps_per_epoch
    if total < 1:
        raise PbganError("nothing to train: give --steps, or --epochs plus --epochs-decay, of at least 1")
    return total, {"epochs": epochs, "epochs_decay": decay, "steps_per_epoch": steps_per_epoch}


def inherit_generator(store: ModelStore, req: TrainRequest, plugins: Plugins) -> TrainRequest:
    """A later task takes the generator-shaping options it was not given (its size and those
    `check_same_generator` compares) from the model's first task; given ones stay as they are,
    and are refused there when they differ."""
    if not store.tasks or store.tasks[0]["arch"] != req.arch:
        return req
    first = stored_options(store.tasks[0])
    shaping = plugins.architectures.get(req.arch).generator_options(first)
    inherited = {k: first[k] for k in shaping if k in first and k not in req.extra}
    return dataclasses.replace(req, size=req.size if req.size is not None else int(first["size"]),
                               extra={**inherited, **req.extra})


def check_same_generator(store: ModelStore, task: str, arch: Architecture, opts: Mapping[str, Any],
                         signature: dict[str, list[int]]) -> None:
    """A later task must build the generator the bank was made for: same architecture, the same
    generator-shaping options (named when one differs), the same convolutions."""
    first = store.tasks[0]
    if first["arch"] != arch.name:
        raise PbganError(f"task {task!r} uses --arch {arch.name}, but this model's generator (first task "
                         f"{first['name']!r}) is --arch {first['arch']}; use --arch {first['arch']} or a new --model-dir")
    then, now = arch.generator_options(stored_options(first)), arch.generator_options(opts)
    for key, value in then.items():
        if now.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise PbganError(f"task {task!r} would build its generator with {flag} {now.get(key)}, but this model's "
                             f"generator (first task {first['name']!r}) has {flag} {value}; use {flag} {value} or "
                             "a new --model-dir")
    if first.get("signature") != signature:
        raise PbganError(f"task {task!r} builds a different generator than this model's first task "
                         f"{first['name']!r} ({first['arch']}, netG {first['options'].get('netG')}, size "
                         f"{first['options'].get('size')}); use the same architecture options or a new --model-dir")


def split_task(factorizer, generators: dict[str, nn.Module]) -> tuple[dict, dict, int]:
    """(task tensors, new bank filters, stored parameters), keyed "generator/name"."""
    task_tensors: dict[str, torch.Tensor] = {}
    new_filters: dict[str, torch.Tensor] = {}
    stored = 0
    for gname, gen in generators.items():
        gen.eval()
        kept, added = factorizer.split(gen)
        stored += factorizer.stored_parameters(gen)
        task_tensors.update({f"{gname}/{k}": v for k, v in kept.items()})
        new_filters.update({f"{gname}/{k}": v for k, v in added.items()})
    return task_tensors, new_filters, stored


def _not_stored(store: ModelStore, task: str, why: str, weights_only: bool = False) -> str:
    """What an unfinished training left, and how to go on."""
    where = checkpoint_path(store.root, task)
    if weights_only:
        return (f"{why}: task {task!r} is not stored; its trained generator weights are kept in {where}: run the "
                "same command with --resume to store it without training again")
    if where.exists():
        return (f"{why}: task {task!r} is not stored; its training state is kept in {where}: run the same "
                "command with --resume to continue")
    return f"{why}: task {task!r} is not stored and {store.root} is as before; run the same command again"


def _taken(store: ModelStore, task: str) -> PbganError:
    return PbganError(f"task {task!r} exists already in {store.root}; choose another --task name "
                      "or another --model-dir")


class _Stage:
    """Turns a Ctrl-C into a message saying what the training had done and what it keeps."""

    def __init__(self, store: ModelStore, task: str):
        self.store, self.task, self.doing = store, task, "interrupted while starting"

    def __enter__(self) -> "_Stage":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            raise Interrupted(_not_stored(self.store, self.task, self.doing)) from None


def train_task(req: TrainRequest, plugins: Plugins, progress: ProgressFn | None = None,
               listeners: Sequence[Any] = ()) -> dict[str, Any]:
    """Train and store one task. The request's loggers, `progress(step, total, losses)` and
    `listeners` (see events.py) hear the run's events, in the first process only."""
    check_task_name(req.task)
    store = ModelStore(req.model_dir)
    if store.has_task(req.task):  # an early answer; asked again under the lock
        raise _taken(store, req.task)
    req = inherit_generator(store, req, plugins)
    arch = plugins.architectures.get(req.arch)
    factorizer = plugins.factorizers.get(req.factorizer)
    opts = task_options(req, plugins)
    dataset_plugin = plugins.datasets.get(opts["dataset"])
    device = pick_device(req.device)
    amp = distributed.autocast(device, req.precision)
    ranks, device = distributed.start(device)
    events = Dispatcher(_listeners(req, plugins, progress, listeners) if ranks.main else (), enabled=ranks.main)

    writing = store.transaction() if ranks.main else contextlib.nullcontext()  # only rank 0 writes
    with writing, _Stage(store, req.task) as stage, events:
        distributed.read_manifest_under_main_lock(store, ranks)
        if store.has_task(req.task):  # asked again: the manifest was read again under the lock
            raise _taken(store, req.task)
        ckpt = _find_checkpoint(store, req)
        torch.manual_seed(req.seed)
        train_data = dataset_plugin.build(Path(req.data), "train", opts, train=True)
        if len(train_data) < ranks.world:
            raise PbganError(f"no training images in {req.data}" if not len(train_data) else
                             f"{len(train_data)} training image(s) in {req.data} for {ranks.world} processes; "
                             "use fewer processes or more images")
        try:  # each task is scored on its test split when stored: a missing one is refused before training
            dataset_plugin.build(Path(req.data), "test", {**opts, "max_images": 1}, train=False)
        except PbganError as exc:
            raise PbganError(f"{exc} (pbgan scores every task on its test split when storing it)") from None
        total, lr_schedule = schedule(req, arch, len(train_data) // ranks.world)
        opts.update(lr_schedule)
        generators = arch.build_generators(opts)
        signature = generator_signature(generators)
        standalone = count_parameters(generators)
        if store.tasks:
            check_same_generator(store, req.task, arch, opts, signature)
            if opts["init"] == "warm" or (opts["init"] == "auto" and factorizer.warm_start):
                _, previous = load_generators(store, plugins, store.tasks[-1]["name"])
                for gname, gen in generators.items():
                    gen.load_state_dict(previous[gname].state_dict())
        bank = store.load_bank()
        if ranks.main:
            _warn_pending(store, req.task, bank.fingerprint())
        previous = latest_task_state(store, factorizer, generators)
        for gname, gen in generators.items():
            factorizer.wrap(gen, bank_for(factorizer, bank, gname), opts, **previous.get(gname, {}))
            gen.to(device).train()
        trainer = arch.build_trainer(generators, opts, device, total)
        if req.precision == "fp16":
            distributed.enable_loss_scaling(trainer, req.arch, device)

        run = _resume(store, req, ckpt, opts, total, bank, generators, trainer)
        start = run.step
        memory_format = torch.channels_last if opts["channels_last"] else torch.contiguous_format
        modules = _prepare_modules(generators, trainer, opts, ranks, memory_format)
        save = functools.partial(_save_checkpoint, store, req, opts, run, bank, generators, trainer)
        checkpoint = functools.partial(_checkpoint_or_stop, save, store, req.task)
        events.add(Periodic(req.checkpoint_every, checkpoint))
        if events.wants("samples"):
            events.add(sample_maker(events, req, arch, dataset_plugin, opts, generators, device, total))
        events.emit(Start(req.task, store.root, _json_options(opts), total, start))
        batches = _batches(train_data, req.batch_size, opts["num_workers"], req.seed, start, ranks)
        stage.doing = "interrupted again"  # the first Ctrl-C is deferred to a step boundary
        with DeferredInterrupt() as interrupt:
            for batch in itertools.islice(batches, total - start):
                lrs = learning_rates(trainer)
                with amp:
                    losses = trainer.step(to_device(batch, device, memory_format))
                events.emit(run.advance(losses, lrs))
                if interrupt.requested:  # the first process keeps the state so far
                    why = f"interrupted at step {run.step} of {total}"
                    if ranks.main:
                        checkpoint(run.step)
                    raise Interrupted(_not_stored(store, req.task, why) if ranks.main else why)
        seconds = run.seconds
        distributed.record_weights(modules, ranks)
        if not ranks.main:  # rank 0 stores the task; the others wait for it and leave
            distributed.finish(ranks)
            return {}

        stage.doing = "interrupted while saving the trained weights"
        # the trained weights stay on disk until the manifest names the task, but storing it comes first
        unsaved = None if start == total else _save_failure(lambda: save(total))
        if unsaved:
            warnings.warn(f"the trained weights could not be saved as a checkpoint ({unsaved}); storing the task "
                          "without it")
        stage.doing = "interrupted while recomputing BatchNorm statistics"
        _recompute_batchnorm(req, arch, dataset_plugin, opts, generators, device, memory_format)
        task_tensors, new_filters, stored = split_task(factorizer, generators)
        json_opts = _json_options(opts)
        entry = {
            "name": req.task, "arch": req.arch, "factorizer": req.factorizer, "dataset": opts["dataset"],
            **data_paths(Path(req.data), store.root), "direction": req.direction, "options": json_opts,
            "signature": signature,
            "params": {"stored": stored, "standalone": standalone, "bank_before": bank.size(),
                       "bank_added": sum(t.numel() for t in new_filters.values())},
            "train": {"steps": total, "seconds": round(seconds, 3), "final_losses": run.losses,
                      "device": str(device), "pbgan": __version__, "processes": ranks.world,
                      "precision": req.precision},
        }
        if start:
            entry["train"]["resumed_at_step"] = start
        row = store_task(store, plugins, entry, task_tensors, new_filters, bank.fingerprint(),
                         keep=lambda: unsaved is not None and not _save_failure(lambda: save(total, resumable=False)))
        events.emit(Stored(req.task, store.task(req.task)))
        events.emit(Evaluated(req.task, row))
    distributed.finish(ranks)
    return store.task(req.task)


def _listeners(req: TrainRequest, plugins: Plugins, progress: ProgressFn | None, listeners: Sequence[Any]) -> list:
    """The request's loggers, then the caller's progress callback and listeners."""
    loggers = [plugins.loggers.get(name).create(req) for name in req.loggers]
    return [*loggers, *([ProgressCallback(progress)] if progress else []), *listeners]


def _resume(store: ModelStore, req: TrainRequest, ckpt: Mapping[str, Any] | None, opts: Mapping[str, Any],
            total: int, bank: Any, generators: Mapping[str, nn.Module], trainer: Any) -> RunState:
    """The run's state: fresh, or that of the checkpoint, whose weights, trainer and RNG are restored."""
    run = RunState(req.task, total, opts["steps_per_epoch"])
    if ckpt is not None:
        _check_resumable(ckpt, req, opts, total, store, bank.fingerprint(), checkpoint_path(store.root, req.task))
        for gname, gen in generators.items():
            gen.load_state_dict(ckpt["generators"][gname])
        if ckpt["trainer"] is not None:  # None: the generators kept at the end, nothing left to train
            trainer.load_state_dict(ckpt["trainer"])
            set_rng_state(ckpt["rng"])
        run.step, run.earlier_seconds, run.losses = ckpt["step"], ckpt["seconds"], ckpt["losses"]
    return run


def _prepare_modules(generators: Mapping[str, nn.Module], trainer: Any, opts: Mapping[str, Any],
                     ranks: distributed.Ranks, memory_format: torch.memory_format) -> list[nn.Module]:
    """Every trained module, the same in every process, in the memory format asked for, compiled if asked."""
    modules = distributed.trainer_modules(generators, trainer)
    distributed.broadcast_weights(modules, ranks)
    distributed.average_gradients(modules, ranks)
    for module in modules:
        module.to(memory_format=memory_format)
        if opts["compile"]:
            module.compile()  # in place: parameter names, and so stored files, stay the same
    return modules


def _save_checkpoint(store: ModelStore, req: TrainRequest, opts: Mapping[str, Any], run: RunState, bank: Any,
                     generators: Mapping[str, nn.Module], trainer: Any, done: int, resumable: bool = True) -> Path:
    """The training state after `done` steps; without `resumable` the generators only."""
    return save_checkpoint(store.root, req.task, {
        "step": done, "total": run.total, "seconds": run.seconds,
        "losses": run.losses, "bank_fingerprint": bank.fingerprint(), "options": _json_options(opts),
        "request": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(req).items()},
        "generators": {g: gen.state_dict() for g, gen in generators.items()},
        "trainer": trainer.state_dict() if resumable else None, "rng": rng_state() if resumable else None})


def _checkpoint_or_stop(save: Callable[[int], Path], store: ModelStore, task: str, done: int) -> Path:
    """A checkpoint during training: a failure to write it stops the run, saying what was kept."""
    try:
        return save(done)
    except PbganError as exc:
        raise PbganError(_not_stored(store, task, f"saving a checkpoint failed ({exc})")) from None


def _recompute_batchnorm(req: TrainRequest, arch: Architecture, dataset_plugin: Any, opts: Mapping[str, Any],
                         generators: Mapping[str, nn.Module], device: torch.device,
                         memory_format: torch.memory_format) -> None:
    """--bn-images: each generator's BatchNorm statistics over training images of the domain it
    translates from (spread over the training set, without augmentation), in batches of the
    training batch size: a batch's statistics include the spread between its images."""
    if opts["bn_images"] <= 0 or not any(has_batchnorm(g) for g in generators.values()):
        return
    data = dataset_plugin.build(Path(req.data), "train", opts, train=False)
    images = torch.utils.data.Subset(data, spread_indices(len(data), int(opts["bn_images"])))

    def inputs(gname: str):
        source = next((d[0] for d in (req.direction, *DIRECTIONS) if arch.generator_for(d) == gname), req.direction[0])
        for batch in _loader(images, req.batch_size, False, opts["num_workers"], 0):  # batches as in training
            yield batch[source].to(device).contiguous(memory_format=memory_format)

    recompute_batchnorm(generators, {g: inputs(g) for g in generators}, req.seed)


def _save_failure(save: Callable[[], Path]) -> PbganError | None:
    """Why `save` failed (a nearly full disk), or None when it wrote its checkpoint."""
    try:
        save()
    except PbganError as exc:
        return exc
    return None


def store_task(store: ModelStore, plugins: Plugins, entry: dict[str, Any], task_tensors: dict[str, torch.Tensor],
               new_filters: dict[str, torch.Tensor], bank_fingerprint: str,
               keep: Callable[[], bool] | None = None) -> dict[str, dict[str, float]]:
    """Commit a task (with the probe output of its stored files and the entry's hash), drop its
    checkpoint and record its metrics row, which it returns. Inside a transaction. A message says
    what was kept when any step fails; if the task is not stored, `keep()` saves what it can of the
    trained weights first (the task's own files are removed again by then, freeing their space)."""
    name = entry["name"]

    def add_probe(e: dict[str, Any]) -> None:
        outputs = probe_task_outputs(store, plugins, name)
        e["probe_sha256"] = outputs_sha256(outputs)
        store.add_probe(e, outputs)
        e["entry_sha256"] = entry_sha256(e)  # last: it covers every field written so far

    try:
        store.add_task(entry, task_tensors, new_filters, bank_fingerprint, finish=add_probe)
        remove_checkpoint(store.root, name)
        row = evaluate_all(store, plugins, after=name)
    except (PbganError, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        error = Interrupted if interrupted else PbganError
        if not store.has_task(name):
            weights_only = keep is not None and keep()
            raise error(_not_stored(store, name, "interrupted while storing it" if interrupted
                                    else f"storing failed ({exc})", weights_only)) from None
        left = checkpoint_path(store.root, name).parent
        gc = f"; its checkpoint {left} is a leftover that `pbgan gc` removes" if left.exists() else ""
        raise error(f"task {name!r} is stored in {store.root}, but its metrics row was not recorded "
                    f"({'interrupted' if interrupted else exc}): run `pbgan eval --model-dir {store.root}` "
                    f"to compute it{gc}") from None
    rewrite_model_card(store, name)
    return row


def rewrite_model_card(store: ModelStore, name: str) -> None:
    """The model directory's README.md, after the task `name` was stored with its metrics."""
    try:
        write_model_card(store)
    except (PbganError, KeyboardInterrupt) as exc:
        error = Interrupted if isinstance(exc, KeyboardInterrupt) else PbganError
        raise error(f"task {name!r} is stored in {store.root} with its metrics; only the model's README.md was "
                    f"not rewritten ({str(exc) or 'interrupted'}): the next stored task rewrites it") from None


def data_paths(data: Path, root: Path) -> dict[str, str]:
    """How a task entry records its data: absolute, and relative to the model directory, so the
    model can be moved or copied together with its data, and opened from any folder."""
    where = data.resolve()
    return {"data": str(where), "data_from_model": os.path.relpath(where, root.resolve())}


def task_data(entry: Mapping[str, Any], root: Path | None = None, moved: Mapping[str, Any] | None = None) -> Path:
    """Where a stored task's data is now: the path given for it in `moved`, else its path relative
    to the model directory `root` where that exists, else the recorded one (absolute; older models
    recorded it as typed)."""
    if moved and entry["name"] in moved:
        return Path(moved[entry["name"]])
    if root is not None and entry.get("data_from_model") and (Path(root) / entry["data_from_model"]).exists():
        return Path(root) / entry["data_from_model"]
    return Path(entry["data"])


def eval_split(entry: Mapping[str, Any], plugins: Plugins, root: Path | None = None,
               moved: Mapping[str, Any] | None = None) -> torch.utils.data.Dataset:
    """A stored task's test split, found as `task_data` says."""
    where, name = task_data(entry, root, moved), entry["name"]
    try:  # some datasets need no folder (generated data): the dataset says what it needs
        return plugins.datasets.get(entry["dataset"]).build(where, "test", entry["options"], train=False)
    except PbganError:
        if where.exists():
            raise
    # a recorded path the user may never have typed (a given one is checked on entry)
    raise PbganError(f"data folder {where} of task {name!r} (where it was trained) does not exist; if the data "
                     f"moved, give its new place with --data {name}=PATH (in Python: data={{{name!r}: PATH}})")


def image_seeds(task: str, gname: str, paths: list[str]) -> list[int]:
    """Per-image dropout seeds of the reference protocol: (task, generator, file name)."""
    return [image_seed(task, gname, Path(p).name) for p in paths]


def eval_image_count(entry: Mapping[str, Any], available: int, limit: int | None = None) -> int:
    """Test images a score uses: `limit` of the `available` ones (None: the task's --eval-images; 0: all)."""
    limit = limit if limit is not None else entry["options"].get("eval_images", 0)
    return available if not limit else min(limit, available)


@torch.no_grad()
def evaluate_task(store: ModelStore, plugins: Plugins, name: str, metric_names=("l1", "psnr", "ssim"),
                  limit: int | None = None, *, as_of: str | None = None, protocol: str = DEFAULT_PROTOCOL,
                  data: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Mean metrics of a stored task on its test split (found as `task_data` says, `data` giving
    tasks' new data folders), its generator run under `protocol`."""
    check_protocol(protocol)
    entry, generators = load_generators(store, plugins, name, as_of=as_of)
    arch = plugins.architectures.get(entry["arch"])
    forward = arch.generator_for(entry["direction"])
    gen = generators[forward]
    source, target = ("A", "B") if entry["direction"] == "AtoB" else ("B", "A")
    data = eval_split(entry, plugins, store.root, data)
    count = eval_image_count(entry, len(data), limit)
    metrics = [plugins.metrics.get(m) for m in metric_names]
    sets = {m.name: m.accumulator() for m in metrics if getattr(m, "set_level", False)}  # e.g. fid
    per_image = [m for m in metrics if m.name not in sets]
    sums = {m.name: 0.0 for m in per_image}
    loader = _loader(torch.utils.data.Subset(data, range(count)), 8, False, 0, 0)
    for batch in loader:
        paths = batch.get(f"path_{source}", batch["path"])
        fake, real = translate(gen, batch[source], protocol, image_seeds(name, forward, paths)), batch[target]
        for acc in sets.values():  # set-level: the translated set against the target domain
            acc.update(fake, real)
        if not arch.paired:  # an unpaired target is an unrelated image: score the round trip back instead
            back = arch.generator_for(f"{target}to{source}")
            fake, real = translate(generators[back], fake, protocol, image_seeds(name, back, paths)), batch[source]
        for m in per_image:
            sums[m.name] += float(m.fn(fake, real).sum())
    found = {k: v / max(count, 1) for k, v in sums.items()} | {k: acc.compute() for k, acc in sets.items()}
    return {m.name: round(float(found[m.name]), 6) for m in metrics}


def evaluate_all(store: ModelStore, plugins: Plugins, after: str, protocol: str = DEFAULT_PROTOCOL,
                 data: Mapping[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Metrics of every task up to `after` as they stood after training it, recorded as that
    row of the task-by-stage matrix with the test-time protocol they were measured under.
    Inside a transaction."""
    upto = store.task(after)["index"]
    carried = _unchanged_scores(store, plugins, store.tasks[:upto], protocol)
    row = {e["name"]: carried.get(e["name"]) or evaluate_task(store, plugins, e["name"], as_of=after,
                                                              protocol=protocol, data=data)
           for e in store.tasks[:upto]}
    store.record_stage(after, row, protocol)
    return row


def _unchanged_scores(store: ModelStore, plugins: Plugins, upto: Sequence[Mapping[str, Any]],
                      protocol: str) -> dict[str, dict[str, float]]:
    """Scores of the stage before the last task in `upto` that cannot have changed since: tasks of a
    factorizer that keeps old tasks compute from their own files and a bank prefix, all written once,
    so their outputs are the previous stage's. Their files' hashes are checked instead of scoring
    them again, which keeps a whole sequence linear in the task count."""
    if len(upto) < 2:
        return {}
    before = next((s for s in store.manifest.get("stages", []) if s["after"] == upto[-2]["name"]), None)
    if before is None or before.get("protocol", DEFAULT_PROTOCOL) != protocol:
        return {}
    carried = {}
    for entry in upto[:-1]:
        scores = before["metrics"].get(entry["name"])
        if not scores or not plugins.factorizers.get(entry["factorizer"]).keeps_old_tasks:
            continue
        files = ((entry["file"], entry.get("sha256")), (entry["bank_file"], entry.get("bank_sha256")))
        unedited = entry.get("entry_sha256") in (None, entry_sha256(entry))
        if unedited and all(sha and _file_sha256(store.root / rel) == sha for rel, sha in files):
            carried[entry["name"]] = dict(scores)  # else: scored again, which names what is wrong
    return carried


def _file_sha256(path: Path) -> str | None:
    try:
        return sha256_bytes(path.read_bytes())
    except OSError:
        return None


def record_missing_stages(store: ModelStore, plugins: Plugins, data: Mapping[str, Any] | None = None) -> list[str]:
    """Compute and store the metrics rows an interrupted training did not record (`pbgan eval`);
    `data` as for `evaluate_task`."""
    if not store.missing_stages():
        return []
    with store.transaction():  # asked again under the lock: another command may have recorded them
        missing = store.missing_stages()
        for after in missing:
            evaluate_all(store, plugins, after, data=data)
        if missing:
            rewrite_model_card(store, missing[-1])
    return missing
