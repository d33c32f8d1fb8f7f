"""A full disk, Ctrl-C or `kill -9` at every write point of train, import, eval and export.

Each fault goes in through the atomic writer's test hook, at one write point per run. Afterwards:
every task the manifest named before is byte-for-byte intact and `pbgan verify` passes; every file
no manifest entry names is listed by verify as a leftover; the interrupted command is either
complete or the same command (with --resume where a checkpoint is kept) completes it, giving
exactly the files of an uninterrupted run and removing the leftovers.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from pbgan_core import atomic
from pbgan_core.faults import KILLED, KINDS, Fault
from pbgan_core.checkpoint import load_checkpoint
from pbgan_core.cli import main
from pbgan_core.store import ModelStore
from tests.conftest import FACADES, TINY, needs_data
from tests.forked import Forked
from tests.test_interop import reference_checkpoint

pytestmark = needs_data(FACADES)

FAST = [*TINY, "--max-images", "4", "--eval-images", "1"]
TRAIN = ["train", "--arch", "pix2pix", "--task", "new", "--data", FACADES, "--direction", "BtoA", *FAST,
         "--steps", "2", "--checkpoint-every", "1"]

RESULT_FIELDS = ("sha256", "bank_sha256", "probe_sha256", "probe_file_sha256", "params", "metrics")


class Points:
    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, stage: str, path: Path) -> None:
        self.seen.append((stage, path.name))


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked runs use one thread: every run computes the same bits
    yield
    torch.set_num_threads(threads)


def run(argv: list, capsys, hook=None) -> tuple[int, str]:
    atomic.fault_hook = hook
    try:
        code = main([str(a) for a in argv])
    finally:
        atomic.fault_hook = None
    out, err = capsys.readouterr()
    return code, out + err


def run_faulted(argv: list, kind: str, at: int, capsys) -> tuple[int, str]:
    if kind == "kill":
        code, text = Forked(argv, hook=Fault(kind, at)).finish()
        assert code == KILLED, text
        return code, text
    code, text = run(argv, capsys, Fault(kind, at))
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(errors) == 1, text
    assert code == (130 if kind == "ctrl-c" else 1), text
    return code, text


def snapshot(root: Path) -> dict[str, bytes]:
    """The model's files, without training records (logs/), which every run appends to."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "logs"}


def unexpected_files(model: Path) -> set[str]:
    """Files in the model directory that are neither named by the manifest nor a resumable checkpoint
    nor a training log, found without the store's own code (a checkpoint folder of a stored task counts as one)."""
    manifest = json.loads((model / "manifest.json").read_text()) if (model / "manifest.json").exists() else {}
    tasks = manifest.get("tasks", [])
    stored = {t["name"] for t in tasks}
    named = {t[k] for t in tasks for k in ("file", "bank_file", "probe_file")} | {"manifest.json", ".lock", "README.md"}
    found = set()
    for rel in snapshot(model) if model.exists() else {}:
        if rel in named or rel.startswith("logs/"):  # training logs are not model files
            continue
        parts = rel.split("/")
        if parts[0] == "checkpoints" and parts[1] in stored:
            found.add(f"checkpoints/{parts[1]}")
        elif not (parts[0] == "checkpoints" and parts[-1] == "checkpoint.safetensors"):
            found.add(rel)
    return found


def check_invariants(model: Path, before: dict[str, bytes], capsys) -> ModelStore:
    """Earlier tasks intact, verify passes, and verify lists exactly the leftovers."""
    earlier = json.loads(before["manifest.json"])["tasks"] if "manifest.json" in before else []
    if model.exists():
        after = snapshot(model)
        for entry in earlier:
            for key in ("file", "bank_file", "probe_file"):
                assert after.get(entry[key]) == before[entry[key]], f"{entry[key]} changed"
    store = ModelStore(model)
    assert store.tasks[: len(earlier)] == earlier
    if not model.exists():
        return store
    code, text = run(["verify", "--model-dir", model], capsys)
    listed = {line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith("LEFT")}
    assert listed == unexpected_files(model), text
    assert code == 0 or not store.exists and "no pbgan model" in text, text
    return store


def check_same_result(model: Path, reference: Path, name: str) -> None:
    got, want = ModelStore(model), ModelStore(reference)
    assert [t["name"] for t in got.tasks] == [t["name"] for t in want.tasks]
    for key in RESULT_FIELDS:
        assert got.task(name).get(key) == want.task(name).get(key), key
    assert got.manifest.get("stages") == want.manifest.get("stages")
    assert got.leftovers() == []


def finish_and_compare(model: Path, reference: Path, name: str, argv: list, capsys) -> None:
    """Complete what the fault interrupted, as the user is told to, and compare with a clean run."""
    store = ModelStore(model)
    if not store.has_task(name):
        resume = ["--resume"] if (model / "checkpoints" / name / "checkpoint.safetensors").exists() else []
        code, text = run([*argv, *resume], capsys)
        assert code == 0, text
    elif store.missing_stages():
        code, text = run(["eval", "--model-dir", model], capsys)
        assert code == 0 and "recorded the missing metrics row" in text, text
    if ModelStore(model).leftovers():
        code, text = run(["gc", "--model-dir", model], capsys)
        assert code == 0 and "removed" in text, text
    check_same_result(model, reference, name)  # the same hashes as a clean run: verify would pass


