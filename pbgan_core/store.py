"""The model store: one directory per lifelong model.

    manifest.json            tasks in order, options, fingerprints, file hashes, metrics
    bank/0001-NAME.safetensors   filters each task added to the bank (append-only)
    tasks/0001-NAME.safetensors  everything else each task's forward needs
    probes/0001-NAME.safetensors the task's probe output and its entry, recorded at the commit
    checkpoints/NAME/        the state of a task being trained, until the manifest names it
    logs/                    training logs (not model files: never leftovers, never a task's name)

Every change happens inside `ModelStore.transaction()`: the directory's lock is taken first and
the manifest re-read under it, so two commands never write over each other's tasks. Writes are
atomic, and a task becomes part of the model only when the manifest naming it is written (the
commit point). Task and bank files are written once and never rewritten. Files that no manifest
entry names are leftovers of an interrupted command: never data, and never a reason to refuse a
name; the next commit (or `pbgan gc`) removes them. A manifest is written before the first task's
files, so task or bank files without a manifest are a damaged model (`pbgan recover` rebuilds it
from the entry each task file records), never an empty one. Nothing is read or written through a
symbolic link: a linked folder would let one model's commands write or delete another's files.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .atomic import atomic_write_bytes, is_temporary, remove_path, sha256_bytes
from .bank import FilterBank, Segment
from .errors import PbganError
from .lock import LOCK_NAME, model_lock
from .manifest import (FORMAT, NAME_PATTERN, check_entry_unedited, check_task_name, empty_manifest,  # noqa: F401
                       entry_record, file_name, validate)
from .tensorfile import read_header
from .tensorfile import read_metadata as _safetensors_metadata
from .tensorfile import save_bytes

# Options that shape a task's function, by the manifest format that added them, with the value every
# task written in an earlier format had: a stored task never takes a default of the running version.
OPTIONS_ADDED = {
    # piggyback before format 2: coefficients not rescaled (tasks written before --coef-scale lack
    # it), free filters copied from the previous task, every layer's share of free filters alike
    2: {"coef_scale": 1.0, "free_init": "copy", "free_last": False, "mix_free": False, "allocation": "uniform"},
    # piggyback --allocation small-free before format 3 stored what --lambda in every layer would
    3: {"budget": 0.0},
    # piggyback before format 4 combined the whole bank
    4: {"bank_limit": 0.0},
    # piggyback before format 5 took a bounded task's rows from any number of bank files, and
    # combined the bank filters at their stored size
    5: {"bank_segments": 0, "unit_rows": False},
}
MODEL_DIR_ENV = "PBGAN_MODEL_DIR"
DEFAULT_MODEL_DIR = "pbgan-model"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
# task and bank files (NNNN-NAME.safetensors) and the temporary files of their atomic writes
STORED_FILE = re.compile(r"^\.?\d{4}-[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors(\.[A-Za-z0-9_]+\.tmp)?$")
WHOLE_FILE = re.compile(r"^(\d{4})-([A-Za-z0-9][A-Za-z0-9._-]*)\.safetensors$")
# entry fields that depend on the task's stored files or on the run, so its task file does not record them
NOT_RECORDED = ("sha256", "bank_sha256", "probe_sha256", "metrics", "metrics_protocol", "train")
# temporary files of the manifest's and the generated README's atomic writes
MANIFEST_TEMPORARY = re.compile(r"^\.(manifest\.json|README\.md)\.[A-Za-z0-9_]+\.tmp$")


def stored_options(entry: dict[str, Any]) -> dict[str, Any]:
    """The options a task was written with, including those its format had implicitly."""
    written = int(entry.get("format", 1))  # entries of format 1 did not record it
    options: dict[str, Any] = {}
    for added, values in sorted(OPTIONS_ADDED.items()):
        if written < added:
            options.update({k: v for k, v in values.items() if k not in options})
    return {**options, **entry["options"]}


def default_model_dir() -> Path:
    return Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR))


def model_dir_containing(path: Path, root: Path | None = None) -> Path | None:
    """The pbgan model directory `path` is (or lies) in: `root`, or any folder laid out as one."""
    path = Path(path).resolve()
    root = Path(root).resolve() if root is not None else None
    for folder in (path, *path.parents):
        if folder == root or all((folder / p).exists() for p in ("manifest.json", "tasks", "bank")):
            return folder
    return None


def refuse_links(root: Path, paths) -> None:
    """Refuse any of `paths` (inside the model directory `root`) that is a symbolic link or
    resolves outside `root`."""
    top = Path(root).resolve()
    for path in paths:
        if path.is_symlink():
            raise PbganError(f"{path} is a symbolic link (to {os.readlink(path)}); pbgan never reads or writes a "
                             "model through links: replace it with the folder or file itself")
        if path.exists() and not path.resolve().is_relative_to(top):
            raise PbganError(f"{path} resolves outside the model directory {root}; move the model's files into it")


class DamagedModel(PbganError):
    """Task or bank files without the manifest that names them."""


def refuse_inside_model(path: Path, root: Path | None = None) -> None:
    """Only the store writes into a model directory: outputs go elsewhere."""
    inside = model_dir_containing(path, root)
    if inside is not None:
        raise PbganError(f"{path} is inside the model directory {inside}; write outputs to a folder outside it")


class ModelStore:
    def __init__(self, root: Path | str, *, recovering: bool = False):
        self.root = Path(root)
        self._recovering = recovering  # `pbgan recover`: a missing manifest is what it rebuilds
        if self.root.exists() and not self.root.is_dir():
            raise PbganError(f"--model-dir {self.root} is a file, not a model directory; give a folder path")
        self.manifest_path = self.root / "manifest.json"
        self.manifest = self._read_manifest()
        self._locked = False
        # bank segments already read and verified: files are never rewritten, so switching
        # tasks in one process reads only the task's own file
        self._segments: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._shapes: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}  # from bank files' headers

    # --- manifest -------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the manifest again (a reader that relies on another process holding the lock)."""
        self.manifest = self._read_manifest()

    def _read_manifest(self) -> dict[str, Any]:
        self._refuse_links()
        try:
            text = self.manifest_path.read_text()
        except (FileNotFoundError, NotADirectoryError):  # no model yet (or a path below a file: said on writing)
            found = self.stored_files()
            if found and not self._recovering:
                raise DamagedModel(f"{self.manifest_path} is missing, but {self.root} holds {len(found)} task and "
                                   f"bank file(s): the model is damaged, not empty; run `pbgan recover --model-dir "
                                   f"{self.root}` to rebuild the manifest from them") from None
            return empty_manifest()
        except (OSError, UnicodeDecodeError) as exc:
            raise PbganError(f"{self.manifest_path} is unreadable ({exc}); restore it from a backup") from None
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise PbganError(f"{self.manifest_path} is unreadable ({exc}); restore it from a backup, or without "
                             f"one move it out of {self.root} and run `pbgan recover`") from None
        return validate(manifest, self.manifest_path)

    def save_manifest(self) -> None:
        self._check_locked()
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
    def transaction(self) -> Iterator["ModelStore"]:
        """Hold the model directory's lock and work on the manifest as it is now. A manifest read
        before the lock may be stale (another command may have stored a task meanwhile), so it is
        read again here; every method that writes refuses to run outside a transaction."""
        with model_lock(self.root):
            self.manifest = self._read_manifest()
            self._locked = True
            try:
                yield self
            finally:
                self._locked = False

    def _check_locked(self) -> None:
        if not self._locked:
            raise RuntimeError(f"{self.root} written without its lock: use ModelStore.transaction()")

    def _refuse_links(self) -> None:
        """The model's folders, and everything directly in them, must be its own."""
        if not self.root.is_dir():
            return
        paths = [self.root / name for name in ("manifest.json", LOCK_NAME, "tasks", "bank", CHECKPOINTS)]
        refuse_links(self.root, paths)
        for folder in paths[2:]:
            if folder.is_dir():
                refuse_links(self.root, folder.iterdir())
        if (self.root / CHECKPOINTS).is_dir():  # checkpoints/TASK/ holds the files
            for folder in (self.root / CHECKPOINTS).iterdir():
                if folder.is_dir():
                    refuse_links(self.root, folder.iterdir())

    def stored_files(self) -> list[Path]:
        """Task and bank files (whole ones, not temporaries) in the model directory."""
        return [p for folder in ("tasks", "bank") if (self.root / folder).is_dir()
                for p in sorted((self.root / folder).iterdir()) if WHOLE_FILE.match(p.name)]

    # --- leftovers ------------------------------------------------------------------
    def leftovers(self) -> list[Path]:
        """Files no manifest entry names: task and bank files of an interrupted commit, temporary
        files of a killed write, checkpoints of tasks already stored. Only names pbgan writes
        count: anything else in the directory is not pbgan's and is left alone."""
        named = {entry[key] for entry in self.tasks for key in ("file", "bank_file", "probe_file") if key in entry}
        found = []
        for folder in ("tasks", "bank", "probes"):
            if (self.root / folder).is_dir():
                found += [p for p in sorted((self.root / folder).iterdir())
                          if STORED_FILE.match(p.name) and f"{folder}/{p.name}" not in named]
        if self.root.is_dir():
            found += [p for p in sorted(self.root.iterdir()) if MANIFEST_TEMPORARY.match(p.name)]
        if (self.root / CHECKPOINTS).is_dir():
            for folder in sorted((self.root / CHECKPOINTS).iterdir()):
                if self.has_task(folder.name):
                    found.append(folder)
                elif folder.is_dir():
                    found += [p for p in sorted(folder.iterdir()) if is_temporary(p)]
        return found

    def remove_leftovers(self) -> list[Path]:
        self._check_locked()
        found = self.leftovers()
        for path in found:
            remove_path(path)
        return found

    # --- tensors --------------------------------------------------------------------
    def _write_tensors(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
        data = save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
        atomic_write_bytes(self.root / rel, data, overwrite=False)
        return sha256_bytes(data)

    def read_tensors(self, rel: str, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        path = self.root / rel
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PbganError(f"{path} is missing; the model directory is incomplete (run `pbgan verify`)") from None
        except OSError as exc:
            raise PbganError(f"cannot read {path}: {exc.strerror}; check permissions") from None
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
        return file_name(index, name)

    def add_task(self, entry: dict[str, Any], task_tensors: dict[str, torch.Tensor],
                 new_filters: dict[str, torch.Tensor], bank_fingerprint: str,
                 finish: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Store a task: remove leftovers, write its files, let `finish(entry)` complete the entry
        (it can already load the task), then write the manifest that names them: the commit point.
        On any failure before that the task's files are removed again and the model is as before."""
        self._check_locked()
        if self.has_task(entry["name"]):
            raise PbganError(f"task {entry['name']!r} exists already in {self.root}; choose another --task name")
        self.remove_leftovers()
        index = len(self.tasks) + 1
        fname = self.file_name(index, entry["name"])
        meta = {"format": str(FORMAT), "task": entry["name"], "index": str(index),
                "bank_fingerprint": bank_fingerprint, "bank_segments": str(index - 1)}
        entry.update(index=index, format=FORMAT, file=f"tasks/{fname}", bank_file=f"bank/{fname}",
                     bank_fingerprint=bank_fingerprint)
        recorded = {k: v for k, v in entry.items() if k not in NOT_RECORDED}
        created = not self.exists
        if created:  # task files without a manifest would be a damaged model, not leftovers
            self.save_manifest()
        written = []
        try:
            entry["sha256"] = self._write_tensors(
                entry["file"], task_tensors, {**meta, "entry": json.dumps(recorded, sort_keys=True)})
            written.append(entry["file"])
            entry["bank_sha256"] = self._write_tensors(entry["bank_file"], new_filters, {**meta, "kind": "bank"})
            written.append(entry["bank_file"])
            self.tasks.append(entry)
            if finish is not None:
                finish(entry)
            self.save_manifest()
        except BaseException:
            if not self._committed(entry):
                if self.tasks and self.tasks[-1] is entry:
                    self.tasks.pop()
                written += [entry["probe_file"]] if "probe_file" in entry else []
                for rel in written:
                    with contextlib.suppress(Exception):  # best effort: what stays is a leftover
                        (self.root / rel).unlink(missing_ok=True)
                if created and not self.stored_files():
                    with contextlib.suppress(Exception):
                        self.manifest_path.unlink()
            raise

    def _committed(self, entry: dict[str, Any]) -> bool:
        """Whether the manifest on disk names the entry's files after all (an interrupt that came
        just after the commit point)."""
        try:
            on_disk = json.loads(self.manifest_path.read_text()).get("tasks", [])
            return any(isinstance(t, dict) and t.get("file") == entry.get("file") for t in on_disk)
        except (OSError, ValueError, AttributeError):
            return False

    def add_probe(self, entry: dict[str, Any], outputs: dict[str, torch.Tensor]) -> None:
        """Record a task's probe outputs with a copy of its entry, from `add_task`'s `finish`: the
        file is written once, like the task's other files, and named by the entry."""
        self._check_locked()
        rel = f"probes/{self.file_name(entry['index'], entry['name'])}"
        meta = {"task": entry["name"], "index": str(entry["index"]), "kind": "probe", "entry": entry_record(entry)}
        entry["probe_file_sha256"] = self._write_tensors(rel, outputs, meta)
        entry["probe_file"] = rel

    def load_bank(self, length: int | None = None) -> FilterBank:
        """The bank as it stood after `length` tasks (all by default). Each segment's file is read,
        and checked against the manifest's hash, only when one of its filters is used; until then
        only its header (the shapes) is read."""
        bank = FilterBank()
        for entry in self.tasks[: len(self.tasks) if length is None else length]:
            key = (entry["bank_file"], entry["bank_sha256"])
            if key not in self._shapes:
                self._shapes[key] = self._segment_shapes(entry["bank_file"])
            bank.add(Segment(entry["name"], entry["bank_sha256"], self._segments.get(key), shapes=self._shapes[key],
                             read=lambda key=key: self._read_segment(key)))
        return bank

    def _read_segment(self, key: tuple[str, str]) -> dict[str, torch.Tensor]:
        if key not in self._segments:
            self._segments[key] = self.read_tensors(*key)[0]
        return self._segments[key]

    def _segment_shapes(self, rel: str) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, from a stored file's header alone (its bytes are checked when read)."""
        path = self.root / rel
        try:
            header = read_header(path)
            return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}
        except FileNotFoundError:
            raise PbganError(f"{path} is missing; the model directory is incomplete (run `pbgan verify`)") from None
        except OSError as exc:
            raise PbganError(f"cannot read {path}: {exc.strerror}; check permissions") from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PbganError(f"{path} is not a valid safetensors file ({exc}); restore it from a backup") from None

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
        check_entry_unedited(entry, self.manifest_path)
        return entry, tensors, new_filters, bank

    def write_file(self, rel: str, data: bytes) -> None:
        """Rewrite a file that is not part of any task (the generated README.md)."""
        self._check_locked()
        atomic_write_bytes(self.root / rel, data)

    def update_entry(self, name: str, **fields: Any) -> None:
        self._check_locked()
        self.task(name).update(fields)
        self.save_manifest()

    # --- the task-by-stage matrix ---------------------------------------------------
    def missing_stages(self) -> list[str]:
        """Tasks after which no metrics row was recorded (an interrupted final evaluation)."""
        have = {stage["after"] for stage in self.manifest.get("stages", [])}
        return [entry["name"] for entry in self.tasks if entry["name"] not in have]

    def record_stage(self, after: str, row: dict[str, dict[str, float]], protocol: str) -> None:
        """Store the metrics of every task so far as measured after training `after` under the
        test-time `protocol`, in training order."""
        self._check_locked()
        order = {entry["name"]: entry["index"] for entry in self.tasks}
        stages = [s for s in self.manifest.get("stages", []) if s["after"] != after]
        stages.append({"after": after, "protocol": protocol, "metrics": row})
        self.manifest["stages"] = sorted(stages, key=lambda s: order.get(s["after"], len(order) + 1))
        self.task(after).update(metrics=row[after], metrics_protocol=protocol)
        self.save_manifest()

