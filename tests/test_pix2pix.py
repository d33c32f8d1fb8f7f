"""pix2pix: reference parameter counts, and training that really learns on facades."""
import pytest
import torch

from pbgan_core.engine import evaluate_task
from pbgan_core.options import defaults
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import build_discriminator

from .conftest import FACADES, needs_data


def pix2pix_opts(**kw):
    arch = get_plugins().architectures.get("pix2pix")
    opts = defaults(arch.options)
    opts.update(direction="BtoA", **kw)
    return arch, opts


@pytest.mark.parametrize("net, size, count", [("unet_256", 256, 54_413_955), ("unet_128", 128, 41_828_995),
                                              ("auto", 256, 54_413_955)])
def test_generator_parameters_match_the_reference(net, size, count):
    arch, opts = pix2pix_opts(netG=net, size=size)
    with torch.device("meta"):
        gen = arch.build_generators(opts)["G"]
    assert sum(p.numel() for p in gen.parameters()) == count


def test_patchgan_parameters_match_the_reference():
    with torch.device("meta"):
        d = build_discriminator("basic", 6, 64, 3, "batch")
    assert sum(p.numel() for p in d.parameters()) == 2_768_705


def test_a_resnet_generator_is_refused_by_pix2pix():
    from pbgan_core.errors import PbganError

    arch, opts = pix2pix_opts(netG="resnet_9blocks", size=64)
    with pytest.raises(PbganError, match="U-Net"):
        arch.build_generators(opts)


@needs_data(FACADES)
def test_training_lowers_test_l1_and_raises_ssim(cli, tmp_path):
    """A few hundred steps at 64 px: test L1 falls clearly below the untrained generator's and SSIM
    rises well above it. (Facade photos are textured: L1 falls slowly, SSIM shows structure.)"""
    common = ["--arch", "pix2pix", "--data", FACADES, "--direction", "BtoA", "--size", "64", "--ngf", "16",
              "--ndf", "16", "--batch-size", "4", "--max-images", "128", "--eval-images", "32", "--device", "cpu",
              "--seed", "1"]
    # the untrained generator: one step at a learning rate of zero changes nothing but the BN statistics
    cli("train", "--task", "untrained", "--model-dir", tmp_path / "a", "--steps", "1", "--lr", "0", *common)
    cli("train", "--task", "trained", "--model-dir", tmp_path / "b", "--steps", "300", *common)
    plugins = get_plugins()
    before = evaluate_task(ModelStore(tmp_path / "a"), plugins, "untrained")
    after = evaluate_task(ModelStore(tmp_path / "b"), plugins, "trained")
    print(f"test metrics: untrained {before}, trained {after}")
    assert after["l1"] < 0.95 * before["l1"], (before, after)
    assert after["ssim"] > 1.5 * before["ssim"], (before, after)
