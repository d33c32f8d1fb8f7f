"""Reading torch-pickled weights safely: torch.load(weights_only=True), with our own one-line
messages instead of the loader's (which carry terminal colour codes and advise unsafe loading)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import PbganError


def load_weights_only(path: str | Path, what: str = "checkpoint") -> Any:
    """The tensors (and plain containers) in a torch.save file; no code in it ever runs."""
    path = Path(path)
    unreadable = PbganError(f"{what} {path} is not a readable PyTorch checkpoint (damaged, truncated or another "
                            "format); give a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PbganError(f"{what} {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        # a torch.save archive (or a pickle naming a class) that holds more than tensors
        if zipfile.is_zipfile(path) or "Unsupported global" in str(exc):
            raise PbganError(f"{what} {path} is not a weights-only checkpoint (it holds Python objects that would "
                             "need code to run to load); it is not loaded: give a plain state dict of tensors") from None
        raise unreadable from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise unreadable from None
