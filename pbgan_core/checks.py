"""A training request's own fields (size, steps, seed, ...) checked before any work, declared as
plugins declare their options: `pbgan train` and the Python API go through the same checks."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .distributed import PRECISIONS
from .engine import DIRECTIONS, TrainRequest
from .errors import UsageError
from .options import Option

# Each epoch's data order is seeded with seed * 100_003 + epoch, which torch.manual_seed must
# accept (below 2**64); numpy's seed range keeps it far from that.
SEED_MAX = 2**32 - 1

REQUEST_FIELDS = (
    Option("task", ""),
    Option("size", None, type=int, min=8),  # None: the model's first task's, else 256
    Option("steps", None, type=int, min=1),
    Option("epochs", None, type=int, min=0),
    Option("epochs-decay", None, type=int, min=0),
    Option("batch-size", 1, min=1),
    Option("seed", 0, min=0, max=SEED_MAX),
    Option("checkpoint-every", 200, min=0),
    Option("precision", "fp32", choices=tuple(PRECISIONS)),
    Option("direction", "AtoB", choices=DIRECTIONS),
    Option("device", "auto"),
    Option("resume", False),
    Option("log-every", 10, min=1),
    Option("sample-every", 0, min=0),  # 0: ten times a run
)
NPROC = Option("nproc", 1, min=1)


def check_request(request: TrainRequest) -> TrainRequest:
    """The request with its fields checked (ints stay ints, numbers within range); one-line
    error naming the option otherwise."""
    values = {o.key: o.check(getattr(request, o.key)) for o in REQUEST_FIELDS}
    return dataclasses.replace(request, **values)


def as_path(value: Any, name: str) -> Path:
    """A folder or file given as a string or a path."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{name} must be a path, got {value!r}")
    return Path(value)
