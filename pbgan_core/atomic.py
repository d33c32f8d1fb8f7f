"""Atomic writes: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import PbganError


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise PbganError(f"{path} exists already and is never rewritten; choose another name or model directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PbganError(f"cannot write to {path.parent}: {exc.strerror}; check permissions and free space") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobber
            os.unlink(tmp)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise PbganError(f"{path} exists already and is never rewritten") from None
        raise PbganError(f"cannot write {path}: {exc.strerror}; check permissions and free space") from None
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