# --- train --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory):
    """A one-task model, the same model after an uninterrupted second task, and that run's write points."""
    root = tmp_path_factory.mktemp("faults")
    base = root / "base"
    assert main([str(a) for a in [*TRAIN[:4], "base", *TRAIN[5:], "--model-dir", base]]) == 0
    reference = Path(shutil.copytree(base, root / "reference"))
    points = Points()
    atomic.fault_hook = points
    try:
        assert main([str(a) for a in [*TRAIN, "--model-dir", reference]]) == 0
    finally:
        atomic.fault_hook = None
    return base, reference, points.seen


def test_train_write_points_are_the_ones_expected(trained):
    *_, points = trained
    names = [name for _, name in points]
    assert names.count("checkpoint.safetensors") == 4  # periodic and final checkpoint, written then renamed
    assert ("replace", "0002-new.safetensors") in points and names.count("manifest.json") == 4
    assert ("remove", "new") in points


def final_checkpoint(points: list, at: int) -> bool:
    """Whether write point `at` writes the checkpoint at the end of training (the second one)."""
    return points[at] == ("write", "checkpoint.safetensors") and points[:at].count(points[at]) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_train_survives_a_fault_at_every_write_point(trained, kind, tmp_path, capsys):
    base, reference, points = trained
    for at, (stage, name) in enumerate(points):
        if kind == "disk-full" and stage != "write":
            continue  # a full disk shows when data is written
        model = Path(shutil.copytree(base, tmp_path / f"{at}"))
        before = snapshot(model)
        argv = [*TRAIN, "--model-dir", model]
        if kind == "disk-full" and final_checkpoint(points, at):  # only a convenience: the task is stored
            code, text = run(argv, capsys, Fault(kind, at))
            assert code == 0 and "warning: the trained weights could not be saved as a checkpoint" in text, text
            check_same_result(model, reference, "new")
            continue
        code, text = run_faulted(argv, kind, at, capsys)
        store = check_invariants(model, before, capsys)
        if kind != "kill":
            if name == "README.md":
                assert "with its metrics; only the model's README.md was not rewritten" in text, text
                assert "()" not in text, text  # the reason is said, "interrupted" for Ctrl-C
            elif store.has_task("new"):
                assert "its metrics row was not recorded" in text and "pbgan eval" in text, text
            else:
                assert "is not stored" in text and "run the same command" in text, text
        finish_and_compare(model, reference, "new", argv, capsys)
        shutil.rmtree(model)


def test_second_ctrl_c_stops_at_once_and_says_what_was_kept(trained, tmp_path, capsys):
    base, reference, _ = trained
    model = Path(shutil.copytree(base, tmp_path / "m"))
    presses = []

    def press_twice(stage, path):  # Ctrl-C during the periodic checkpoint, again during the next one
        if stage == "write" and path.name == "checkpoint.safetensors" and len(presses) < 2:
            presses.append(path)
            signal.raise_signal(signal.SIGINT)

    code, text = run([*TRAIN, "--model-dir", model], capsys, press_twice)
    assert code == 130 and len(presses) == 2, text
    line = next(line for line in text.splitlines() if line.startswith("error:"))
    assert "interrupted again" in line and "checkpoint.safetensors" in line and "--resume" in line
    assert load_checkpoint(model, "new")["step"] == 1  # the periodic checkpoint is the one kept
    finish_and_compare(model, reference, "new", [*TRAIN, "--model-dir", model], capsys)


def test_failed_final_evaluation_is_recorded_by_eval(trained, tmp_path, capsys):
    base, reference, points = trained
    model = Path(shutil.copytree(base, tmp_path / "m"))
    last = max(at for at, point in enumerate(points) if point == ("write", "manifest.json"))  # with the metrics row
    code, text = run_faulted([*TRAIN, "--model-dir", model], "ctrl-c", last, capsys)
    assert "task 'new' is stored" in text and "pbgan eval" in text
    assert ModelStore(model).missing_stages() == ["new"]
    code, text = run(["eval", "--json", "--model-dir", model], capsys)
    assert code == 0 and json.loads(text)["recorded_rows_after"] == ["new"]
    check_same_result(model, reference, "new")


# --- eval ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_eval_survives_a_fault_at_every_write_point(trained, kind, tmp_path, capsys):
    _, reference, _ = trained
    missing = Path(shutil.copytree(reference, tmp_path / "missing"))
    manifest = json.loads((missing / "manifest.json").read_text())
    manifest["stages"].pop()  # as a final evaluation cut short leaves it
    (missing / "manifest.json").write_text(json.dumps(manifest, indent=2))
    argv = ["eval", "--metrics", "l1", "--model-dir", None]
    for at, stage in enumerate(("write", "replace")):
        if kind == "disk-full" and stage != "write":
            continue
        model = Path(shutil.copytree(missing, tmp_path / f"{at}"))
        before = snapshot(model)
        argv[-1] = model
        run_faulted(argv, kind, at, capsys)
        check_invariants(model, before, capsys)
        finish_and_compare(model, reference, "new", argv, capsys)


