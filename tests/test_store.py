"""The model store: byte-identical files for identical trainings, leftovers that never block a name,
no empty model directory after a failed command, writes only inside a transaction, and outputs
(generate, export) that never replace a file unless asked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from pbgan_core.manifest import FORMAT, entry_sha256, validate
from pbgan_core.store import ModelStore
from pbgan_core.tensorfile import read_metadata, save_bytes
from tests.conftest import FACADES, TINY, needs_data, one_line_error
from tests.test_interop import reference_checkpoint

FAST = [*TINY, "--max-images", "4", "--eval-images", "1", "--steps", "1"]


def train(name: str, model: Path, *more) -> list:
    return ["train", "--arch", "pix2pix", "--task", name, "--data", FACADES, *FAST, *more, "--model-dir", model]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from pbgan_core.cli import main

    if not FACADES.exists():
        pytest.skip("shared data not available")
    root = tmp_path_factory.mktemp("store") / "m"
    assert main([str(a) for a in train("base", root)]) == 0
    return root


@pytest.fixture
def copy(model, tmp_path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "m"))


@pytest.fixture(scope="module")
def two_tasks(model, tmp_path_factory) -> Path:
    from pbgan_core.cli import main

    root = Path(shutil.copytree(model, tmp_path_factory.mktemp("two") / "m"))
    assert main([str(a) for a in train("next", root)]) == 0
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_safetensors_bytes_do_not_depend_on_metadata_order():
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    metadata = {f"key{i}": str(i) for i in range(12)}
    reordered = dict(reversed(list(metadata.items())))
    outputs = {save_bytes(tensors, metadata) for _ in range(8)} | {save_bytes(tensors, reordered)}
    assert len(outputs) == 1
    data = outputs.pop()
    assert read_metadata(data) == metadata and list(read_metadata(data)) == sorted(metadata)
    from safetensors.torch import load

    assert all(torch.equal(load(data)[k], v) for k, v in tensors.items())


@needs_data(FACADES)
def test_identical_trainings_write_identical_files(cli, model, tmp_path):
    cli(*train("base", tmp_path / "again"))
    first, again = ModelStore(model), ModelStore(tmp_path / "again")
    for key in ("file", "bank_file"):
        assert (model / first.tasks[0][key]).read_bytes() == (tmp_path / "again" / again.tasks[0][key]).read_bytes()
    for key in ("sha256", "bank_sha256", "probe_sha256"):
        assert first.tasks[0][key] == again.tasks[0][key]


@needs_data(FACADES)
@pytest.mark.parametrize("argv, message", [
    (["--bogus", "1"], "--bogus"),                    # refused before the lock
    (["--direction", "sideways"], "sideways"),
    (["--data", "nowhere"], "does not exist"),        # refused under the lock, after the directory was made
])
def test_a_failed_command_leaves_no_model_directory(cli, tmp_path, argv, message):
    model = tmp_path / "new" / "model"
    _, _, err = cli(*train("t", model), *argv, expect=None)
    assert message in one_line_error(err)
    assert not (tmp_path / "new").exists()


def test_writes_need_a_transaction(tmp_path):
    store = ModelStore(tmp_path / "m")
    with pytest.raises(RuntimeError, match="transaction"):
        store.save_manifest()
    with store.transaction():
        store.save_manifest()
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["tasks"] == []


def test_transaction_reads_the_manifest_again(tmp_path):
    early = ModelStore(tmp_path / "m")  # read before another command stored something
    with ModelStore(tmp_path / "m").transaction() as other:
        other.manifest["note"] = "stored meanwhile"
        other.save_manifest()
    with early.transaction():
        assert early.manifest["note"] == "stored meanwhile"


@pytest.mark.parametrize("change, message", [
    (lambda m: m["tasks"][0].update(index=2), "field 'index' is 2, its position says 1"),
    (lambda m: m["tasks"][0].update(sha256="abc"), "field 'sha256' must be a sha256 hex digest"),
    (lambda m: m["tasks"].append(dict(m["tasks"][0], index=2, file="tasks/0002-base.safetensors",
                                      bank_file="bank/0002-base.safetensors")), "repeats the task name"),
    (lambda m: m.update(format=True), "field 'format' must be a whole number"),
    (lambda m: m.update(format=FORMAT + 1), f"newer than this pbgan understands ({FORMAT}); upgrade pbgan"),
])
def test_manifest_schema_names_the_field(model, tmp_path, change, message):
    manifest = json.loads((model / "manifest.json").read_text())
    assert validate(manifest, model / "manifest.json") is manifest
    change(manifest)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(manifest, model / "manifest.json")


@needs_data(FACADES)
def test_leftovers_never_block_a_name_and_gc_removes_only_them(cli, copy):
    (copy / "tasks" / "0002-next.safetensors").write_bytes(b"half a file")  # a commit cut short
    (copy / "bank" / ".0002-next.safetensors.abc123.tmp").write_bytes(b"")
    (copy / "checkpoints" / "base").mkdir(parents=True)  # a stored task's checkpoint, never removed
    (copy / "checkpoints" / "base" / "checkpoint.safetensors").write_bytes(b"x")
    (copy / "tasks" / "notes.txt").write_text("not pbgan's")
    _, out, _ = cli("verify", "--model-dir", copy)
    left = sorted(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("LEFT"))
    assert left == ["bank/.0002-next.safetensors.abc123.tmp", "checkpoints/base", "tasks/0002-next.safetensors"]
    with ModelStore(copy).transaction():  # while a command writes, its files in progress are not leftovers
        _, out, _ = cli("verify", "--model-dir", copy)
        assert f"being written by another pbgan process (pid {os.getpid()})" in out and "LEFT" not in out
    _, out, _ = cli("gc", "--model-dir", copy)
    assert "3 leftover(s) removed" in out
    assert (copy / "tasks" / "notes.txt").exists() and not (copy / "checkpoints" / "base").exists()
    (copy / "tasks" / "0002-next.safetensors").write_bytes(b"half a file")
    cli(*train("next", copy))  # the next write removes what is left and takes the name
    store = ModelStore(copy)
    assert [t["name"] for t in store.tasks] == ["base", "next"] and store.leftovers() == []
    _, out, _ = cli("verify", "--model-dir", copy)
    assert "LEFT" not in out and "2 task(s) verified" in out


@needs_data(FACADES)
def test_eval_records_a_missing_metrics_row(cli, copy):
    store = ModelStore(copy)
    row = store.manifest["stages"][0]
    with store.transaction():
        store.manifest["stages"] = []
        store.save_manifest()
    _, out, _ = cli("verify", "--model-dir", copy)
    assert "NOTE  base: no metrics row after it" in out
    _, out, _ = cli("eval", "--model-dir", copy)
    assert "recorded the missing metrics row after: base" in out
    assert ModelStore(copy).manifest["stages"] == [row]


@needs_data(FACADES)
def test_generate_keeps_both_outputs_and_replaces_only_with_force(cli, model, tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.new("RGB", (64, 32), "red").save(photos / "x.jpg")
    Image.new("RGB", (64, 32), "blue").save(photos / "x.png")
    Image.new("RGB", (64, 32), "green").save(photos / "y.png")
    _, out, _ = cli("generate", "--task", "base", "--aligned", photos, tmp_path / "out", "--model-dir", model)
    assert "wrote 3 image(s)" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.jpg.png", "x.png.png", "y.png"]
    assert (tmp_path / "out" / "x.jpg.png").read_bytes() != (tmp_path / "out" / "x.png.png").read_bytes()
    (tmp_path / "out" / "y.png").write_bytes(b"mine")
    _, _, err = cli("generate", "--task", "base", "--aligned", photos, tmp_path / "out", "--model-dir", model,
                    expect=1)
    assert "x.jpg.png exists already (and 2 more); add --force" in one_line_error(err)
    assert (tmp_path / "out" / "y.png").read_bytes() == b"mine"
    cli("generate", "--task", "base", "--aligned", photos, tmp_path / "out", "--model-dir", model, "--force")
    assert (tmp_path / "out" / "y.png").read_bytes() != b"mine"


@needs_data(FACADES)
def test_export_never_writes_into_a_model_and_replaces_only_with_force(cli, copy, tmp_path):
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for target in (copy / "bank" / "0001-base", copy / "G.pt", copy):
        _, _, err = cli("export", "--task", "base", "--format", "torchscript", "--model-dir", copy, target,
                        expect=1)
        assert "inside the model directory" in one_line_error(err)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    cli("export", "--task", "base", "--model-dir", copy, tmp_path / "G")
    cli("export", "--task", "base", "--model-dir", copy, tmp_path / "G")  # the same bytes replace nothing
    (tmp_path / "G" / "latest_net_G.pth").write_bytes(b"mine")
    _, _, err = cli("export", "--task", "base", "--model-dir", copy, tmp_path / "G", expect=1)
    assert "latest_net_G.pth exists already; add --force" in one_line_error(err)
    assert (tmp_path / "G" / "latest_net_G.pth").read_bytes() == b"mine"
    cli("export", "--task", "base", "--model-dir", copy, tmp_path / "G", "--force")
    assert torch.load(tmp_path / "G" / "latest_net_G.pth", weights_only=True)


def test_ctrl_c_while_starting_says_so(tmp_path):
    """SIGINT arrives while the heavy modules load (forced: when torch is first imported)."""
    script = textwrap.dedent("""
        import os, signal, sys

        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["pbgan", "tasks"]
        from pbgan_core.__main__ import run
        run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PBGAN_MODEL_DIR": str(tmp_path / "m")})
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted while starting; nothing was changed"
    assert not (tmp_path / "m").exists()


