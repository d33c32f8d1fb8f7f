"""Reference checkpoints in and out: CycleGAN pairs, the reference's file names, instance-norm
statistics, the reference test-time protocol, and checkpoints that are not weights only."""
import argparse
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from pbgan_core.engine import load_generators
from pbgan_core.images import write_image
from pbgan_core.plugins import get_plugins
from pbgan_core.protocol import image_seed
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import ResnetGenerator, UnetGenerator, get_norm_layer
from tests.conftest import FACADES, needs_data, one_line_error


def randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def resnet(seed: int, dropout: bool = False) -> ResnetGenerator:
    return randomized(ResnetGenerator(3, 3, ngf=8, norm_layer=get_norm_layer("instance"), use_dropout=dropout,
                                      n_blocks=6), seed)


def save_with_instance_statistics(net: torch.nn.Module, path):
    """As some forks and old PyTorch versions save instance norm: with running statistics."""
    state = dict(net.state_dict())
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(m.num_features)
            state[f"{name}.running_var"] = torch.ones(m.num_features)
    torch.save(state, path)


@pytest.fixture
def unaligned(tmp_path):
    rng = np.random.default_rng(0)
    for side in "AB":
        folder = tmp_path / "data" / f"test{side}"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "data"


@pytest.mark.parametrize("as_folder", [False, True])
def test_cyclegan_pair_round_trips_exactly(cli, tmp_path, unaligned, as_folder):
    nets = {"G_A": resnet(1), "G_B": resnet(2)}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for g, net in nets.items():
        save_with_instance_statistics(net, ckpt / f"latest_net_{g}.pth")
    files = [ckpt] if as_folder else [ckpt / "latest_net_G_B.pth", ckpt / "latest_net_G_A.pth"]
    model = tmp_path / "model"
    _, out, _ = cli("import", "--arch", "cyclegan", "--task", "h2z", "--data", unaligned, "--size", 32,
                    "--eval-images", 2, *files, "--model-dir", model)
    assert "dropped 2" not in out and "running statistics of instance-norm layers" in " ".join(out.split())
    entry = ModelStore(model).task("h2z")
    assert (entry["options"]["netG"], entry["options"]["ngf"], entry["options"]["norm"]) == ("resnet_6blocks", 8,
                                                                                           "instance")
    assert entry["direction"] == "AtoB" and "import_note" in entry["train"]
    _, gens = load_generators(ModelStore(model), get_plugins(), "h2z")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for g, net in nets.items():
            assert torch.equal(gens[g](x), net(x)), g
    # export under the reference's file names; the reference loader takes them as they are
    cli("export", "--task", "h2z", tmp_path / "out", "--model-dir", model)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "latest_net_G_A.pth", "latest_net_G_A.safetensors", "latest_net_G_B.pth", "latest_net_G_B.safetensors"]
    for g, net in nets.items():
        fresh = ResnetGenerator(3, 3, ngf=8, norm_layer=get_norm_layer("instance"), n_blocks=6).eval()
        fresh.load_state_dict(torch.load(tmp_path / "out" / f"latest_net_{g}.pth", weights_only=True), strict=True)
        with torch.no_grad():
            assert torch.equal(fresh(x), net(x)), g


def test_cyclegan_with_dropout_and_nine_blocks_is_recognized(cli, tmp_path, unaligned):
    for g, seed in (("G_A", 1), ("G_B", 2)):
        net = randomized(ResnetGenerator(3, 3, ngf=4, norm_layer=get_norm_layer("instance"), use_dropout=True,
                                         n_blocks=9), seed)
        torch.save(net.state_dict(), tmp_path / f"latest_net_{g}.pth")
    cli("import", "--arch", "cyclegan", "--task", "t", "--data", unaligned, "--size", 32, "--eval-images", 1,
        tmp_path / "latest_net_G_A.pth", tmp_path / "latest_net_G_B.pth", "--model-dir", tmp_path / "m")
    o = ModelStore(tmp_path / "m").task("t")["options"]
    assert (o["netG"], o["ngf"], o["dropout"]) == ("resnet_9blocks", 4, True)


