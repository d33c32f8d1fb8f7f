"""Rebuilding a lost manifest.json from the task files themselves (`pbgan recover`).

Every task file records its name, index, the fingerprint of the bank it trained against and its
manifest entry (all but the fields that depend on the stored files, which are recomputed: the
hashes and the probe output). Tasks are rebuilt in index order, each one's recorded fingerprint
checked against the bank rebuilt from the bank files before it. The metrics rows are not
recorded in the files; `pbgan eval` measures them again. Nothing is written unless every task
file can be rebuilt, so no file a lost manifest named ever becomes a leftover that `gc` removes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import sha256_bytes
from .bank import FilterBank
from .errors import PbganError
from .manifest import FORMAT, entry_sha256, file_name
from .store import WHOLE_FILE, ModelStore


def _rebuilt_entry(store: ModelStore, index: int, name: str, bank: FilterBank) -> dict[str, Any]:
    """The manifest entry of task `index`, checked against the bank before it; appends its filters to `bank`."""
    rel = f"tasks/{file_name(index, name)}"
    _, meta = store.read_tensors(rel, None)
    if meta.get("task") != name or meta.get("index") != str(index):
        raise PbganError(f"{store.root / rel} records task {meta.get('task')!r} at index {meta.get('index')}, "
                         "not what its name says")
    if meta.get("bank_fingerprint") != bank.fingerprint():
        raise PbganError(f"{store.root / rel} was trained against another filter bank than the bank files before "
                         "it: it belongs to another model")
    if "entry" not in meta:
        raise PbganError(f"{store.root / rel} was written by an older pbgan and records only its name, index and "
                         "bank fingerprint, not its architecture and options")
    bank_rel = f"bank/{file_name(index, name)}"
    filters, _ = store.read_tensors(bank_rel, None)
    entry = json.loads(meta["entry"])
    entry["sha256"] = sha256_bytes((store.root / rel).read_bytes())
    entry["bank_sha256"] = sha256_bytes((store.root / bank_rel).read_bytes())
    bank.append(name, filters, entry["bank_sha256"])
    return entry


def _recover_probe(store: ModelStore, plugins, entry: dict[str, Any]) -> None:
    """The task's recorded probe outputs, from its probe file where one was written (verify then
    compares them with what the files compute now), else computed now and recorded."""
    from .engine import outputs_sha256, probe_task_outputs

    rel = f"probes/{file_name(entry['index'], entry['name'])}"
    if (store.root / rel).is_file():
        outputs, _ = store.read_tensors(rel, None)
        entry.update(probe_file=rel, probe_file_sha256=sha256_bytes((store.root / rel).read_bytes()))
    else:
        outputs = probe_task_outputs(store, plugins, entry["name"])
        store.add_probe(entry, outputs)
    entry["probe_sha256"] = outputs_sha256(outputs)


def recover_manifest(root: Path, plugins) -> list[str]:
    """Rebuild and write the manifest of the damaged model in `root` under its lock; the names of
    the tasks recovered. A PbganError, and nothing written, when any task file cannot be rebuilt."""
    store = ModelStore(root, recovering=True)
    with store.transaction():
        if store.exists:
            raise PbganError(f"{store.manifest_path} exists: there is nothing to recover; `pbgan verify "
                             f"--model-dir {root}` checks the model")
        found: dict[int, set[str]] = {}
        for path in store.stored_files():
            number, name = WHOLE_FILE.match(path.name).groups()
            found.setdefault(int(number), set()).add(name)
        if not found:
            raise PbganError(f"no task or bank files in {root}: there is no model to recover")
        bank, entries = FilterBank(), []
        for index in range(1, max(found) + 1):
            names = sorted(found.get(index, ()))
            where = f"{root}/tasks/{index:04d}-*"
            if len(names) != 1 or not all((store.root / f / file_name(index, names[0])).is_file()
                                          for f in ("tasks", "bank")):
                raise PbganError(f"task {index} cannot be recovered: {where} needs exactly one task file and "
                                 f"its bank file (found {', '.join(names) or 'none'}); nothing was written. "
                                 "Restore manifest.json from a backup, or move the files from task "
                                 f"{index} on out of {root} and recover the tasks before it")
            try:
                entries.append(_rebuilt_entry(store, index, names[0], bank))
            except PbganError as exc:
                raise PbganError(f"task {index} cannot be recovered: {exc}; nothing was written. Restore "
                                 f"manifest.json from a backup, or move the files from task {index} on out of "
                                 f"{root} and recover the tasks before it") from None
        store.manifest = {"format": FORMAT, "pbgan": __version__, "tasks": []}
        for entry in entries:
            store.tasks.append(entry)
            _recover_probe(store, plugins, entry)
            entry["entry_sha256"] = entry_sha256(entry)  # last: it covers every field written so far
        store.save_manifest()
    return [entry["name"] for entry in entries]
