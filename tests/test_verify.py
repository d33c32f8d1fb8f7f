"""`pbgan verify`: a clean model passes; each kind of damage is named, with a non-zero exit; what
cannot be proven (another machine's rounding, entries of an earlier pbgan, forgetting by design)
is said as a NOTE, with exit 0."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from pbgan_core.atomic import sha256_bytes
from pbgan_core.cli import main
from pbgan_core.manifest import entry_sha256
from pbgan_core.store import _safetensors_metadata
from pbgan_core.tensorfile import save_bytes
from tests.conftest import FACADES, ROOT, TINY, needs_data, one_line_error

pytestmark = needs_data(FACADES)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify") / "model"
    for task in ("first", "second"):
        code = main(["train", "--arch", "pix2pix", "--task", task, "--data", str(FACADES), *TINY,
                     "--max-images", "4", "--steps", "2", "--model-dir", str(root)])
        assert code == 0
    return root


@pytest.fixture
def copy(model, tmp_path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def verify_fails(cli, root: Path) -> str:
    _, out, err = cli("verify", "--model-dir", root, expect=1)
    one_line_error(err)
    return out


def edit_entry(root: Path, index: int, change, rehash: bool = False) -> None:
    """Edit a task entry of manifest.json by hand; `rehash` also makes its entry_sha256 agree."""
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest["tasks"][index])
    if rehash:
        manifest["tasks"][index]["entry_sha256"] = entry_sha256(manifest["tasks"][index])
    (root / "manifest.json").write_text(json.dumps(manifest))


def as_earlier_pbgan(entry: dict) -> None:
    """An entry as pbgan wrote it before probe files and entry hashes (its probe file stays a leftover)."""
    for key in ("probe_file", "probe_file_sha256", "entry_sha256"):
        entry.pop(key)


def rewrite_task_file(root: Path, rel: str, change) -> str:
    """Change the tensors of a stored file, keeping its metadata; returns the new sha256."""
    path = root / rel
    data = path.read_bytes()
    tensors = load(data)
    change(tensors)
    new = save_bytes(tensors, metadata=_safetensors_metadata(data))
    path.write_bytes(new)
    return sha256_bytes(new)


def test_clean_model_is_ok(cli, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["tasks"]:
        assert len(entry["probe_sha256"]) == 64 and entry["entry_sha256"] == entry_sha256(entry)
        assert entry["probe_file"] == f"probes/{entry['file'].split('/')[1]}"
        assert sha256_bytes((copy / entry["probe_file"]).read_bytes()) == entry["probe_file_sha256"]
    _, out, err = cli("verify", "--model-dir", copy)
    assert "OK    first: probe output bit-identical" in out and "OK    second: probe output bit-identical" in out
    assert "NOTE" not in out and "LEFT" not in out and not err


def test_help_states_the_tolerance(cli):
    _, out, _ = cli("verify", "--help")
    assert "1e-4" in " ".join(out.split())


def test_other_cpu_kernels_round_differently_and_still_pass(copy):
    """Torch's kernels for CPUs without AVX2 or AVX512 round the last bits differently (a model
    verified on another machine); where this CPU has those kernels, the outputs are not bit-identical."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-m", "pbgan_core", "verify", "--model-dir", str(copy)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("first", "second"):
        assert (f"OK    {name}: probe output bit-identical" in done.stdout
                or f"OK    {name}: probe output within 1e-04 of the one recorded at training (max difference"
                in done.stdout), done.stdout


@pytest.mark.parametrize("shift, passes", [(5e-5, True), (1e-3, False)])
def test_probe_output_is_compared_within_the_tolerance(cli, copy, shift, passes):
    """The recorded output moved by `shift` (its hashes updated to agree): the recomputed one differs by that."""
    def change(entry):
        entry["probe_file_sha256"] = rewrite_task_file(
            copy, entry["probe_file"], lambda tensors: tensors.update({k: v + shift for k, v in tensors.items()}))

    edit_entry(copy, 0, change, rehash=True)
    if passes:
        _, out, _ = cli("verify", "--model-dir", copy)
        assert "OK    first: probe output within 1e-04 of the one recorded at training (max difference 5.0e-05" in out
    else:
        out = verify_fails(cli, copy)
        assert ("FAIL  first: its generator computes another function: its probe output differs from the one "
                "recorded at training by up to 0.001 (tolerance 1e-04)") in out
    assert "OK    second: probe output bit-identical" in out