# --- import -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(one_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("import-faults")
    reference_checkpoint(root / "latest_net_G.pth")
    argv = ["import", "--arch", "pix2pix", "--task", "ref", "--data", FACADES, "--direction", "BtoA",
            "--eval-images", 1, root / "latest_net_G.pth", "--model-dir"]
    points = Points()
    atomic.fault_hook = points
    try:
        assert main([str(a) for a in [*argv, root / "reference"]]) == 0
    finally:
        atomic.fault_hook = None
    return argv, root / "reference", points.seen


@pytest.mark.parametrize("kind", KINDS)
def test_import_survives_a_fault_at_every_write_point(imported, kind, tmp_path, capsys):
    argv, reference, points = imported
    # empty manifest, task file, bank file, probe file, manifest, manifest with the metrics row, README.md
    assert len(points) == 14
    for at, (stage, _) in enumerate(points):
        if kind == "disk-full" and stage != "write":
            continue
        model = tmp_path / f"{at}"
        run_faulted([*argv, model], kind, at, capsys)
        check_invariants(model, {}, capsys)
        store = ModelStore(model)
        if not store.has_task("ref"):
            code, text = run([*argv, model], capsys)  # the same command, again
            assert code == 0, text
        finish_and_compare(model, reference, "ref", [*argv, model], capsys)


# --- export -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_export_survives_a_fault_at_every_write_point(trained, kind, tmp_path, capsys):
    _, reference, _ = trained
    before = snapshot(reference)
    clean = tmp_path / "clean" / "G"
    code, text = run(["export", "--task", "new", "--model-dir", reference, clean], capsys)
    assert code == 0, text
    names = ["latest_net_G.pth", "latest_net_G.safetensors"]
    for at, stage in enumerate(("write", "replace", "write", "replace")):  # latest_net_G.pth, then .safetensors
        if kind == "disk-full" and stage != "write":
            continue
        out = tmp_path / f"{at}" / "G"
        argv = ["export", "--task", "new", "--model-dir", reference, out]
        run_faulted(argv, kind, at, capsys)
        assert snapshot(reference) == before  # the model is never written by an export
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        if kind != "kill":
            assert left == [], left  # a failed export is absent, not half there
        code, text = run(argv, capsys)  # the same command completes it, --force not needed
        assert code == 0, text
        for name in names:
            assert (out / name).read_bytes() == (clean / name).read_bytes()
        left = sorted(p.name for p in out.iterdir() if not atomic.is_temporary(p))  # kill -9 leaves those
        assert left == names, left


@pytest.mark.parametrize("then", ["disk-full", "ctrl-c"])
def test_when_the_task_is_not_stored_either_its_generators_are_kept(trained, then, tmp_path, capsys):
    base, reference, points = trained
    model = Path(shutil.copytree(base, tmp_path / "m"))
    final = next(at for at in range(len(points)) if final_checkpoint(points, at))
    task_file = points.index(("write", "0002-new.safetensors"))
    full = [Fault("disk-full", final), Fault(then, task_file)]  # the checkpoint, then the task file

    def nearly_full(stage, path):
        for fault in full:
            fault(stage, path)

    code, text = run([*TRAIN, "--model-dir", model], capsys, nearly_full)
    line = next(line for line in text.splitlines() if line.startswith("error:"))
    assert code == (1 if then == "disk-full" else 130), text
    assert "trained generator weights are kept" in line and "--resume" in line, text
    kept = load_checkpoint(model, "new")
    assert kept["step"] == 2 and kept["trainer"] is None  # the generators only: less than the full state
    code, text = run([*TRAIN, "--resume", "--model-dir", model], capsys)  # stored without training again
    assert code == 0, text
    check_same_result(model, reference, "new")


def disk_full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_and_gc_still_frees_space(trained, tmp_path, capsys, monkeypatch):
    base, _, _ = trained
    model = Path(shutil.copytree(base, tmp_path / "m"))
    leftover = model / "tasks" / "0002-cut.safetensors"
    leftover.write_bytes(b"a commit cut short")
    monkeypatch.setattr(os, "write", disk_full)  # the lock's pid
    monkeypatch.setattr(os, "pwrite", disk_full)
    everywhere = lambda stage, path: stage == "write" and disk_full()  # noqa: E731
    code, text = run(["gc", "--model-dir", model], capsys, everywhere)
    assert code == 0 and "1 leftover(s) removed" in text and not leftover.exists(), text
    for target in (model, tmp_path / "new" / "m"):
        code, text = run([*TRAIN, "--model-dir", target], capsys, everywhere)
        line = next(line for line in text.splitlines() if line.startswith("error:"))
        assert code == 1 and "No space left on device" in line and "internal error" not in text, text
        assert not (target / ".lock").exists()
    # no empty model folder, lock or manifest left behind: at most the failed run's training record
    left = [p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*") if p.is_file()]
    assert all(p.parts[:2] == ("m", "logs") for p in left), left
    assert snapshot(model) == snapshot(base)
