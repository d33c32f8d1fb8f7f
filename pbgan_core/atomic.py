"""Atomic writes: a reader sees the old file or the new one, never half of either.

`fault_hook`, when set (by tests only), is called at every write point: "write" before the data
goes to a temporary file, "replace" when the data is on disk and is about to be published under
its name, "remove" before a file is deleted. A hook that raises or ends the process there shows
what a full disk, Ctrl-C or `kill -9` at that moment leaves behind.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

from .errors import PbganError

TMP_SUFFIX = ".tmp"
fault_hook: Callable[[str, Path], None] | None = None


def fault_point(stage: str, path: Path) -> None:
    if fault_hook is not None:
        fault_hook(stage, Path(path))


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder. With overwrite=False an
    existing file is never replaced, not even one that appears while writing. Folders it creates
    are removed again when the write fails."""
    path = Path(path)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty_folders(created)
        raise PbganError(f"cannot create the folder {path.parent}: {exc.strerror}; give a writable folder "
                         "path") from None
    if not overwrite and path.exists():
        raise PbganError(f"{path} exists already and is never rewritten; choose another name or model directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        remove_empty_folders(created)
        raise PbganError(f"cannot write to {path.parent}: {exc.strerror}; check permissions and free space") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            fault_point("write", path)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("replace", path)
        if overwrite:
            _refuse_special(path)
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobber
            os.unlink(tmp)
    except BaseException as exc:  # Ctrl-C included: no temporary file is left behind
        Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(created)
        if isinstance(exc, FileExistsError):
            raise PbganError(f"{path} exists already and is never rewritten") from None
        if isinstance(exc, OSError):
            raise PbganError(f"cannot write {path}: {exc.strerror}; check permissions and free space") from None
        raise
    _fsync_dir(path.parent)


def _refuse_special(path: Path) -> None:
    """Only a regular file is ever replaced: never a device, a pipe, a socket or a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise PbganError(f"{path} exists and is not a regular file (a device, pipe, folder or link); it is never "
                         "replaced: choose another output path")


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree (nothing if it is gone)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    fault_point("remove", path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PbganError(f"cannot remove {path}: {exc.strerror}; check permissions") from None


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def is_temporary(path: Path) -> bool:
    """A temporary file of `atomic_write_bytes` (left behind only by a killed process)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


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
