"""tinygan: a small encoder-decoder generator, a 3-layer PatchGAN, GAN + L1 loss."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.interfaces import Architecture, Trainer
from pbgan_core.options import Option


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder_decoder(ngf: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, ngf, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ngf, 2 * ngf, 4, 2, 1), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, True),
        ResidualBlock(2 * ngf),
        nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1), nn.Tanh(),
    )


def patch_discriminator(ndf: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(6, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, 2 * ndf, 4, 2, 1), nn.BatchNorm2d(2 * ndf), nn.LeakyReLU(0.2, True),
        nn.Conv2d(2 * ndf, 1, 4, 1, 1),
    )


def init_normal(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net


class TinyGAN(Architecture):
    name = "tinygan"
    description = "small encoder-decoder generator + 3-layer PatchGAN, GAN + L1 loss (example plugin)"
    paired = True
    default_dataset = "shapes"
    options = (
        Option("ngf", 16, "generator filters in the first layer"),
        Option("ndf", 16, "discriminator filters in the first layer"),
        Option("lr", 2e-4, "Adam learning rate"),
        Option("lambda-l1", 100.0, "weight of the L1 loss"),
    )

    def build_generators(self, opts: Mapping[str, Any]) -> dict[str, nn.Module]:
        if opts["size"] % 4:
            raise PbganError(f"tinygan needs --size divisible by 4, got {opts['size']}")
        return {"G": init_normal(encoder_decoder(opts["ngf"]))}

    def build_trainer(self, generators, opts, device, total_steps):
        return TinyTrainer(generators["G"], opts, device)


class TinyTrainer(Trainer):
    def __init__(self, G: nn.Module, opts: Mapping[str, Any], device: torch.device):
        self.G, self.lambda_l1 = G, opts["lambda_l1"]
        self.D = init_normal(patch_discriminator(opts["ndf"])).to(device)
        self.bce, self.l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
        adam = lambda params: torch.optim.Adam([p for p in params if p.requires_grad],  # noqa: E731
                                               lr=opts["lr"], betas=(0.5, 0.999))
        self.opt_G, self.opt_D = adam(G.parameters()), adam(self.D.parameters())
        self.source, self.target = ("A", "B") if opts["direction"] == "AtoB" else ("B", "A")

    def gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return self.bce(logits, torch.full_like(logits, float(real)))

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        a, b = batch[self.source], batch[self.target]
        fake = self.G(a)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d = 0.5 * (self.gan(self.D(torch.cat([a, fake.detach()], 1)), False)
                        + self.gan(self.D(torch.cat([a, b], 1)), True))
        loss_d.backward()
        self.opt_D.step()
        self.opt_G.zero_grad(set_to_none=True)
        loss_gan = self.gan(self.D(torch.cat([a, fake], 1)), True)
        loss_l1 = self.l1(fake, b)
        (loss_gan + self.lambda_l1 * loss_l1).backward()
        self.opt_G.step()
        return {"G_GAN": loss_gan.item(), "G_L1": loss_l1.item(), "D": loss_d.item()}
