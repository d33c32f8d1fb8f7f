"""Scaling one task's training: several processes (torchrun) and mixed precision.

With WORLD_SIZE > 1 (set by torchrun) every process trains on its own shard of each
epoch's order; the gradient of every trainable parameter is averaged across processes as
backward produces it, so all processes take the same optimizer steps from the same initial
weights (broadcast from rank 0). Only rank 0 writes to the model directory. BatchNorm
running statistics are not synchronized: each process keeps its own, and rank 0's are stored.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .errors import PbganError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    return ranks_from_env().main


def start(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA, one GPU per
    process); a single process changes nothing."""
    ranks = ranks_from_env()
    if ranks.world == 1:
        return ranks, device
    if device.type == "cuda":
        if ranks.local >= torch.cuda.device_count():
            raise PbganError(f"process {ranks.rank} wants cuda:{ranks.local} but only {torch.cuda.device_count()} "
                             "GPU(s) are visible; start at most one process per GPU")
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                                world_size=ranks.world)
    return ranks, device


def finish(ranks: Ranks) -> None:
    """Wait until every process is done (rank 0 stores the task meanwhile), then leave."""
    if ranks.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def read_manifest_under_main_lock(store: Any, ranks: Ranks) -> None:
    """The other processes read the manifest again once process 0 holds the model's lock (and
    has read it under the lock), so every process sees the same tasks and bank."""
    if ranks.world > 1:
        dist.barrier()
        if not ranks.main:
            store.refresh()


def shard(order: Sequence[int], ranks: Ranks) -> list[int]:
    """This process's part of an epoch's order: every world-th index, the remainder left out,
    so shards are disjoint and of equal length (every process takes the same number of steps)."""
    usable = len(order) - len(order) % ranks.world
    return list(order[ranks.rank:usable:ranks.world])


def trainer_modules(generators: dict[str, nn.Module], trainer: Any) -> list[nn.Module]:
    """The generators and every nn.Module the trainer holds (its discriminators, losses), once each."""
    found: dict[int, nn.Module] = {}
    for module in [*generators.values(), *vars(trainer).values()]:
        if isinstance(module, nn.Module):
            found.setdefault(id(module), module)
    return list(found.values())


def _tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            seen.setdefault(id(t), t)
    return list(seen.values())


@torch.no_grad()
def broadcast_weights(modules: Iterable[nn.Module], ranks: Ranks) -> None:
    """Every parameter and buffer from rank 0, so all processes start from the same weights."""
    if ranks.world > 1:
        for t in _tensors(modules):
            buffer = t.data.contiguous()  # collectives need contiguous memory; views get a copy
            dist.broadcast(buffer, src=0)
            if buffer.data_ptr() != t.data.data_ptr():
                t.data.copy_(buffer)


def average_gradients(modules: Iterable[nn.Module], ranks: Ranks) -> None:
    """Average each trainable parameter's gradient across processes as soon as backward has
    accumulated it: before any optimizer step (and before a GradScaler looks for overflows,
    so every process skips or takes the same steps)."""
    if ranks.world == 1:
        return

    def hook(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(ranks.world)

    for t in _tensors(modules):
        if isinstance(t, nn.Parameter) and t.requires_grad:
            t.register_post_accumulate_grad_hook(hook)


WEIGHTS_HASH_DIR_ENV = "PBGAN_RANK_HASH_DIR"


def record_weights(modules: Iterable[nn.Module], ranks: Ranks) -> None:
    """With PBGAN_RANK_HASH_DIR set, each process writes there the hash of its parameters
    after training (rank<N>.sha256): equal hashes show the processes stayed in step."""
    folder = os.environ.get(WEIGHTS_HASH_DIR_ENV)
    if not folder:
        return
    h = hashlib.sha256()
    for t in _tensors(modules):
        if isinstance(t, nn.Parameter):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{ranks.rank}.sha256").write_text(h.hexdigest())


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training step runs in for --precision."""
    if precision not in PRECISIONS:
        raise PbganError(f"unknown --precision {precision!r}; use fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise PbganError("--precision fp16 needs a CUDA GPU; on CPU use --precision bf16 or fp32")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def enable_loss_scaling(trainer: Any, arch: str, device: torch.device) -> None:
    """fp16 gradients underflow without loss scaling: the trainer must route its backward
    passes and optimizer steps through its `scaler` (a torch.amp.GradScaler)."""
    if not isinstance(getattr(trainer, "scaler", None), torch.amp.GradScaler):
        raise PbganError(f"the {arch} trainer has no loss scaling, which fp16 needs; use --precision bf16 or fp32")
    trainer.scaler = torch.amp.GradScaler(device.type)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 30  # after a stop signal, the workers' time to release the model before they are killed


def launch(nproc: int, train_args: list[str]) -> int:
    """Run `pbgan train` with these arguments in `nproc` processes on this machine; the exit code.
    The launcher and its workers get a process group of their own: a stop signal sent to this
    process (Ctrl-C, kill) is passed to all of them, and they are killed if they outlive it by
    STOP_GRACE_S; then KeyboardInterrupt is raised here."""
    if nproc < 2:
        raise PbganError(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "pbgan_core", "train", *train_args]
    group = subprocess.Popen(cmd, start_new_session=True)
    stopped: list[float] = []

    def stop(signum: int, frame: Any) -> None:
        stopped.append(time.monotonic())
        _signal_group(group, signum)

    handlers = _handle(STOP_SIGNALS, stop)
    try:
        while group.poll() is None:
            if stopped and time.monotonic() - stopped[0] > STOP_GRACE_S:
                _signal_group(group, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                group.wait(timeout=0.2)
    finally:
        _handle(handlers)
        if group.poll() is None:  # an exception here: leave no worker behind
            _signal_group(group, signal.SIGKILL)
            group.wait()
    if stopped:
        raise KeyboardInterrupt
    return group.returncode


def _handle(signals, handler: Any = None) -> dict:
    """Install `handler` for `signals` (or, given a dict, restore those handlers); the previous
    ones. Only the main thread may handle signals: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    pairs = signals.items() if isinstance(signals, dict) else ((s, handler) for s in signals)
    return {s: signal.signal(s, h) for s, h in pairs}


def _signal_group(group: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group.pid, signum)


def train_arguments(req: Any, extra_args: list[str]) -> list[str]:
    """The `pbgan train` arguments that repeat this request (a TrainRequest) in each process."""
    args = ["--arch", req.arch, "--task", req.task, "--data", str(req.data), "--model-dir", str(req.model_dir),
            "--direction", req.direction,
            "--batch-size", str(req.batch_size), "--factorizer", req.factorizer, "--device", req.device,
            "--seed", str(req.seed), "--checkpoint-every", str(req.checkpoint_every), "--precision", req.precision]
    for flag, value in (("--size", req.size), ("--steps", req.steps), ("--epochs", req.epochs),
                        ("--epochs-decay", req.epochs_decay),
                        ("--dataset", req.dataset),
                        ("--derive", req.extra.get("derive"))):
        if value is not None:
            args += [flag, str(value)]
    args += [a for name in req.loggers for a in ("--logger", name)] or ["--logger", "none"]
    args += ["--log-every", str(req.log_every), "--sample-every", str(req.sample_every)]
    return args + (["--resume"] if req.resume else []) + list(extra_args)
