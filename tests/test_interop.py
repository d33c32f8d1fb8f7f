"""Export to plain formats and import of reference pix2pix generator checkpoints."""
import importlib.util
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pbgan_core.engine import load_generators
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import UnetGenerator, get_norm_layer
from tests.conftest import FACADES, TINY, needs_data, one_line_error

pytestmark = needs_data(FACADES)


def reference_checkpoint(path: Path, norm: str = "batch", prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A tiny unet_32 (5 downsamplings, ngf 8) saved as a reference latest_net_G.pth is saved,
    here also with a DataParallel `module.` prefix."""
    torch.manual_seed(1)
    net = UnetGenerator(3, 3, 5, ngf=8, norm_layer=get_norm_layer(norm), use_dropout=True)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0, 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = net.state_dict()
    if norm == "instance":  # old reference checkpoints carry these for instance norm
        state["model.model.1.model.2.running_mean"] = torch.zeros(16)
        state["model.model.1.model.2.running_var"] = torch.ones(16)
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return net.eval()


def imported(cli, tmp_path, norm="batch"):
    net = reference_checkpoint(tmp_path / "latest_net_G.pth", norm)
    model = tmp_path / "model"
    cli("import", "--arch", "pix2pix", "--task", "ref", "--data", FACADES, "--direction", "BtoA",
        "--eval-images", 2, tmp_path / "latest_net_G.pth", "--model-dir", model)
    return net, model


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_import_reference_checkpoint_runs_exactly(cli, tmp_path, norm):
    net, model = imported(cli, tmp_path, norm)
    store = ModelStore(model)
    entry = store.task("ref")
    assert (entry["options"]["netG"], entry["options"]["ngf"], entry["options"]["norm"]) == ("unet_32", 8, norm)
    assert entry["params"]["bank_before"] == 0 and entry["params"]["stored"] == entry["params"]["standalone"]
    _, gens = load_generators(store, get_plugins(), "ref")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(gens["G"](x), net(x))
    cli("verify", "--model-dir", model)
    # a later task piggybacks on the imported filters, and the imported task stays exact
    cli("train", "--arch", "pix2pix", "--task", "next", "--data", FACADES, *TINY, "--norm", norm,
        "--max-images", "4", "--steps", 2, "--model-dir", model)
    _, gens = load_generators(ModelStore(model), get_plugins(), "ref")
    with torch.no_grad():
        assert torch.equal(gens["G"](x), net(x))


def test_export_state_dict_matches_reference_layout(cli, tmp_path):
    net, model = imported(cli, tmp_path)
    _, out, _ = cli("export", "--task", "ref", "--format", "state-dict", tmp_path / "out", "--model-dir", model)
    reference = net.state_dict()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latest_net_G.pth", "latest_net_G.safetensors"]
    for exported in (load_file(tmp_path / "out" / "latest_net_G.safetensors"),
                     torch.load(tmp_path / "out" / "latest_net_G.pth", weights_only=True)):
        assert exported.keys() == reference.keys()
        for k, v in reference.items():
            assert exported[k].shape == v.shape and torch.equal(exported[k], v), k
    assert "model.model.1.model.3.model.1.weight" in reference  # reference nesting, not our own naming


def test_export_torchscript_runs_without_pbgan(cli, tmp_path):
    net, model = imported(cli, tmp_path)
    cli("export", "--task", "ref", "--format", "torchscript", tmp_path / "G.pt", "--model-dir", model)
    scripted = torch.jit.load(tmp_path / "G.pt")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-6)


def test_export_onnx(cli, tmp_path):
    _, model = imported(cli, tmp_path)
    if importlib.util.find_spec("onnx") is None:
        _, _, err = cli("export", "--task", "ref", "--format", "onnx", tmp_path / "G.onnx", "--model-dir", model,
                        expect=1)
        assert "pip install onnx" in one_line_error(err) and not (tmp_path / "G.onnx").exists()
    else:
        cli("export", "--task", "ref", "--format", "onnx", tmp_path / "G.onnx", "--model-dir", model)
        assert (tmp_path / "G.onnx").stat().st_size > 0


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable PyTorch checkpoint"),
    (None, "not a plain state dict"),
    ("resnet", "not a pix2pix U-Net"),
])
def test_import_refuses_bad_checkpoints(cli, tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save([1, 2, 3], path)
    elif content == "resnet":
        torch.save({"model.1.weight": torch.zeros(8, 3, 7, 7)}, path)
    else:
        path.write_bytes(content)
    _, _, err = cli("import", "--arch", "pix2pix", "--task", "x", "--data", FACADES, "--direction", "BtoA", path,
                    "--model-dir", tmp_path / "model", expect=1)
    assert message in one_line_error(err)
    assert not (tmp_path / "model" / "manifest.json").exists()


def test_import_needs_an_empty_model(cli, tmp_path):
    _, model = imported(cli, tmp_path)
    _, _, err = cli("import", "--arch", "pix2pix", "--task", "again", "--data", FACADES, "--direction", "BtoA",
                    tmp_path / "latest_net_G.pth", "--model-dir", model, expect=1)
    assert "has tasks already" in one_line_error(err)


@needs_data(FACADES)
def test_export_state_dict_refuses_resize_upsampling(cli, tmp_path):
    model = tmp_path / "m"
    cli("train", "--arch", "pix2pix", "--task", "resized", "--data", FACADES, "--direction", "BtoA", "--steps", 1,
        "--upsample", "resize", "--model-dir", model, *TINY)
    _, _, err = cli("export", "--task", "resized", "--format", "state-dict", tmp_path / "out", "--model-dir", model,
                    expect=1)
    assert "resize-convolution" in one_line_error(err) and not (tmp_path / "out").exists()
    cli("export", "--task", "resized", "--format", "torchscript", tmp_path / "G.pt", "--model-dir", model)
    assert (tmp_path / "G.pt").stat().st_size > 0


def test_export_force_replaces_only_regular_files(cli, tmp_path):
    _, model = imported(cli, tmp_path)
    (tmp_path / "mine").write_bytes(b"mine")
    (tmp_path / "link.pt").symlink_to(tmp_path / "mine")
    os.mkfifo(tmp_path / "pipe.pt")  # stands for a device node such as /dev/full
    for target, kind in ((tmp_path / "pipe.pt", stat.S_ISFIFO), (tmp_path / "link.pt", stat.S_ISLNK)):
        _, _, err = cli("export", "--task", "ref", "--format", "torchscript", target, "--force", "--model-dir", model,
                        expect=1)
        assert f"{target} exists and is not a regular file" in one_line_error(err)
        assert kind(os.lstat(target).st_mode)
    assert (tmp_path / "mine").read_bytes() == b"mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
