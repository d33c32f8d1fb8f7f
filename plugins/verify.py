"""`pbgan verify`: prove a model directory is intact; `pbgan gc`: remove what interrupted
commands left behind; `pbgan recover`: rebuild a lost manifest from the task files.

For every task: its task, bank and probe files match the manifest's hashes and parse, its bank
prefix has the fingerprint it was trained on, its manifest entry matches its hash and the copy
its probe file keeps, every stored tensor has the shape the generator needs, and the rebuilt
generator reproduces the probe output recorded at training: bit for bit, or (on a machine whose
kernels round differently) within `PROBE_TOLERANCE`. Files no manifest entry names are listed as
leftovers: they are not part of the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import typer

from pbgan_core.bank import FilterBank
from pbgan_core.engine import PROBE_TOLERANCE, bank_for, outputs_sha256, probe_difference, probe_task_outputs
from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.lock import lock_holder
from pbgan_core.manifest import check_entry_plugins, edited_fields, entry_sha256
from pbgan_core.store import ModelStore, stored_options


@dataclass
class TaskCheck:
    name: str
    problems: list[str] = field(default_factory=list)  # FAIL: something stored changed
    notes: list[str] = field(default_factory=list)  # what could not be proven, and why that is no damage
    probe: str = ""  # how the recomputed probe output compares with the recorded one


def _read(store: ModelStore, rel: str, sha256: str | None, problems: list[str]):
    if not (store.root / rel).exists():
        problems.append(f"{store.root / rel} is missing; restore it from a backup")
        return None, None
    try:
        return store.read_tensors(rel, sha256)
    except PbganError as exc:
        problems.append(str(exc))
        return None, None


def _shape_problems(store: ModelStore, plugins, entry: dict[str, Any], tensors: dict[str, torch.Tensor],
                    new_filters: dict[str, torch.Tensor], bank: FilterBank) -> list[str]:
    """Compare every stored tensor with what the task's wrapped generator expects, by name."""
    arch = plugins.architectures.get(entry["arch"])
    factorizer = plugins.factorizers.get(entry["factorizer"])
    with torch.device("meta"):
        generators = arch.build_generators(stored_options(entry))
    problems = []
    for gname, gen in generators.items():
        factorizer.wrap(gen, bank_for(factorizer, bank, gname), stored_options(entry), initialize=False)
        lead = f"{gname}/"
        stored = factorizer.join({k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)},
                                 {k[len(lead):]: v for k, v in new_filters.items() if k.startswith(lead)})
        expected = gen.state_dict()
        for key in sorted(set(expected) - set(stored)):
            problems.append(f"{entry['file']}: tensor {gname}/{key} is missing")
        for key in sorted(set(stored) - set(expected)):
            problems.append(f"{entry['file']}: unexpected tensor {gname}/{key}")
        for key in sorted(set(stored) & set(expected)):
            if stored[key].shape != expected[key].shape:
                problems.append(f"{entry['file']}: tensor {gname}/{key} has shape {tuple(stored[key].shape)}, "
                                f"the generator needs {tuple(expected[key].shape)}")
    return problems


def _check_entry(store: ModelStore, entry: dict[str, Any], check: TaskCheck) -> dict[str, torch.Tensor] | None:
    """Compare the manifest entry with its hash and with the copy its probe file keeps; returns
    the recorded probe outputs (None for entries of an earlier pbgan, which recorded only a hash)."""
    recorded, meta = None, None
    if "probe_file" in entry:
        recorded, meta = _read(store, entry["probe_file"], entry["probe_file_sha256"], check.problems)
    edits = edited_fields(entry, meta["entry"]) if meta and "entry" in meta else []
    check.problems += [f"its manifest entry was edited: field {name!r} is {now}, it was stored as {then}"
                       for name, then, now in edits]
    if "entry_sha256" not in entry:
        if "probe_file" in entry:
            check.problems.append("its manifest entry was edited: field 'entry_sha256' was removed")
        else:
            check.notes.append("its manifest entry has no hash (stored by an earlier pbgan): an edit to it "
                               "cannot be detected")
    elif entry["entry_sha256"] != entry_sha256(entry) and not edits:
        check.problems.append("its manifest entry was edited: its entry_sha256 does not match (a field its probe "
                              "file does not copy: 'train', 'probe_file', 'probe_file_sha256' or the hash itself)")
    return recorded


