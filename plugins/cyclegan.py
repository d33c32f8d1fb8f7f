"""CycleGAN (Zhu et al. 2017): two ResNet generators trained on unpaired images with
adversarial, cycle-consistency and identity losses.

G_A translates A -> B and G_B translates B -> A; D_A judges images of domain B, D_B images
of domain A, as in the reference code. Both generators are lifelong: the engine factorizes
each one against its own part of the bank.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Mapping

import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Architecture, GeneratorFamily, Trainer
from pbgan_core.options import Option

from .losses import ImagePool, gradient_penalty
from .networks import build_generator, init_weights
from .pix2pix import (DISCRIMINATOR_OPTIONS, GENERATOR_OPTIONS, build_gan_loss, load_training_state,
                      make_discriminator, make_optimizer, reference_lr_rule, save_training_state)

RESNETS = ("resnet_9blocks", "resnet_6blocks")
GENERATORS = {"AtoB": "G_A", "BtoA": "G_B"}


class CycleGAN(Architecture):
    name = "cyclegan"
    description = "two ResNet generators on unpaired data, GAN + cycle + identity losses (Zhu et al. 2017)"
    paired = False
    default_dataset = "unaligned"
    options = (
        Option("netG", "resnet_9blocks", "generator (9 blocks for 256 px, 6 for 128 px)", choices=RESNETS),
        *(o for o in GENERATOR_OPTIONS if o.key in ("ngf", "init_type")),
        Option("norm", "instance", "normalization layer of the generator and discriminators",
               choices=("batch", "instance", "none")),
        Option("dropout", False, "dropout 0.5 in the ResNet blocks (the reference CycleGAN uses none)"),
        *DISCRIMINATOR_OPTIONS,
        Option("gan-mode", "lsgan", "adversarial loss: vanilla (cross-entropy, pix2pix's), lsgan (least squares, "
               "CycleGAN's), hinge or wgangp (Wasserstein; as in the reference, no gradient penalty unless "
               "--gp-lambda)", choices=("vanilla", "lsgan", "hinge", "wgangp")),
        Option("lambda-a", 10.0, "weight of the cycle loss A -> B -> A", min=0),
        Option("lambda-b", 10.0, "weight of the cycle loss B -> A -> B", min=0),
        Option("lambda-identity", 0.5, "weight of the identity loss, relative to lambda-a / lambda-b (0: off)", min=0),
        Option("pool-size", 50, "generated images kept to train the discriminators (0: no pool)", min=0),
    )

    def build_generators(self, opts: Mapping[str, Any]) -> dict[str, nn.Module]:
        if opts["size"] % 4:
            raise PbganError(f"cyclegan downsamples twice, so --size must be a multiple of 4; got {opts['size']}")
        return {name: init_weights(build_generator(opts["netG"], 3, 3, opts["ngf"], opts["norm"], opts["dropout"]),
                                   opts["init_type"])
                for name in ("G_A", "G_B")}

    def generator_options(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        return {k: opts[k] for k in ("netG", "ngf", "norm", "dropout")}

    def generator_for(self, direction: str) -> str:
        return GENERATORS[direction]

    def build_trainer(self, generators, opts, device, total_steps):
        return CycleGANTrainer(generators["G_A"], generators["G_B"], opts, device, total_steps)


class CycleGANTrainer(Trainer):
    def __init__(self, G_A: nn.Module, G_B: nn.Module, opts: Mapping[str, Any], device: torch.device,
                 total_steps: int):
        self.G_A, self.G_B, self.opts, self.device = G_A, G_B, opts, device
        self.D_A, self.D_B = (make_discriminator(opts, 3, device) for _ in range(2))
        self.gan = build_gan_loss(opts["gan_mode"]).to(device)
        self.l1 = nn.L1Loss()
        self.opt_G = make_optimizer(itertools.chain(G_A.parameters(), G_B.parameters()), opts)
        self.opt_D = make_optimizer(itertools.chain(self.D_A.parameters(), self.D_B.parameters()), opts)
        schedule = reference_lr_rule(opts)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (self.opt_G, self.opt_D)]
        self.rng = random.Random(opts.get("seed", 0))  # shared by both pools; saved for an exact resume
        self.pool_A, self.pool_B = ImagePool(opts["pool_size"], self.rng), ImagePool(opts["pool_size"], self.rng)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # the engine enables it for fp16

    def discriminator_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss = 0.5 * (self.gan(D(real), True) + self.gan(D(fake), False))
        return loss + gradient_penalty(D, real, fake, lambda_gp=self.opts.get("gp_lambda", 0.0))

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a, real_b = batch["A"], batch["B"]
        o = self.opts
        fake_b = self.G_A(real_a)
        rec_a = self.G_B(fake_b)
        fake_a = self.G_B(real_b)
        rec_b = self.G_A(fake_a)

        # generators: fool both discriminators, close both cycles, leave the other domain alone
        self.D_A.requires_grad_(False)
        self.D_B.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        losses = {
            "G_A": self.gan(self.D_A(fake_b), True, for_discriminator=False),
            "G_B": self.gan(self.D_B(fake_a), True, for_discriminator=False),
            "cycle_A": self.l1(rec_a, real_a) * o["lambda_a"],
            "cycle_B": self.l1(rec_b, real_b) * o["lambda_b"],
        }
        if o["lambda_identity"] > 0:
            losses["idt_A"] = self.l1(self.G_A(real_b), real_b) * o["lambda_b"] * o["lambda_identity"]
            losses["idt_B"] = self.l1(self.G_B(real_a), real_a) * o["lambda_a"] * o["lambda_identity"]
        self.scaler.scale(sum(losses.values())).backward()
        self.scaler.step(self.opt_G)

        # discriminators, on generated images drawn from the history pools
        self.D_A.requires_grad_(True)
        self.D_B.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        losses["D_A"] = self.discriminator_loss(self.D_A, real_b, self.pool_B.query(fake_b))
        losses["D_B"] = self.discriminator_loss(self.D_B, real_a, self.pool_A.query(fake_a))
        self.scaler.scale(losses["D_A"] + losses["D_B"]).backward()
        self.scaler.step(self.opt_D)
        self.scaler.update()
        for s in self.schedulers:
            s.step()
        return {k: v.item() for k, v in losses.items()}

    def stateful(self) -> dict[str, Any]:
        return {"D_A": self.D_A, "D_B": self.D_B, "opt_G": self.opt_G, "opt_D": self.opt_D}

    def state_dict(self) -> dict[str, Any]:
        return {**save_training_state(self), "pool_A": list(self.pool_A.images),
                "pool_B": list(self.pool_B.images), "pool_rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(self, state)
        self.pool_A.images = [x.to(self.device) for x in state["pool_A"]]
        self.pool_B.images = [x.to(self.device) for x in state["pool_B"]]
        version, internal, gauss = state["pool_rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def _build_resnet(name: str = "resnet_9blocks", input_nc: int = 3, output_nc: int = 3, **kw) -> nn.Module:
    return build_generator(name, input_nc, output_nc, **kw)


@hookimpl
def register_architectures(register):
    register(CycleGAN())


@hookimpl
def register_generators(register):
    register(GeneratorFamily("resnet", _build_resnet, RESNETS,
                             "ResNet blocks between two down- and two upsamplings (CycleGAN ResnetGenerator)"))
