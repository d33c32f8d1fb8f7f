"""`pbgan verify`: prove a model directory is intact; `pbgan gc`: remove what interrupted
commands left behind; `pbgan recover`: rebuild a lost manifest from the task files.

For every task: its task and bank files match the manifest's hashes and parse, its bank
prefix has the fingerprint it was trained on, every stored tensor has the shape the
generator needs, and the rebuilt generator reproduces the probe output recorded at training.
Files no manifest entry names are listed as leftovers: they are not part of the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import typer

from pbgan_core.bank import FilterBank
from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.lock import lock_holder
from pbgan_core.store import ModelStore, stored_options


def _read(store: ModelStore, rel: str, sha256: str | None, problems: list[str]):
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
        factorizer.wrap(gen, bank.prefix(len(bank), gname), stored_options(entry), initialize=False)
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


def verify_model(store: ModelStore, plugins, report) -> int:
    """Check every task; `report(name, problems)` is called per task. Returns the problem count."""
    from pbgan_core.engine import probe_task

    bank, bank_whole, total = FilterBank(), True, 0
    for entry in store.tasks:
        problems: list[str] = []
        tensors, meta = _read(store, entry["file"], entry.get("sha256"), problems)
        new_filters, _ = _read(store, entry["bank_file"], entry.get("bank_sha256"), problems)
        if not bank_whole:
            problems.append("its bank prefix cannot be rebuilt: an earlier task's bank file is damaged")
        elif bank.fingerprint() != entry.get("bank_fingerprint"):
            problems.append(f"the bank before it has fingerprint {bank.fingerprint()[:12]}, the manifest records "
                            f"{str(entry.get('bank_fingerprint'))[:12]}: bank files were changed or reordered")
        elif meta is not None and meta.get("bank_fingerprint") != bank.fingerprint():
            problems.append(f"{entry['file']} was trained against another bank: it belongs to another model")
        if not problems:
            problems += _shape_problems(store, plugins, entry, tensors, new_filters, bank)
        if not problems:
            try:
                probe = probe_task(store, plugins, entry["name"])
            except PbganError as exc:
                problems.append(str(exc))
            else:
                if entry.get("probe_sha256") is None:
                    problems.append("no probe output was recorded for it (trained by an older pbgan?)")
                elif probe != entry["probe_sha256"]:
                    problems.append("its generator no longer computes the probe output recorded at training")
        if new_filters is None:
            bank_whole = False
        else:
            bank.append(entry["name"], new_filters, entry.get("bank_sha256"))  # as ModelStore.load_bank does
        report(entry["name"], problems)
        total += len(problems)
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
        """Check every stored file against the manifest, each task's bank fingerprint and
        tensor shapes, and recompute each task's probe output; list leftover files.

        Example: pbgan verify --model-dir pbgan-model
        """
        store = existing(model_dir)
        if not store.exists and not store.leftovers():
            raise PbganError(f"no pbgan model in {store.root}; pass --model-dir")

        def report(name: str, problems: list[str]) -> None:
            if not problems:
                console.print(f"OK    {name}", markup=False)
            for p in problems:
                console.print(f"FAIL  {name}: {p}", markup=False, soft_wrap=True)

        failed = verify_model(store, get_plugins(), report)
        for line in leftover_lines(store):
            console.print(line, markup=False, soft_wrap=True)
        if failed:
            raise PbganError(f"{failed} problem(s) in {store.root}: restore the named files from a backup")
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
