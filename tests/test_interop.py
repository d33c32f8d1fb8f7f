"""Export to plain formats and import of reference pix2pix generator checkpoints."""
import importlib.util
import json
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
from tests.conftest import EDGES2SHOES, FACADES, TINY, needs_data, one_line_error

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


def test_export_state_dict_prints_the_reference_network_that_loads_it(cli, tmp_path):
    net, model = imported(cli, tmp_path)
    _, out, _ = cli("export", "--task", "ref", tmp_path / "out", "--model-dir", model)
    assert ("UnetGenerator(input_nc=3, output_nc=3, num_downs=5, ngf=8, norm_layer=get_norm_layer('batch'), "
            "use_dropout=True)") in out
    assert "--model pix2pix --netG unet_32 --ngf 8 --norm batch --direction BtoA --load_size 32 --crop_size 32" in out
    reference = UnetGenerator(input_nc=3, output_nc=3, num_downs=5, ngf=8, norm_layer=get_norm_layer("batch"),
                              use_dropout=True)
    reference.load_state_dict(torch.load(tmp_path / "out" / "latest_net_G.pth", weights_only=True), strict=True)


def torchscript_metadata(path: Path) -> tuple[torch.jit.ScriptModule, dict]:
    extra = {"pbgan.json": ""}
    module = torch.jit.load(path, _extra_files=extra)
    return module, json.loads(extra["pbgan.json"])


def test_export_torchscript_runs_without_pbgan_at_other_sizes_and_says_what_it_is(cli, tmp_path):
    net, model = imported(cli, tmp_path)
    _, _, err = cli("export", "--task", "ref", "--format", "torchscript", tmp_path / "G.pt", "--model-dir", model)
    assert "warning" not in err.lower()  # tracer notes stay inside
    scripted, meta = torchscript_metadata(tmp_path / "G.pt")
    assert meta["task"] == "ref" and meta["direction"] == "BtoA" and meta["size"] == "32"
    assert meta["size_multiple"] == "32" and meta["normalization"] == "[-1, 1]"
    for h, w in ((32, 32), (64, 96)):
        x = torch.rand(2, 3, h, w) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)


needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx package is not installed")


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed")
def test_export_onnx_without_the_package_says_what_to_install(cli, tmp_path):
    _, model = imported(cli, tmp_path)
    _, _, err = cli("export", "--task", "ref", "--format", "onnx", tmp_path / "G.onnx", "--model-dir", model, expect=1)
    assert "pip install onnx" in one_line_error(err) and not (tmp_path / "G.onnx").exists()


@needs_onnx
def test_export_onnx_carries_metadata_and_free_image_sizes(cli, tmp_path):
    import onnx

    net, model = imported(cli, tmp_path)
    _, _, err = cli("export", "--task", "ref", "--format", "onnx", tmp_path / "G.onnx", "--model-dir", model)
    assert "warning" not in err.lower()
    exported = onnx.load(tmp_path / "G.onnx")
    meta = {p.key: p.value for p in exported.metadata_props}
    assert meta["task"] == "ref" and meta["direction"] == "BtoA" and meta["size"] == "32"
    assert meta["normalization"] == "[-1, 1]" and meta["size_multiple"] == "32"
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "G.onnx"))
        x = torch.rand(1, 3, 64, 96) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), net(x),
                                       rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def cyclegan_model(tmp_path_factory):
    from pbgan_core.cli import main

    from .test_cyclegan import SMALL, make_unpaired

    root = tmp_path_factory.mktemp("cyc")
    data = make_unpaired(root / "data", train=4, test=2, size=32)
    assert main(["train", "--arch", "cyclegan", "--task", "e2s", "--data", str(data), "--steps", "1",
                 "--model-dir", str(root / "m"), *SMALL]) == 0
    return root / "m"


@needs_data(EDGES2SHOES)
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cyclegan_exports_both_generators(cli, tmp_path, cyclegan_model, fmt):
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        pytest.skip("the onnx package is not installed")
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    _, out, _ = cli("export", "--task", "e2s", "--format", fmt, tmp_path / f"e2s{suffix}", "--model-dir",
                    cyclegan_model)
    _, gens = load_generators(ModelStore(cyclegan_model), get_plugins(), "e2s")
    for gname, direction in (("G_A", "AtoB"), ("G_B", "BtoA")):
        path = tmp_path / f"e2s_{gname}{suffix}"
        assert str(path) in out
        if fmt == "torchscript":
            scripted, meta = torchscript_metadata(path)
            x = torch.rand(1, 3, 36, 44) * 2 - 1  # any multiple of 4
            with torch.no_grad():
                torch.testing.assert_close(scripted(x), gens[gname](x), rtol=0, atol=1e-5)
        else:
            import onnx

            meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert (meta["generator"], meta["direction"], meta["size_multiple"]) == (gname, direction, "4")


@needs_data(EDGES2SHOES)
def test_cyclegan_state_dict_export_prints_the_resnet(cli, tmp_path, cyclegan_model):
    _, out, _ = cli("export", "--task", "e2s", tmp_path / "out", "--model-dir", cyclegan_model)
    assert ("ResnetGenerator(input_nc=3, output_nc=3, ngf=8, norm_layer=get_norm_layer('instance'), "
            "use_dropout=False, n_blocks=6)") in out
    assert "--model cycle_gan --netG resnet_6blocks" in out


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