def test_earlier_entry_whose_probe_hash_differs_is_a_note(cli, copy):
    """An earlier pbgan recorded only the probe's hash: another machine's last bits are no proof of damage."""
    def recorded_elsewhere(entry):
        as_earlier_pbgan(entry)
        entry["probe_sha256"] = "0" * 64

    edit_entry(copy, 0, recorded_elsewhere)
    _, out, err = cli("verify", "--model-dir", copy)
    assert "OK    first\n" in out and "FAIL" not in out and not err
    assert "NOTE  first: its manifest entry has no hash (stored by an earlier pbgan)" in out
    assert "NOTE  first: its probe output differs at bit level from the one recorded where it was trained" in out
    assert "LEFT  probes/0001-first.safetensors" in out


def test_flipped_byte_is_named(cli, copy):
    path = copy / "tasks" / "0002-second.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    out = verify_fails(cli, copy)
    assert "OK    first" in out and "FAIL  second" in out and "0002-second.safetensors" in out


def test_truncated_bank_file_is_named_and_later_tasks_flagged(cli, copy):
    path = copy / "bank" / "0001-first.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    out = verify_fails(cli, copy)
    assert "FAIL  first" in out and "0001-first.safetensors" in out
    assert "FAIL  second: its bank prefix cannot be rebuilt" in out


@pytest.mark.parametrize("folder", ["tasks", "probes"])
def test_missing_file_is_named(cli, copy, folder):
    (copy / folder / "0001-first.safetensors").unlink()
    out = verify_fails(cli, copy)
    assert f"FAIL  first: {copy / folder / '0001-first.safetensors'} is missing; restore it from a backup" in out
    assert "OK    second" in out and "pbgan verify" not in out


def test_wrong_shaped_tensor_is_named(cli, copy):
    """In an entry of an earlier pbgan with the manifest hash updated to match, a tensor of the wrong
    shape is caught by name."""
    key = next(k for k in sorted(load((copy / "tasks" / "0002-second.safetensors").read_bytes())) if k.endswith(".coef"))

    def change(entry):
        entry["sha256"] = rewrite_task_file(copy, entry["file"], lambda tensors: tensors.update(
            {key: torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])}))
        as_earlier_pbgan(entry)

    edit_entry(copy, 1, change)
    out = verify_fails(cli, copy)
    assert f"FAIL  second: tasks/0002-second.safetensors: tensor {key} has shape" in out


def test_changed_weights_with_their_hash_updated_are_named(cli, copy):
    """A consistent but different task file (its sha256 updated in the manifest): the entry's record names it."""
    def change(entry):
        entry["sha256"] = rewrite_task_file(copy, entry["file"], lambda tensors: tensors.update(
            {k: v + 0.5 for k, v in tensors.items() if k.endswith(".bias")}))

    edit_entry(copy, 0, change, rehash=True)
    out = verify_fails(cli, copy)
    assert "FAIL  first: its manifest entry was edited: field 'sha256' is" in out


@pytest.mark.parametrize("field, change", [
    ("direction", lambda e: e.update(direction="BtoA")),
    ("options.no_dropout", lambda e: e["options"].update(no_dropout=True)),
    ("data", lambda e: e.update(data="/elsewhere")),
    ("options.gain", lambda e: e["options"].update(gain=2)),  # an option added
    ("options.coef_scale", lambda e: e["options"].update(coef_scale=1.0)),
])
@pytest.mark.parametrize("rehash", [False, True])
def test_edited_entry_is_named(cli, copy, field, change, rehash):
    edit_entry(copy, 1, change, rehash)
    out = verify_fails(cli, copy)
    assert f"FAIL  second: its manifest entry was edited: field {field!r} is " in out and "OK    first" in out


def test_edited_entry_is_refused_on_load(cli, copy, tmp_path):
    edit_entry(copy, 1, lambda e: e["options"].update(coef_scale=1.0))
    _, _, err = cli("generate", "--task", "second", FACADES / "test", tmp_path / "out", "--model-dir", copy, expect=1)
    line = one_line_error(err)
    assert "the entry of task 'second' was edited after the task was stored" in line and "manifest.json" in line


def test_edited_field_outside_the_record_is_caught_by_the_hash(cli, copy):
    edit_entry(copy, 0, lambda e: e["train"].update(steps=5000))
    out = verify_fails(cli, copy)
    assert "FAIL  first: its manifest entry was edited: its entry_sha256 does not match" in out


def test_metrics_rows_may_be_recorded_again(cli, copy):
    edit_entry(copy, 0, lambda e: e.update(metrics={"l1": 0.5}, metrics_protocol="reference"))
    _, out, _ = cli("verify", "--model-dir", copy)
    assert "OK    first: probe output bit-identical" in out


