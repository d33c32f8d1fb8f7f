"""The model-directory lock: one writing pbgan command per model directory at a time.

An advisory `flock` on MODEL_DIR/.lock, so the kernel releases it when its holder dies, even by
`kill -9`; the file holds the holder's pid for the message (none on a full disk: taking the
lock writes nothing else, so `pbgan gc` still runs there). The directory is created when the
lock is taken and removed again on release if the command left nothing in it: a command that
fails before it writes anything leaves no empty model directory behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .atomic import remove_empty_folders
from .errors import PbganError

LOCK_NAME = ".lock"


class ModelInUse(PbganError):
    """Another process holds the model directory's lock."""


def _make_dirs(root: Path) -> list[Path]:
    """Create `root` and its missing parents; return those created, deepest first."""
    missing = []
    folder = root
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PbganError(f"--model-dir {root} is a file, not a model directory; give a folder path") from None
    except OSError as exc:
        raise PbganError(f"cannot create the model directory {root}: {exc.strerror}; give a writable folder "
                         "path") from None
    return missing


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _acquire(root: Path, created: list[Path]) -> int:
    path = root / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:  # another command removed the empty directory just now
            created += _make_dirs(root)
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PbganError(f"{path} is a symbolic link; pbgan never writes a model through links: "
                                 "delete it and run the command again") from None
            raise PbganError(f"cannot lock {root}: {exc.strerror}; check permissions and free space") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise ModelInUse(f"{root} is in use by another pbgan process ({holder}); wait for it to finish "
                             "and run the command again") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file while we opened it: lock the new one
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError:  # a full disk: the pid only names the holder in messages; gc must still run
                pass
            return fd
        os.close(fd)


@contextlib.contextmanager
def model_lock(root: Path) -> Iterator[None]:
    root = Path(root)
    created = _make_dirs(root)
    try:
        fd = _acquire(root, created)
    except BaseException:
        remove_empty_folders(created)  # only if empty: nothing was written
        raise
    try:
        yield
    finally:
        (root / LOCK_NAME).unlink(missing_ok=True)  # while still held: nobody can lock the old file
        os.close(fd)
        remove_empty_folders(created)


def lock_holder(root: Path) -> str | None:
    """'pid N' when a live process holds the lock of `root`, else None. Reads the pid only (the
    file exists while its holder runs, or after a holder was killed): takes no lock itself."""
    try:
        text = (Path(root) / LOCK_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"pid {text}"
