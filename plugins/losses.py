"""Adversarial losses, the WGAN-GP gradient penalty and the CycleGAN image pool.

Registered losses (``register_losses``):

========  ====================================================================
vanilla   ``GANLoss('vanilla')``: binary cross-entropy on logits (pix2pix)
lsgan     ``GANLoss('lsgan')``: least squares, MSE against 1/0 (CycleGAN)
hinge     ``GANLoss('hinge')``: D ``relu(1 - x)`` / ``relu(1 + x)``, G ``-x``
wgangp    ``GANLoss('wgangp')``: D ``-x`` / ``x``, G ``-x``, as the reference; the
          trainers add :func:`gradient_penalty` only with ``--gp-lambda`` > 0
l1        ``nn.L1Loss()``: the pix2pix reconstruction term
========  ====================================================================
"""
from __future__ import annotations

import functools
import random

import torch
from torch import nn
from torch.nn import functional as F

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Loss

GAN_MODES = ("vanilla", "lsgan", "hinge", "wgangp")


class GANLoss(nn.Module):
    """The adversarial objective, one module for every GAN flavour.

    ``forward(prediction, target_is_real, for_discriminator=True)`` returns a scalar.

    * ``vanilla`` and ``lsgan`` compare the prediction with a label tensor of the
      prediction's shape (the registered ``real_label``/``fake_label`` buffers expanded);
      the generator's loss is simply the real-target loss, so ``for_discriminator``
      does not change anything for them.
    * ``hinge``: discriminator ``relu(1 - x).mean()`` for real, ``relu(1 + x).mean()``
      for fake; generator ``-x.mean()``.
    * ``wgangp``: discriminator ``-x.mean()`` for real, ``x.mean()`` for fake;
      generator ``-x.mean()``.

    For hinge and wgangp the generator asks for ``target_is_real=True``; asking for
    ``False`` with ``for_discriminator=False`` gives ``x.mean()`` (the sign flipped).

    ``prediction`` may also be a list/tuple of predictions (multi-scale discriminators);
    the loss is then the mean of the per-prediction losses.
    """

    def __init__(self, gan_mode: str = "vanilla", target_real_label: float = 1.0,
                 target_fake_label: float = 0.0):
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise PbganError(f"unknown GAN loss mode {gan_mode!r}; choose one of {', '.join(GAN_MODES)}")
        self.gan_mode = gan_mode
        self.register_buffer("real_label", torch.tensor(float(target_real_label)))
        self.register_buffer("fake_label", torch.tensor(float(target_fake_label)))
        if gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        elif gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        else:
            self.loss = None

    def extra_repr(self) -> str:
        return f"gan_mode={self.gan_mode!r}"

    def get_target_tensor(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """The label buffer expanded to the prediction's shape (and dtype)."""
        label = self.real_label if target_is_real else self.fake_label
        return label.to(dtype=prediction.dtype).expand_as(prediction)

    def _single(self, prediction: torch.Tensor, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        if self.gan_mode in ("vanilla", "lsgan"):
            return self.loss(prediction, self.get_target_tensor(prediction, target_is_real))
        if not for_discriminator:
            return -prediction.mean() if target_is_real else prediction.mean()
        if self.gan_mode == "hinge":
            if target_is_real:
                return F.relu(1.0 - prediction).mean()
            return F.relu(1.0 + prediction).mean()
        # wgangp
        return -prediction.mean() if target_is_real else prediction.mean()

    def forward(self, prediction, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        if isinstance(prediction, (list, tuple)):
            if not prediction:
                raise PbganError("GANLoss got an empty list of discriminator predictions")
            losses = [self._single(p, target_is_real, for_discriminator) for p in prediction]
            return torch.stack(losses).mean()
        return self._single(prediction, target_is_real, for_discriminator)


def gradient_penalty(netD: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     constant: float = 1.0, lambda_gp: float = 10.0) -> torch.Tensor:
    """WGAN-GP penalty ``lambda_gp * mean((||grad_x D(x)||_2 - constant)^2)``.

    ``x`` are per-sample random interpolates between ``real`` and ``fake`` (both
    detached); the gradient is taken with ``create_graph=True`` so the penalty
    back-propagates into ``netD``'s parameters. Returns a scalar tensor (a zero
    tensor when ``lambda_gp`` is 0).
    """
    if lambda_gp == 0:
        return real.new_zeros(())
    if real.shape != fake.shape:
        raise PbganError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    real = real.detach()
    fake = fake.detach()
    n = real.shape[0]
    alpha = torch.rand(n, *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    interpolates = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    out = netD(interpolates)
    if isinstance(out, (list, tuple)):
        out = sum(o.sum() for o in out)
    grads = torch.autograd.grad(outputs=out, inputs=interpolates, grad_outputs=torch.ones_like(out),
                                create_graph=True, retain_graph=True, only_inputs=True)[0]
    grads = grads.reshape(n, -1)
    norms = (grads + 1e-16).norm(2, dim=1)
    return ((norms - constant) ** 2).mean() * lambda_gp


class ImagePool:
    """History of generated images (Shrivastava et al.; used by CycleGAN).

    ``query(images)`` stores images until ``pool_size`` are held, returning them
    unchanged; once full, each incoming image is, with probability 0.5, swapped with a
    randomly chosen stored one (the stored one is returned, the new one kept), and
    otherwise returned as is. Returned images are detached. ``pool_size=0`` returns the
    input untouched. ``rng`` (a ``random.Random``) makes the choices reproducible.
    """

    def __init__(self, pool_size: int = 50, rng: random.Random | None = None):
        if pool_size < 0:
            raise PbganError(f"image pool size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []
        self.rng = rng if rng is not None else random.Random()

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                idx = self.rng.randrange(self.pool_size)
                out.append(self.images[idx])
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


_DESCRIPTIONS = {
    "vanilla": "GAN loss: binary cross-entropy on discriminator logits (pix2pix default)",
    "lsgan": "GAN loss: least squares against 1/0 targets (CycleGAN default)",
    "hinge": "GAN loss: hinge; D relu(1-x)/relu(1+x), G -x",
    "wgangp": "GAN loss: Wasserstein critic (D -x/x, G -x); no gradient penalty unless --gp-lambda",
}


@hookimpl
def register_losses(register):
    for mode in GAN_MODES:
        register(Loss(name=mode, build=functools.partial(GANLoss, mode), description=_DESCRIPTIONS[mode]))
    register(Loss(name="l1", build=nn.L1Loss, description="mean absolute error (pix2pix reconstruction term)"))


__all__ = ["GANLoss", "GAN_MODES", "gradient_penalty", "ImagePool", "register_losses"]