def test_cyclegan_pair_must_be_named_and_match(cli, tmp_path, unaligned):
    torch.save(resnet(1).state_dict(), tmp_path / "a.pth")
    torch.save(resnet(2).state_dict(), tmp_path / "b.pth")
    _, _, err = cli("import", "--arch", "cyclegan", "--task", "t", "--data", unaligned, tmp_path / "a.pth",
                    tmp_path / "b.pth", "--model-dir", tmp_path / "m", expect=2)
    assert "latest_net_G_A.pth, latest_net_G_B.pth" in one_line_error(err)
    torch.save(resnet(1).state_dict(), tmp_path / "latest_net_G_A.pth")
    torch.save(randomized(ResnetGenerator(3, 3, ngf=4, norm_layer=get_norm_layer("instance"), n_blocks=6), 3)
               .state_dict(), tmp_path / "latest_net_G_B.pth")
    _, _, err = cli("import", "--arch", "cyclegan", "--task", "t", "--data", unaligned, tmp_path / "latest_net_G_A.pth",
                    tmp_path / "latest_net_G_B.pth", "--model-dir", tmp_path / "m", expect=1)
    assert "are different generators" in one_line_error(err)
    assert not (tmp_path / "m" / "manifest.json").exists()


@needs_data(FACADES)
def test_pix2pix_import_needs_the_direction(cli, tmp_path):
    torch.save(UnetGenerator(3, 3, 5, ngf=8).state_dict(), tmp_path / "latest_net_G.pth")
    _, _, err = cli("import", "--arch", "pix2pix", "--task", "f", "--data", FACADES, tmp_path / "latest_net_G.pth",
                    "--model-dir", tmp_path / "m", expect=2)
    assert "give --direction AtoB or BtoA" in one_line_error(err)


@needs_data(FACADES)
def test_imported_pix2pix_generates_the_reference_test_outputs(cli, tmp_path):
    """pbgan generate under the reference protocol = the reference test.py: the image resized by PIL
    bicubic, the net in train mode, one image per batch; same dropout mask from the same seed."""
    net = randomized(UnetGenerator(3, 3, 6, ngf=8, norm_layer=get_norm_layer("batch"), use_dropout=True), 4)
    torch.save(net.state_dict(), tmp_path / "latest_net_G.pth")
    model = tmp_path / "m"
    cli("import", "--arch", "pix2pix", "--task", "facades", "--direction", "BtoA", "--data", FACADES,
        "--eval-images", 1, tmp_path / "latest_net_G.pth", "--model-dir", model)
    image = FACADES / "test" / "3.jpg"
    for protocol in ("reference", "eval"):
        out = tmp_path / f"{protocol}.png"
        cli("generate", "--task", "facades", "--aligned", "--protocol", protocol, image, out, "--model-dir", model)
        ab = Image.open(image).convert("RGB")
        b = ab.crop((ab.width // 2, 0, ab.width, ab.height)).resize((64, 64), Image.BICUBIC)
        x = torch.from_numpy(np.array(b)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]
        reference = copy.deepcopy(net).train(protocol == "reference")  # train mode updates its statistics
        torch.manual_seed(image_seed("facades", "G", "3.jpg"))
        with torch.no_grad():
            expected = reference(x)[0]
        assert write_image(expected, tmp_path / "expected.png").read_bytes() == out.read_bytes(), protocol


def test_not_weights_only_checkpoint_is_one_line_of_our_own(cli, tmp_path):
    torch.save({"opt": argparse.Namespace(lr=2e-4), "model.1.weight": torch.zeros(1)}, tmp_path / "full.pth")
    _, _, err = cli("import", "--arch", "pix2pix", "--task", "t", "--data", tmp_path, "--direction", "BtoA",
                    tmp_path / "full.pth", "--model-dir", tmp_path / "m", expect=1)
    line = one_line_error(err)
    assert "is not a weights-only checkpoint" in line and "it is not loaded" in line
    assert "weights_only=False" not in err and "\x1b" not in err and "Weights only load failed" not in err