@needs_data(FACADES)
def test_a_lost_manifest_is_refused_until_recover_rebuilds_it(cli, two_tasks, tmp_path):
    model = Path(shutil.copytree(two_tasks, tmp_path / "m"))
    photos = tmp_path / "in"
    photos.mkdir()
    for path in sorted((FACADES / "test").iterdir())[:2]:
        shutil.copy(path, photos)

    def outputs(name: str) -> dict[str, bytes]:
        for task in ("base", "next"):
            cli("generate", "--task", task, "--aligned", photos, tmp_path / name / task, "--model-dir", model)
        return snapshot(tmp_path / name)

    before = outputs("before")
    manifest = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text("{")  # damaged: without a backup, moved out and recovered
    _, _, err = cli("tasks", "--model-dir", model, expect=1)
    assert "move it out" in one_line_error(err) and "pbgan recover" in one_line_error(err)
    (model / "manifest.json").unlink()
    files = snapshot(model)
    reference_checkpoint(tmp_path / "latest_net_G.pth")
    for argv in (train("third", model), ["gc", "--model-dir", model], ["verify", "--model-dir", model],
                 ["import", "--arch", "pix2pix", "--task", "ref", "--data", FACADES, "--direction", "BtoA",
                  tmp_path / "latest_net_G.pth", "--model-dir", model]):
        _, _, err = cli(*argv, expect=1)
        line = one_line_error(err)
        assert "manifest.json is missing" in line and f"pbgan recover --model-dir {model}" in line, argv[0]
    assert snapshot(model) == files  # nothing removed, nothing written

    _, out, _ = cli("recover", "--model-dir", model)
    assert "rebuilt from the files of 2 task(s): base, next" in out and "2 task(s) verified" in out
    recovered = json.loads((model / "manifest.json").read_text())["tasks"]
    # not in the files: eval measures the metrics again; the entry's hash covers what is left
    lost = ("train", "metrics", "metrics_protocol", "entry_sha256")
    assert [{k: v for k, v in entry.items() if k not in lost} for entry in recovered] == \
        [{k: v for k, v in entry.items() if k not in lost} for entry in manifest["tasks"]]
    assert all(entry["entry_sha256"] == entry_sha256(entry) for entry in recovered)
    assert outputs("after") == before
    _, _, err = cli("recover", "--model-dir", model, expect=1)
    assert "nothing to recover" in one_line_error(err)


