"""Network layouts match the reference pix2pix/CycleGAN models; shapes, depths and init."""

import pytest
import torch
from torch import nn

from pbgan_plugins.networks import (
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    build_discriminator,
    build_generator,
    get_norm_layer,
    init_weights,
    unet_depth,
)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# -----------------------------------------------------------------------------
# parameter counts and state_dict keys match the reference


@pytest.mark.parametrize("netG, expected", [("unet_256", 54_413_955), ("unet_128", 41_828_995)])
def test_unet_param_count(netG, expected):
    net = build_generator(netG, 3, 3, ngf=64, norm="batch")
    assert n_params(net) == expected


def test_resnet_9blocks_param_count():
    net = build_generator("resnet_9blocks", 3, 3, ngf=64, norm="instance")
    assert n_params(net) == 11_378_179


def test_basic_discriminator_param_count():
    net = build_discriminator("basic", 6, ndf=64, norm="batch")
    assert n_params(net) == 2_768_705


def test_unet_state_dict_keys():
    keys = set(build_generator("unet_256", 3, 3, ngf=8, norm="batch").state_dict())
    assert "model.model.0.weight" in keys  # outermost downconv, no bias
    assert "model.model.0.bias" not in keys
    assert "model.model.3.weight" in keys and "model.model.3.bias" in keys  # outermost upconv
    assert any(k.startswith("model.model.1.model.") for k in keys)
    # second level: [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
    assert "model.model.1.model.1.weight" in keys
    assert "model.model.1.model.2.running_mean" in keys
    assert "model.model.1.model.5.weight" in keys
    # innermost (8th) level: [downrelu, downconv, uprelu, upconv, upnorm]
    inner = "model.model.1" + ".model.3" * 6 + ".model."
    assert inner + "1.weight" == "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.model.1.weight"
    assert inner + "1.weight" in keys
    assert inner + "3.weight" in keys
    assert inner + "4.weight" in keys
    assert not any(k.startswith(inner + "5") for k in keys)


def test_unet_dropout_does_not_change_keys():
    plain = build_generator("unet_256", 3, 3, ngf=8, norm="batch")
    drop = build_generator("unet_256", 3, 3, ngf=8, norm="batch", use_dropout=True)
    assert list(plain.state_dict()) == list(drop.state_dict())
    assert sum(isinstance(m, nn.Dropout) for m in drop.modules()) == 3  # the ngf*8 middle levels


def test_resnet_state_dict_keys():
    keys = set(build_generator("resnet_9blocks", 3, 3, ngf=8, norm="instance").state_dict())
    for k in ["model.1.weight", "model.1.bias", "model.10.conv_block.1.weight",
              "model.10.conv_block.5.weight", "model.18.conv_block.5.bias", "model.26.weight"]:
        assert k in keys, k


def test_discriminator_state_dict_keys():
    keys = set(build_discriminator("basic", 6, ndf=8, norm="batch").state_dict())
    assert {"model.0.weight", "model.0.bias", "model.2.weight", "model.3.running_var", "model.11.bias"} <= keys
    assert "model.2.bias" not in keys  # conv before BatchNorm has no bias
    pixel = set(build_discriminator("pixel", 6, ndf=8, norm="batch").state_dict())
    assert {"net.0.weight", "net.2.weight", "net.3.weight", "net.5.weight"} <= pixel


# -----------------------------------------------------------------------------
# forward shapes


def test_unet_auto_forward_32px():
    torch.manual_seed(0)
    net = build_generator("auto", 3, 2, ngf=4, norm="batch", size=32)
    assert isinstance(net, UnetGenerator)
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 2, 32, 32)
    assert y.abs().max() <= 1.0  # tanh


