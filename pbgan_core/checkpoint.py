"""Training checkpoints: everything needed to continue an interrupted task exactly.

One safetensors file per task in MODEL_DIR/checkpoints/<task>/: the tensors (generators,
discriminators, optimizer moments, RNG states) as safetensors, and the nested structure
around them (steps, hyperparameters, the request) as JSON in the file's metadata. One
file, written atomically, so a checkpoint is always whole. Nothing is ever unpickled. A
checkpoint kept when storing a finished task failed may hold the generators only (no trainer
or RNG state): resuming it stores the task without training.
"""
from __future__ import annotations

import json
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .atomic import atomic_write_bytes, remove_path
from .errors import PbganError
from .store import refuse_links
from .tensorfile import save_bytes

FORMAT = 1
FILE_NAME = "checkpoint.safetensors"
TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, scalars) into JSON and named tensors.

    Tensors become {"__tensor__": key}; tuples and dicts with non-string keys (optimizer
    state is keyed by parameter index) are tagged so `unflatten_state` restores them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if torch.is_tensor(x):
            tensors[path] = x.detach().cpu().clone(memory_format=torch.contiguous_format)  # no shared memory
            return {TENSOR: path}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {k: walk(v, f"{path}/{k}") for k, v in x.items()}
            return {DICT: [[k, walk(v, f"{path}/{k}")] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, np.ndarray):
            return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path or '/'} in a checkpoint")

    return walk(state, prefix), tensors


def unflatten_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if TENSOR in structure:
            return tensors[structure[TENSOR]]
        if TUPLE in structure:
            return tuple(unflatten_state(v, tensors) for v in structure[TUPLE])
        if DICT in structure:
            return {k: unflatten_state(v, tensors) for k, v in structure[DICT]}
        if "__ndarray__" in structure:
            return np.asarray(structure["__ndarray__"], dtype=structure["dtype"])
        return {k: unflatten_state(v, tensors) for k, v in structure.items()}
    return structure


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(model_dir: Path, task: str) -> Path:
    return Path(model_dir) / "checkpoints" / task


def checkpoint_path(model_dir: Path, task: str) -> Path:
    path = checkpoint_dir(model_dir, task) / FILE_NAME
    refuse_links(model_dir, [path.parent.parent, path.parent, path])  # never another model's checkpoint
    return path


def save_checkpoint(model_dir: Path, task: str, state: dict[str, Any]) -> Path:
    structure, tensors = flatten_state(state)
    meta = {"format": str(FORMAT), "task": task, "state": json.dumps(structure)}
    path = checkpoint_path(model_dir, task)
    atomic_write_bytes(path, save_bytes(tensors, metadata=meta))
    return path


def load_checkpoint(model_dir: Path, task: str) -> dict[str, Any] | None:
    """The saved state, or None when the task has no checkpoint."""
    path = checkpoint_path(model_dir, task)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PbganError(f"cannot read {path}: {exc.strerror}; check permissions") from None
    try:
        tensors = st_load(data)
        header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
        meta = header.get("__metadata__") or {}
        if meta.get("format") != str(FORMAT):
            raise ValueError(f"format {meta.get('format')!r}")
        return unflatten_state(json.loads(meta["state"]), tensors)
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise PbganError(f"{path} is not a usable pbgan checkpoint ({exc}); delete {path.parent} "
                         "and train the task again without --resume") from None


def remove_checkpoint(model_dir: Path, task: str) -> None:
    folder = checkpoint_path(model_dir, task).parent
    remove_path(folder)
    parent = folder.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


class DeferredInterrupt:
    """Ctrl-C during training sets `requested` instead of raising mid-step, so the loop can
    finish the step and checkpoint a consistent state. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
