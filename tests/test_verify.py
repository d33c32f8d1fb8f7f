"""`pbgan verify`: a clean model passes; each kind of damage is named, with a non-zero exit."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from pbgan_core.atomic import sha256_bytes
from pbgan_core.cli import main
from pbgan_core.store import _safetensors_metadata
from tests.conftest import FACADES, TINY, needs_data, one_line_error

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


def test_clean_model_is_ok(cli, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    assert all(len(t["probe_sha256"]) == 64 for t in manifest["tasks"])
    _, out, err = cli("verify", "--model-dir", copy)
    assert "OK    first" in out and "OK    second" in out and not err


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


def test_missing_file_is_named(cli, copy):
    (copy / "tasks" / "0001-first.safetensors").unlink()
    out = verify_fails(cli, copy)
    assert "FAIL  first" in out and "0001-first.safetensors is missing" in out and "OK    second" in out


def test_wrong_shaped_tensor_is_named(cli, copy):
    """Even with the manifest hash updated to match, a tensor of the wrong shape is caught by name."""
    path = copy / "tasks" / "0002-second.safetensors"
    data = path.read_bytes()
    tensors = load(data)
    key = next(k for k in sorted(tensors) if k.endswith(".coef"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    new = save(tensors, metadata=_safetensors_metadata(data))
    path.write_bytes(new)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tasks"][1]["sha256"] = sha256_bytes(new)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = verify_fails(cli, copy)
    assert f"FAIL  second: tasks/0002-second.safetensors: tensor {key} has shape" in out


def test_changed_weights_fail_the_probe(cli, copy):
    """A consistent but different task file (hash updated): only the probe can tell."""
    path = copy / "tasks" / "0001-first.safetensors"
    data = path.read_bytes()
    tensors = load(data)
    key = next(k for k in sorted(tensors) if k.endswith(".bias"))
    tensors[key] = tensors[key] + 0.5
    new = save(tensors, metadata=_safetensors_metadata(data))
    path.write_bytes(new)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tasks"][0]["sha256"] = sha256_bytes(new)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = verify_fails(cli, copy)
    assert "FAIL  first: its generator no longer computes the probe output" in out


def test_no_model(cli, tmp_path):
    _, _, err = cli("verify", "--model-dir", tmp_path / "none", expect=1)
    assert "no pbgan model" in one_line_error(err)
