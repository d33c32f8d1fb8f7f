import math
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pbgan_core.errors import PbganError
from pbgan_core.interfaces import Loss
from pbgan_plugins.losses import GANLoss, ImagePool, gradient_penalty, register_losses

X = torch.tensor([0.0, 2.0])


def close(a, b):
    return abs(float(a) - float(b)) < 1e-6


def test_vanilla_matches_softplus():
    loss = GANLoss("vanilla")
    assert close(loss(X, True), F.softplus(-X).mean())
    assert close(loss(X, False), F.softplus(X).mean())
    # generator loss is the real-target loss
    assert close(loss(X, True, for_discriminator=False), F.softplus(-X).mean())
    # hand value: (log 2 + log(1 + e^-2)) / 2
    assert close(loss(X, True), (math.log(2) + math.log1p(math.exp(-2))) / 2)


def test_lsgan_values():
    loss = GANLoss("lsgan")
    assert close(loss(X, True), ((0 - 1) ** 2 + (2 - 1) ** 2) / 2)  # 1.0
    assert close(loss(X, False), (0 + 4) / 2)  # 2.0


def test_hinge_values():
    loss = GANLoss("hinge")
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert close(loss(x, True), (3.0 + 0.5 + 0.0) / 3)
    assert close(loss(x, False), (0.0 + 1.5 + 4.0) / 3)
    assert close(loss(x, True, for_discriminator=False), -(-2.0 + 0.5 + 3.0) / 3)


def test_wgangp_values():
    loss = GANLoss("wgangp")
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert close(loss(x, True), -0.5)
    assert close(loss(x, False), 0.5)
    assert close(loss(x, True, for_discriminator=False), -0.5)


def test_label_buffers_and_patch_targets():
    loss = GANLoss("lsgan")
    names = dict(loss.named_buffers())
    assert float(names["real_label"]) == 1.0 and float(names["fake_label"]) == 0.0
    pred = torch.full((2, 1, 3, 3), 0.25)
    assert loss.get_target_tensor(pred, True).shape == pred.shape
    assert close(loss(pred, True), 0.75 ** 2)
    # a list of predictions (multi-scale D) averages the losses
    assert close(loss([pred, torch.ones(1, 1, 2, 2)], True), 0.75 ** 2 / 2)


def test_unknown_mode():
    with pytest.raises(PbganError, match="unknown GAN loss mode"):
        GANLoss("nope")


class LinearCritic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(1, 3, 2, 2)
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    unit = LinearCritic(w / w.norm())
    assert float(gradient_penalty(unit, real, fake).detach()) < 1e-8
    double = LinearCritic(2 * w / w.norm())
    gp = gradient_penalty(double, real, fake, lambda_gp=10.0)
    assert abs(float(gp.detach()) - 10.0) < 1e-4
    gp.backward()  # create_graph: the penalty reaches the critic's parameters
    assert double.w.grad is not None and double.w.grad.abs().sum() > 0
    assert float(gradient_penalty(double, real, fake, constant=2.0).detach()) < 1e-8
    assert float(gradient_penalty(double, real, fake, lambda_gp=0.0).detach()) == 0.0


def test_image_pool_zero_returns_input():
    pool = ImagePool(0)
    x = torch.randn(3, 3, 2, 2)
    assert pool.query(x) is x


def test_image_pool_fills_then_swaps():
    pool = ImagePool(2, rng=random.Random(0))
    a = torch.zeros(2, 1, 1, 1)
    out = pool.query(a)
    assert torch.equal(out, a) and len(pool) == 2
    seen_old = seen_new = 0
    for step in range(1, 40):
        b = torch.full((1, 1, 1, 1), float(step))
        out = pool.query(b)
        assert out.shape == b.shape and len(pool) == 2
        if float(out) == step:
            seen_new += 1
        else:
            seen_old += 1
            assert float(out) < step  # an earlier stored image
    assert seen_old > 5 and seen_new > 5


def test_image_pool_detaches():
    pool = ImagePool(1)
    x = torch.randn(2, 1, 2, 2, requires_grad=True)
    assert not pool.query(x * 2).requires_grad


def test_register_losses():
    got = {}
    register_losses(lambda loss: got.setdefault(loss.name, loss))
    assert set(got) == {"vanilla", "lsgan", "hinge", "wgangp", "l1"}
    assert all(isinstance(v, Loss) for v in got.values())
    built = got["hinge"].build()
    assert isinstance(built, GANLoss) and built.gan_mode == "hinge"
    assert isinstance(got["l1"].build(), nn.L1Loss)


def discriminator_calls(arch: str, **options) -> int:
    """How often the trainer's discriminators run in one training step."""
    from pbgan_core.plugins import get_plugins

    architecture = get_plugins().architectures.get(arch)
    opts = {o.key: o.default for o in architecture.options}
    opts.update(size=32, ngf=8, ndf=8, direction="AtoB", seed=0, **options)
    if arch == "cyclegan":
        opts["netG"] = "resnet_6blocks"
    trainer = architecture.build_trainer(architecture.build_generators(opts), opts, torch.device("cpu"), 10)
    calls = []
    for module in vars(trainer).values():
        if isinstance(module, nn.Module) and type(module).__name__.endswith("Discriminator"):
            module.register_forward_hook(lambda *_: calls.append(1))
    trainer.step({k: torch.rand(1, 3, 32, 32) * 2 - 1 for k in "AB"})
    return len(calls)


@pytest.mark.parametrize("arch", ["pix2pix", "cyclegan"])
def test_wgangp_applies_no_gradient_penalty_unless_asked_as_the_reference(arch):
    plain = discriminator_calls(arch, gan_mode="lsgan")
    assert discriminator_calls(arch, gan_mode="wgangp") == plain
    assert discriminator_calls(arch, gan_mode="wgangp", gp_lambda=10.0) > plain  # the penalty's extra pass