def test_resize_upsampling_replaces_every_transposed_conv():
    reference = build_generator("auto", 3, 3, ngf=4, size=32)
    resize = build_generator("auto", 3, 3, ngf=4, size=32, upsample="resize")
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in reference.modules()) == 5  # the default is the reference
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in resize.modules())
    assert sum(isinstance(m, nn.Upsample) for m in resize.modules()) == 5
    assert resize(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown upsampling 'pixelshuffle'"):
        build_generator("auto", 3, 3, ngf=4, size=32, upsample="pixelshuffle")


def test_resize_upsampling_has_no_checkerboard():
    """A constant feature map stays constant through nearest resize + conv; a stride-2 transposed conv
    gives its pixels different sums of kernel taps (the checkerboard)."""
    torch.manual_seed(0)
    x = torch.ones(1, 4, 8, 8)
    from pbgan_plugins.networks import upsampling

    transposed = upsampling("transpose", 4, 4, bias=False)[0]
    resize = nn.Sequential(*upsampling("resize", 4, 4, bias=False))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the zero padding
    assert transposed(x)[inner].std((2, 3)).max() > 1e-3
    assert resize(x)[inner].std((2, 3)).max() < 1e-6


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_shallow_unet_forward(depth):
    net = UnetGenerator(3, 3, depth, ngf=4, norm_layer=get_norm_layer("instance"))
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_resnet_forward_32px():
    net = build_generator("resnet_6blocks", 3, 3, ngf=4, norm="instance", use_dropout=True)
    assert isinstance(net, ResnetGenerator)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_discriminator_forward():
    x = torch.randn(2, 6, 64, 64)
    assert NLayerDiscriminator(6, ndf=4).eval()(x).shape == (2, 1, 6, 6)
    assert PixelDiscriminator(6, ndf=4)(x).shape == (2, 1, 64, 64)
    assert build_discriminator("n_layers", 6, ndf=4, n_layers_d=1, norm="none")(x).shape == (2, 1, 30, 30)


# -----------------------------------------------------------------------------
# names and errors


@pytest.mark.parametrize("netG, size, depth", [
    ("unet_256", None, 8), ("unet_128", 256, 7), ("unet_2", None, 1), ("auto", 32, 5), ("auto", 2, 1),
])
def test_unet_depth(netG, size, depth):
    assert unet_depth(netG, size) == depth


@pytest.mark.parametrize("netG, size", [
    ("unet_100", None), ("unet_1", None), ("unet_", None), ("unet_x", None), ("unet_-4", None),
    ("auto", None), ("auto", 48), ("auto", 1), ("resnet_9blocks", 32),
])
def test_unet_depth_errors(netG, size):
    with pytest.raises(ValueError):
        unet_depth(netG, size)


def test_builder_errors():
    with pytest.raises(ValueError):
        build_generator("unet_64", 3, 3, ngf=4, size=48)  # 48 is not a multiple of 64
    with pytest.raises(ValueError):
        build_generator("vgg", 3, 3)
    with pytest.raises(ValueError):
        build_discriminator("huge", 6)
    with pytest.raises(ValueError):
        get_norm_layer("group")
    with pytest.raises(ValueError):
        init_weights(nn.Conv2d(1, 1, 1), "uniform")


def test_norm_layers():
    bn = get_norm_layer("batch")(4)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats
    inorm = get_norm_layer("instance")(4)
    assert isinstance(inorm, nn.InstanceNorm2d) and not inorm.affine and not inorm.track_running_stats
    assert isinstance(get_norm_layer("none")(4), nn.Identity)


# -----------------------------------------------------------------------------
# init


def test_init_weights_normal():
    torch.manual_seed(0)
    net = init_weights(build_discriminator("basic", 6, ndf=32, norm="batch"), "normal", 0.02)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.mean().item()) < 0.002
    assert abs(w.std().item() - 0.02) < 0.002
    assert all(m.bias is None or torch.all(m.bias == 0) for m in convs)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.cat([m.weight for m in bns])
    assert abs(g.mean().item() - 1.0) < 0.01 and abs(g.std().item() - 0.02) < 0.01
    assert all(torch.all(m.bias == 0) for m in bns)


@pytest.mark.parametrize("init_type", ["xavier", "kaiming", "orthogonal"])
def test_init_weights_other_types(init_type):
    net = init_weights(build_generator("unet_8", 3, 3, ngf=4, norm="instance"), init_type)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.isfinite(m.weight).all() and torch.all(m.bias == 0)
