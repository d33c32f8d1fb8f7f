"""The model store: one directory per lifelong model.

    manifest.json            tasks in order, options, fingerprints, file hashes, metrics
    bank/0001-NAME.safetensors   filters each task added to the bank (append-only)
    tasks/0001-NAME.safetensors  everything else each task's forward needs

Every write is atomic; task and bank files are written once and never rewritten.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .atomic import atomic_write_bytes, sha256_bytes
from .bank import FilterBank
from .errors import PbganError

FORMAT = 1
MODEL_DIR_ENV = "PBGAN_MODEL_DIR"
DEFAULT_MODEL_DIR = "pbgan-model"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_model_dir() -> Path:
    return Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR))


def check_task_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise PbganError(f"task name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                         "(at most 64, starting with a letter or digit)")
    return name


class ModelStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = self._read_manifest()
        # bank segments already read and verified: files are never rewritten, so switching
        # tasks in one process reads only the task's own file
        self._segments: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    # --- manifest -------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": FORMAT, "pbgan": __version__, "tasks": []}
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise PbganError(f"{self.manifest_path} is unreadable ({exc}); restore it from a backup") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), list):
            raise PbganError(f"{self.manifest_path} is not a pbgan manifest; point --model-dir at a pbgan model")
        fmt = manifest.get("format")
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise PbganError(f"{self.manifest_path} has format {fmt!r}, newer than this pbgan understands "
                             f"({FORMAT}); upgrade pbgan")
        return manifest

    def save_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=False).encode() + b"\n"
        atomic_write_bytes(self.manifest_path, data)

    @property
    def exists(self) -> bool:
        return self.manifest_path.exists()

    @property
    def tasks(self) -> list[dict[str, Any]]:
        return self.manifest["tasks"]

    def task(self, name: str) -> dict[str, Any]:
        for entry in self.tasks:
            if entry["name"] == name:
                return entry
        known = ", ".join(t["name"] for t in self.tasks) or "none yet"
        raise PbganError(f"no task {name!r} in {self.root}; tasks: {known} (see `pbgan tasks`)")

    def has_task(self, name: str) -> bool:
        return any(t["name"] == name for t in self.tasks)

    # --- lock -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                pid = _read_pid(path)
                if pid is not None and not _alive(pid):
                    path.unlink(missing_ok=True)  # the holder died: its lock is stale
                    continue
                raise PbganError(f"{self.root} is in use by another pbgan process (pid {pid}, lock {path}); "
                                 "wait for it to finish, or delete the lock file if that process is gone") from None
            except OSError as exc:
                raise PbganError(f"cannot lock {self.root}: {exc.strerror}; check permissions") from None
        else:
            raise PbganError(f"cannot take the lock {path}; delete it if no pbgan process is running")
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            yield
        finally:
            path.unlink(missing_ok=True)

    # --- tensors --------------------------------------------------------------------
    def _write_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
        data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
        atomic_write_bytes(self.root / rel, data, overwrite=False)
        return sha256_bytes(data)

    def read_tensors(self, rel: str, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        path = self.root / rel
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PbganError(f"{path} is missing; the model directory is incomplete (run `pbgan verify`)") from None
        if expected_sha256 and sha256_bytes(data) != expected_sha256:
            raise PbganError(f"{path} does not match the hash in manifest.json: it was changed or damaged; "
                             "restore it from a backup")
        try:
            tensors = st_load(data)
            metadata = _safetensors_metadata(data)
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise PbganError(f"{path} is not a valid safetensors file ({exc}); restore it from a backup") from None
        return tensors, metadata

    def file_name(self, index: int, name: str) -> str:
        return f"{index:04d}-{name}.safetensors"

    def add_task(self, entry: dict[str, Any], task_tensors: dict[str, torch.Tensor],
                 new_filters: dict[str, torch.Tensor], bank_fingerprint: str) -> None:
        """Write the task's files, then the manifest that names them (the commit point)."""
        if self.has_task(entry["name"]):
            raise PbganError(f"task {entry['name']!r} exists already in {self.root}; choose another --task name")
        index = len(self.tasks) + 1
        fname = self.file_name(index, entry["name"])
        meta = {"format": str(FORMAT), "task": entry["name"], "index": str(index),
                "bank_fingerprint": bank_fingerprint, "bank_segments": str(index - 1)}
        entry["index"] = index
        entry["file"] = f"tasks/{fname}"
        entry["sha256"] = self._write_tensors(entry["file"], task_tensors, meta)
        entry["bank_file"] = f"bank/{fname}"
        entry["bank_sha256"] = self._write_tensors(entry["bank_file"], new_filters, {**meta, "kind": "bank"})
        entry["bank_fingerprint"] = bank_fingerprint
        self.tasks.append(entry)
        self.save_manifest()

    def load_bank(self, length: int | None = None) -> FilterBank:
        """The bank as it stood after `length` tasks (all by default), verified against the manifest."""
        bank = FilterBank()
        for entry in self.tasks[: len(self.tasks) if length is None else length]:
            key = (entry["bank_file"], entry["bank_sha256"])
            if key not in self._segments:
                self._segments[key] = self.read_tensors(*key)[0]
            bank.append(entry["name"], self._segments[key], entry["bank_sha256"])
        return bank

    def load_task(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor], FilterBank]:
        """(manifest entry, task tensors, its new filters, the bank prefix it trained on)."""
        entry = self.task(name)
        index = entry["index"]
        tensors, meta = self.read_tensors(entry["file"], entry["sha256"])
        bank = self.load_bank(index)
        new_filters = bank.segments[index - 1].tensors
        bank.segments.pop()
        needed = meta.get("bank_fingerprint")
        if needed != bank.fingerprint():
            raise PbganError(f"{self.root / entry['file']} was trained against another filter bank "
                             f"(fingerprint {str(needed)[:12]}, this model has {bank.fingerprint()[:12]}): "
                             "it belongs to a different model directory")
        return entry, tensors, new_filters, bank

    def update_entry(self, name: str, **fields: Any) -> None:
        self.task(name).update(fields)
        self.save_manifest()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])
    return header.get("__metadata__", {}) or {}


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
