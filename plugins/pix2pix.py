"""pix2pix (Isola et al. 2017): U-Net generator, PatchGAN discriminator, GAN + L1 loss."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Architecture, GeneratorFamily, Trainer
from pbgan_core.options import Option
from pbgan_core.plugins import get_plugins

from .losses import gradient_penalty
from .networks import (UPSAMPLING, build_discriminator, build_generator, check_discriminator_size, init_weights,
                       unet_depth)


def reference_lr_rule(opts: Mapping[str, Any]):
    """Learning-rate factor of the step after `step` optimizer steps: the reference's linear policy,
    1 - max(0, e + 1 - epochs) / (epochs_decay + 1) with e the epochs completed before it, so the rate
    stays constant for `epochs` epochs and changes once per epoch. Without a schedule in `opts`
    (a trainer built outside the engine) the rate is constant."""
    if "steps_per_epoch" not in opts:
        return lambda step: 1.0
    per_epoch, epochs, decay = opts["steps_per_epoch"], opts["epochs"], opts["epochs_decay"]
    return lambda step: max(0.0, 1.0 - max(0, step // per_epoch + 1 - epochs) / (decay + 1))


def make_optimizer(params, opts: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=opts["lr"], betas=(opts["beta1"], 0.999))


def make_discriminator(opts: Mapping[str, Any], input_nc: int, device: torch.device) -> nn.Module:
    """The options' discriminator, initialized, after checking it fits the image size."""
    args = (opts["netD"], input_nc, opts["ndf"], opts["n_layers_d"], opts["norm"])
    try:
        check_discriminator_size(*args, opts["size"])
    except ValueError as exc:
        raise PbganError(str(exc)) from None
    return init_weights(build_discriminator(*args), opts["init_type"]).to(device)


def save_training_state(trainer) -> dict[str, Any]:
    """State of `trainer.stateful()` (modules, optimizers), its schedulers and grad scaler."""
    state = {name: obj.state_dict() for name, obj in trainer.stateful().items()}
    return {**state, "sched": [s.state_dict() for s in trainer.schedulers], "scaler": trainer.scaler.state_dict()}


def load_training_state(trainer, state: dict[str, Any]) -> None:
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    for name, obj in trainer.stateful().items():
        obj.load_state_dict(state[name])
    for s, st in zip(trainer.schedulers, state["sched"]):
        s.load_state_dict(st)


def build_gan_loss(mode: str) -> nn.Module:
    return get_plugins().losses.get(mode).build()


GENERATOR_OPTIONS = (
    Option("ngf", 64, "generator filters in the first layer (later layers have multiples of it)", min=1),
    Option("norm", "batch", "normalization layer of the generator and discriminators",
           choices=("batch", "instance", "none")),
    Option("no-dropout", False, "disable dropout in the generator"),
    Option("init-type", "normal", "initial weights: normal (std 0.02, the reference's), xavier, kaiming or "
           "orthogonal", choices=("normal", "xavier", "kaiming", "orthogonal")),
)
DISCRIMINATOR_OPTIONS = (
    Option("netD", "basic", "discriminator: basic (the 70x70 PatchGAN), n_layers (--n-layers-d layers) "
           "or pixel (1x1 PatchGAN)", choices=("basic", "n_layers", "pixel")),
    Option("ndf", 64, "discriminator filters in the first layer", min=1),
    Option("n-layers-d", 3, "convolution layers of the discriminator with --netD n_layers", min=0),
    Option("lr", 2e-4, "Adam learning rate (0: the weights stay as they are)", min=0),
    Option("beta1", 0.5, "Adam beta1 (momentum of the first moment)", min=0, below=1),
    Option("gp-lambda", 0.0, "weight of the WGAN-GP gradient penalty on the discriminator (0: none, as in the "
           "reference, whose pix2pix and CycleGAN never apply it, --gan-mode wgangp included; the WGAN-GP paper "
           "uses 10)", min=0),
)