def _check_probe(store: ModelStore, plugins, entry: dict[str, Any], recorded: dict[str, torch.Tensor] | None,
                 check: TaskCheck) -> None:
    """Recompute the task's probe output from its own stored files and compare it with the recording."""
    name = entry["name"]
    try:
        now = probe_task_outputs(store, plugins, name, as_of=name)
    except PbganError as exc:
        check.problems.append(str(exc))
        return
    difference = probe_difference(recorded, now) if recorded is not None else None
    recorded_sha256 = outputs_sha256(recorded) if recorded is not None else entry.get("probe_sha256")
    if outputs_sha256(now) == recorded_sha256:
        check.probe = "probe output bit-identical to the one recorded at training"
    elif difference is not None and difference <= PROBE_TOLERANCE:
        check.probe = (f"probe output within {PROBE_TOLERANCE:.0e} of the one recorded at training (max difference "
                       f"{difference:.1e}: this machine's kernels round differently)")
    elif difference is not None:
        check.problems.append("its generator computes another function: its probe output " + (
            f"differs from the one recorded at training by up to {difference:.3g} (tolerance {PROBE_TOLERANCE:.0e})"
            if math.isfinite(difference) else "has other generators or shapes than the recorded one"))
    elif entry.get("probe_sha256") is None:
        check.notes.append("no probe output was recorded for it (stored by an earlier pbgan): its function is "
                           "not checked")
    else:
        check.notes.append("its probe output differs at bit level from the one recorded where it was trained "
                           "(another CPU or torch build rounds differently); its pbgan recorded only a hash, so "
                           "the difference cannot be measured; its files' hashes and bank fingerprint match")
    latest = store.tasks[-1]["name"]
    if not plugins.factorizers.get(entry["factorizer"]).keeps_old_tasks and name != latest:
        moved = probe_difference(now, probe_task_outputs(store, plugins, name))
        check.notes.append(f"forgotten by design: --factorizer {entry['factorizer']} retrains one generator, so it "
                           f"now computes what the latest task {latest!r} computes (its probe output moved by up to "
                           f"{moved:.3g}); its own stored weights were checked above")


def check_tasks(store: ModelStore, plugins) -> Iterator[TaskCheck]:
    """Check every task in order (a task's bank prefix is rebuilt from the earlier tasks' files)."""
    bank, bank_whole = FilterBank(), True
    for entry in store.tasks:
        check = TaskCheck(entry["name"])
        problems = check.problems
        tensors, meta = _read(store, entry["file"], entry.get("sha256"), problems)
        new_filters, _ = _read(store, entry["bank_file"], entry.get("bank_sha256"), problems)
        if not bank_whole:
            problems.append("its bank prefix cannot be rebuilt: an earlier task's bank file is damaged")
        elif bank.fingerprint() != entry.get("bank_fingerprint"):
            problems.append(f"the bank before it has fingerprint {bank.fingerprint()[:12]}, the manifest records "
                            f"{str(entry.get('bank_fingerprint'))[:12]}: bank files were changed or reordered")
        elif meta is not None and meta.get("bank_fingerprint") != bank.fingerprint():
            problems.append(f"{entry['file']} was trained against another bank: it belongs to another model")
        try:
            check_entry_plugins(entry, plugins, store.manifest_path)
        except PbganError as exc:
            problems.append(str(exc))
        recorded = _check_entry(store, entry, check)
        if not problems:
            problems += _shape_problems(store, plugins, entry, tensors, new_filters, bank)
        if not problems:
            _check_probe(store, plugins, entry, recorded, check)
        if new_filters is None:
            bank_whole = False
        else:
            bank.append(entry["name"], new_filters, entry.get("bank_sha256"))  # as ModelStore.load_bank does
        yield check


def verify_model(store: ModelStore, plugins, report) -> int:
    """Check every task; `report(name, problems)` is called per task. Returns the problem count."""
    total = 0
    for check in check_tasks(store, plugins):
        report(check.name, check.problems)
        total += len(check.problems)
    return total