@pytest.mark.parametrize("option, value, message", [
    ("budget", "x", "option 'budget' (--budget of the factorizer piggyback) must be a number, got \"x\""),
    ("ngf", "eight", "option 'ngf' (--ngf of the architecture pix2pix) must be a whole number, got \"eight\""),
    ("no_dropout", 0, "option 'no_dropout' (--no-dropout of the architecture pix2pix) must be true or false, got 0"),
])
def test_option_of_the_wrong_type_is_named(cli, copy, tmp_path, option, value, message):
    edit_entry(copy, 1, lambda e: e["options"].update({option: value}), rehash=True)
    out = verify_fails(cli, copy)
    assert f"FAIL  second: {copy / 'manifest.json'}: task 'second' {message}; restore manifest.json" in out
    _, _, err = cli("generate", "--task", "second", FACADES / "test", tmp_path / "out", "--model-dir", copy, expect=1)
    line = one_line_error(err)
    assert message in line and "internal error" not in line


@pytest.mark.parametrize("option, value", [("batch_size", 1.5), ("seed", None), ("bn_images", "400")])
def test_core_option_of_the_wrong_type_is_named_on_load(cli, copy, option, value):
    edit_entry(copy, 0, lambda e: e["options"].update({option: value}))
    _, _, err = cli("tasks", "--model-dir", copy, expect=1)
    line = one_line_error(err)
    assert f"tasks[0] ('first') option {option!r} must be a whole number" in line and "manifest.json" in line


@pytest.mark.parametrize("field, kind", [("arch", "architecture"), ("factorizer", "factorizer")])
def test_unknown_plugin_names_the_task(cli, copy, field, kind):
    edit_entry(copy, 1, lambda e: e.update({field: "nosuch"}), rehash=True)
    out = verify_fails(cli, copy)
    assert (f"FAIL  second: {copy / 'manifest.json'}: task 'second' needs the {kind} 'nosuch', which no installed "
            "plugin provides; install the plugin that provides it") in out
    assert "OK    first" in out


def test_finetune_forgets_by_design_and_passes(cli, tmp_path):
    root = tmp_path / "finetune"
    for task in ("first", "second"):
        cli("train", "--arch", "pix2pix", "--factorizer", "finetune", "--task", task, "--data", FACADES, *TINY,
            "--max-images", "2", "--eval-images", "1", "--steps", "1", "--model-dir", root)
    _, out, err = cli("verify", "--model-dir", root)
    assert "OK    first: probe output bit-identical" in out and "OK    second: probe output bit-identical" in out
    assert ("NOTE  first: forgotten by design: --factorizer finetune retrains one generator, so it now computes "
            "what the latest task 'second' computes") in out
    assert "NOTE  second" not in out and "FAIL" not in out


def test_no_model(cli, tmp_path):
    _, _, err = cli("verify", "--model-dir", tmp_path / "none", expect=1)
    assert "no pbgan model" in one_line_error(err)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(probe_file="probes/0002-second.safetensors"),
     "field 'probe_file' is 'probes/0002-second.safetensors', expected 'probes/0001-first.safetensors'"),
    (lambda e: e.pop("probe_file_sha256"), "must have both 'probe_file' and 'probe_file_sha256' or neither"),
    (lambda e: e.update(entry_sha256="edited"), "field 'entry_sha256' must be a sha256 hex digest"),
])
def test_probe_fields_follow_the_schema(cli, copy, change, message):
    edit_entry(copy, 0, change)
    _, _, err = cli("verify", "--model-dir", copy, expect=1)
    assert f"tasks[0] ('first') {message}" in one_line_error(err)


def test_probe_files_count_among_a_task_s_bytes(cli, copy):
    _, out, _ = cli("tasks", "--json", "--model-dir", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for row, entry in zip(json.loads(out)["tasks"], manifest["tasks"]):
        assert row["file_bytes"] == sum((copy / entry[k]).stat().st_size for k in ("file", "bank_file", "probe_file"))


@pytest.mark.parametrize("option, value", [("no_flip", 1), ("ngf", 8.0), ("budget", "x"), ("netG", 3)])
def test_python_api_refuses_option_values_a_stored_task_could_not_have(option, value, tmp_path):
    """What `check_entry_plugins` refuses on load is never written: a keyword of the wrong type is refused first."""
    from pbgan_core.api import train_request
    from pbgan_core.errors import UsageError

    with pytest.raises(UsageError, match=option):
        train_request("pix2pix", "t", FACADES, model_dir=tmp_path / "m", **{option: value})
    assert train_request("pix2pix", "t", FACADES, model_dir=tmp_path / "m", budget=1, no_flip=True).extra["budget"] == 1