class Pix2Pix(Architecture):
    name = "pix2pix"
    description = "U-Net generator + PatchGAN, GAN + L1 loss (Isola et al. 2017)"
    paired = True
    default_dataset = "aligned"
    options = (
        Option("netG", "auto", "generator: unet_N (N a power of two) or auto (follows --size)"),
        *GENERATOR_OPTIONS,
        Option("upsample", "transpose", "U-Net upsampling: transpose (the reference's transposed convs) or resize "
               "(nearest 2x + 3x3 conv: no checkerboard artifacts)", choices=UPSAMPLING),
        *DISCRIMINATOR_OPTIONS,
        Option("gan-mode", "vanilla", "adversarial loss: vanilla (cross-entropy, pix2pix's), lsgan (least squares, "
               "CycleGAN's), hinge or wgangp (Wasserstein; as in the reference, no gradient penalty unless "
               "--gp-lambda)", choices=("vanilla", "lsgan", "hinge", "wgangp")),
        Option("lambda-l1", 100.0, "weight of the L1 loss", min=0),
    )

    def build_generators(self, opts: Mapping[str, Any]) -> dict[str, nn.Module]:
        netG = opts["netG"]
        if not netG.startswith("unet_") and netG != "auto":
            raise PbganError(f"pix2pix needs a U-Net generator (unet_N or auto), got --netG {netG}")
        try:
            unet_depth(netG, opts["size"])
            net = build_generator(netG, 3, 3, opts["ngf"], opts["norm"], not opts["no_dropout"], opts["size"],
                                  opts.get("upsample", "transpose"))
        except ValueError as exc:
            raise PbganError(f"--netG {netG} at --size {opts['size']}: {exc}") from None
        return {"G": init_weights(net, opts["init_type"])}

    def generator_options(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        try:
            depth = unet_depth(opts["netG"], opts["size"])
        except ValueError:
            depth = opts["netG"]  # build_generators reports the bad name
        return {"netG": f"unet_{2 ** depth}" if isinstance(depth, int) else depth, "ngf": opts["ngf"],
                "norm": opts["norm"], "no_dropout": opts["no_dropout"],
                "upsample": opts.get("upsample", "transpose")}  # tasks stored before --upsample transposed

    def build_trainer(self, generators, opts, device, total_steps):
        return Pix2PixTrainer(generators["G"], opts, device, total_steps)


class Pix2PixTrainer(Trainer):
    def __init__(self, G: nn.Module, opts: Mapping[str, Any], device: torch.device, total_steps: int):
        self.G, self.opts = G, opts
        self.D = make_discriminator(opts, 6, device)
        self.gan = build_gan_loss(opts["gan_mode"]).to(device)
        self.l1 = nn.L1Loss()
        self.opt_G = make_optimizer(G.parameters(), opts)
        self.opt_D = make_optimizer(self.D.parameters(), opts)
        schedule = reference_lr_rule(opts)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (self.opt_G, self.opt_D)]
        self.source, self.target = ("A", "B") if opts["direction"] == "AtoB" else ("B", "A")
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # the engine enables it for fp16

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a, real_b = batch[self.source], batch[self.target]
        fake_b = self.G(real_a)

        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        fake_ab = torch.cat([real_a, fake_b.detach()], 1)
        real_ab = torch.cat([real_a, real_b], 1)
        loss_d = 0.5 * (self.gan(self.D(fake_ab), False) + self.gan(self.D(real_ab), True))
        loss_d = loss_d + gradient_penalty(self.D, real_ab, fake_ab, lambda_gp=self.opts.get("gp_lambda", 0.0))
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_D)

        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        loss_gan = self.gan(self.D(torch.cat([real_a, fake_b], 1)), True, for_discriminator=False)
        loss_l1 = self.l1(fake_b, real_b)
        self.scaler.scale(loss_gan + self.opts["lambda_l1"] * loss_l1).backward()
        self.scaler.step(self.opt_G)
        self.scaler.update()
        for s in self.schedulers:
            s.step()
        return {"G_GAN": loss_gan.item(), "G_L1": loss_l1.item(), "D": loss_d.item()}

    def stateful(self) -> dict[str, Any]:
        return {"D": self.D, "opt_G": self.opt_G, "opt_D": self.opt_D}

    def state_dict(self) -> dict[str, Any]:
        return save_training_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(self, state)


def _build_unet(name: str = "auto", input_nc: int = 3, output_nc: int = 3, size: int | None = None, **kw) -> nn.Module:
    return build_generator(name, input_nc, output_nc, size=size, **kw)


@hookimpl
def register_architectures(register):
    register(Pix2Pix())


@hookimpl
def register_generators(register):
    register(GeneratorFamily("unet", _build_unet, ("unet_128", "unet_256", "unet_N", "auto"),
                             "U-Net with skip connections (pix2pix UnetGenerator)"))