def leftover_lines(store: ModelStore) -> list[str]:
    """What verify says beyond the tasks: leftovers of interrupted commands, missing metrics rows."""
    holder = lock_holder(store.root)
    if holder is not None:
        return [f"NOTE  {store.root} is being written by another pbgan process ({holder}): leftovers not listed"]
    lines = [f"LEFT  {path.relative_to(store.root)}: no manifest entry names it (left by an interrupted command); "
             "`pbgan gc` removes it" for path in store.leftovers()]
    lines += [f"NOTE  {name}: no metrics row after it (interrupted final evaluation); `pbgan eval` records it"
              for name in store.missing_stages()]
    return lines


@hookimpl
def register_commands(cli):
    from pbgan_core.console import console
    from pbgan_core.plugins import get_plugins
    from pbgan_core.store import default_model_dir

    model_dir_option = typer.Option(None, "--model-dir", envvar="PBGAN_MODEL_DIR",
                                    help="Lifelong model directory [default: ./pbgan-model]")

    def existing(model_dir: Optional[Path]) -> ModelStore:
        store = ModelStore(model_dir or default_model_dir())
        if not store.root.is_dir():
            raise PbganError(f"no pbgan model in {store.root}; pass --model-dir")
        return store

    @cli.command()
    def verify(model_dir: Optional[Path] = model_dir_option) -> None:
        """Check every stored file against the manifest's sha256 and each task's bank fingerprint
        (exact, on any machine), each manifest entry against its hash, the tensor shapes, and
        recompute each task's probe output: OK when bit-identical to the one recorded at training
        or, where this machine's kernels round differently, within a max absolute difference of
        1e-4 (outputs are in [-1, 1]). NOTE lines say what could not be proven and why; FAIL lines
        what changed. Lists leftover files.

        Example: pbgan verify --model-dir pbgan-model
        """
        store = existing(model_dir)
        if not store.exists and not store.leftovers():
            raise PbganError(f"no pbgan model in {store.root}; pass --model-dir")
        failed = 0
        for check in check_tasks(store, get_plugins()):
            if not check.problems:
                console.print(f"OK    {check.name}" + (f": {check.probe}" if check.probe else ""), markup=False,
                              soft_wrap=True)
            for kind, lines in (("NOTE", check.notes), ("FAIL", check.problems)):
                for line in lines:
                    console.print(f"{kind}  {check.name}: {line}", markup=False, soft_wrap=True)
            failed += len(check.problems)
        for line in leftover_lines(store):
            console.print(line, markup=False, soft_wrap=True)
        if failed:
            raise PbganError(f"{failed} problem(s) in {store.root}: restore the files (or manifest.json) the FAIL "
                             "lines name from a backup")
        console.print(f"{len(store.tasks)} task(s) verified in {store.root}", markup=False)

    @cli.command()
    def gc(model_dir: Optional[Path] = model_dir_option) -> None:
        """Remove files no manifest entry names: task and bank files of an interrupted commit,
        temporary files, checkpoints of tasks already stored. Never touches a stored task.

        Example: pbgan gc --model-dir pbgan-model
        """
        store = existing(model_dir)
        with store.transaction():
            removed = store.remove_leftovers()
        for path in removed:
            console.print(f"removed {path.relative_to(store.root)}", markup=False)
        console.print(f"{len(removed)} leftover(s) removed from {store.root}", markup=False)

    @cli.command()
    def recover(model_dir: Optional[Path] = model_dir_option) -> None:
        """Rebuild a lost manifest.json from what each task file records about itself, then check
        the model as verify does. The metrics rows are measured again by `pbgan eval`.

        Example: pbgan recover --model-dir pbgan-model
        """
        from pbgan_core.recover import recover_manifest

        root = model_dir or default_model_dir()
        names = recover_manifest(root, get_plugins())
        console.print(f"manifest.json rebuilt from the files of {len(names)} task(s): {', '.join(names)}; "
                      "their metrics rows are not in the files: `pbgan eval` measures them again", markup=False,
                      soft_wrap=True)
        verify(model_dir=root)