@needs_data(FACADES)
def test_recover_names_a_file_that_records_too_little_and_writes_nothing(cli, two_tasks, tmp_path):
    model = Path(shutil.copytree(two_tasks, tmp_path / "m"))
    (model / "manifest.json").unlink()
    older = model / "tasks" / "0002-next.safetensors"  # as an older pbgan wrote it
    data = older.read_bytes()
    metadata = {k: v for k, v in read_metadata(data).items() if k != "entry"}
    from safetensors.torch import load

    older.write_bytes(save_bytes(load(data), metadata))
    _, _, err = cli("recover", "--model-dir", model, expect=1)
    line = one_line_error(err)
    assert "task 2 cannot be recovered" in line and "older pbgan" in line and "nothing was written" in line
    assert not (model / "manifest.json").exists()


@needs_data(FACADES)
@pytest.mark.parametrize("link", ["tasks", "bank", "checkpoints", "checkpoints/new", "tasks/0001-base.safetensors"])
def test_linked_model_folders_and_files_are_refused(cli, model, two_tasks, tmp_path, link):
    mine, other = Path(shutil.copytree(model, tmp_path / "mine")), Path(shutil.copytree(two_tasks, tmp_path / "o"))
    (other / "checkpoints" / "paused").mkdir(parents=True)
    (other / "checkpoints" / "paused" / "checkpoint.safetensors").write_bytes(b"another model's run")
    target = other / link.replace("new", "paused")
    shutil.rmtree(mine / link, ignore_errors=True)
    (mine / link).unlink(missing_ok=True)
    (mine / link).parent.mkdir(parents=True, exist_ok=True)
    (mine / link).symlink_to(target)
    theirs = snapshot(other)
    for argv in (train("new", mine), ["gc", "--model-dir", mine], ["verify", "--model-dir", mine],
                 ["generate", "--task", "base", "--aligned", FACADES / "test", tmp_path / "out", "--model-dir", mine]):
        _, _, err = cli(*argv, expect=1)
        assert f"{mine / link} is a symbolic link" in one_line_error(err), argv[0]
    assert snapshot(other) == theirs
