"""Piggyback filters (Zhai et al., ECCV 2020): most filters of a new task are learned
linear combinations of frozen bank filters, a few are new free filters.

For a layer with C filters and a bank of n filters (rows of shape c_in x k x k):
    weight = concat(free (u filters), coef.T @ bank (C - u filters))
Task 1 has only free filters. After a task, its free filters join the bank.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.factorizer import FilterConvFactorizer, iter_convs, replace_modules
from pbgan_core.hookspecs import hookimpl
from pbgan_core.layers import FilterConv, filters_of
from pbgan_core.options import Option


# The bank path runs two convolutions, a 1x1 mix and a concatenation where the dense path runs
# one convolution: at equal multiply-adds it is slower (measured on CPU, benchmarks/piggyback_speed.py),
# so it is taken only when it saves a clear share of the work.
BANK_PATH_OVERHEAD = 1.5
# Default coefficient learning-rate multiplier (see PiggybackConv); measured best of 1, 10 and 30.
COEF_SCALE = 30.0


class PiggybackConv(FilterConv):
    """Free filters plus piggyback filters `coef.T @ bank`, filter-major: (C, c_in, k, k)."""

    def __init__(self, base: nn.Module, bank: torch.Tensor | None, lam: float, initialize: bool = True,
                 coef_scale: float = 1.0):
        super().__init__(base)
        filters = filters_of(base)
        # The parameter holds coefficients / coef_scale: Adam moves every parameter by about its
        # learning rate, so a larger scale makes coefficients (values near 1) adapt as fast, relative
        # to their size, as free filter weights (values near 0.02) do.
        self.coef_scale = coef_scale
        self.out_filters = filters.shape[0]
        self.free_count = self.out_filters if bank is None else min(self.out_filters, math.ceil(lam * self.out_filters))
        self.free = nn.Parameter(filters[: self.free_count].clone())
        piggy = self.out_filters - self.free_count
        if piggy and bank is not None:
            if bank.shape[1:] != filters.shape[1:]:
                raise PbganError(f"bank filters of shape {tuple(bank.shape[1:])} do not fit a layer with filters "
                                 f"{tuple(filters.shape[1:])}: the generator differs from the one this bank was built for")
            self.register_buffer("bank", bank.detach(), persistent=False)
            coef = torch.empty(bank.shape[0], piggy, dtype=filters.dtype, device=filters.device)
            if initialize:
                coef = self._fit_coefficients(bank, filters[self.free_count:]) / coef_scale
            self.coef = nn.Parameter(coef)
        else:
            self.bank = None
            self.coef = None

    @staticmethod
    def _fit_coefficients(bank: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Least squares: the piggyback filters start as close as the bank allows to `target`.

        With the default warm start, `target` holds the first task's filters, which the
        bank contains exactly, so the new task starts from a working generator instead of
        noise; with a cold start it is the fresh initialization projected onto the bank.
        """
        b = bank.flatten(1).T.double()  # (c_in*k*k, n)
        return torch.linalg.lstsq(b, target.flatten(1).T.double(), driver="gelsd").solution.to(bank.dtype)

    def coefficients(self) -> torch.Tensor:
        return self.coef * self.coef_scale if self.coef_scale != 1.0 else self.coef

    def filters(self) -> torch.Tensor:
        if self.coef is None:
            return self.free
        piggy = (self.coefficients().T @ self.bank.flatten(1)).view(-1, *self.bank.shape[1:])
        return torch.cat([self.free, piggy])

    def _bank_path_is_cheaper(self, x: torch.Tensor) -> bool:
        """Compare multiply-adds of the two exact ways to compute the piggyback filters.

        dense: build coef.T @ bank every step (and its gradient), then one conv;
        bank:  convolve with the frozen bank (no weight gradient), then mix channels 1x1.
        """
        n, piggy = self.coef.shape
        fan_in = self.bank[0].numel()
        spatial_in = x.shape[0] * x.shape[-2] * x.shape[-1]
        if self.transposed:
            per_filter = spatial_in * fan_in
            stride = self.stride[0] * self.stride[1]
            spatial_out = spatial_in * stride
        else:
            stride = self.stride[0] * self.stride[1]
            spatial_out = spatial_in // stride
            per_filter = spatial_out * fan_in
        grad = torch.is_grad_enabled() and self.coef.requires_grad
        conv_passes = 3 if grad else 1  # forward, input grad, weight grad
        dense = (2 if grad else 1) * n * piggy * fan_in + conv_passes * per_filter * self.out_filters
        bank = ((2 if grad else 1) * per_filter * n + conv_passes * per_filter * self.free_count
                + conv_passes * spatial_out * n * piggy)
        return BANK_PATH_OVERHEAD * bank < dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coef is not None and self._bank_path_is_cheaper(x):
            free = self.conv(x, self.free)
            basis = self.conv(x, self.bank)
            piggy = F.conv2d(basis, self.coefficients().T[:, :, None, None])
            y = torch.cat([free, piggy], dim=1)
        else:
            y = self.conv(x, self.filters())
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        n = 0 if self.coef is None else self.coef.shape[0]
        return f"filters={self.out_filters}, free={self.free_count}, bank={n}"


class PiggybackConv2d(PiggybackConv):
    """Wraps an nn.Conv2d."""


class PiggybackConvTranspose2d(PiggybackConv):
    """Wraps an nn.ConvTranspose2d (its filters live on dim 1 of the weight)."""


WRAPPERS = {nn.Conv2d: PiggybackConv2d, nn.ConvTranspose2d: PiggybackConvTranspose2d}


class PiggybackFactorizer(FilterConvFactorizer):
    name = "piggyback"
    bank_layer = PiggybackConv
    description = "Piggyback GAN: bank-filter combinations plus a few free filters per layer (zero forgetting)"
    options = (
        Option("lambda", 0.25, "share of each layer's filters that are new free filters in later tasks"),
        Option("free-last", False, "keep the generator's output layer fully free (its few filters save little)"),
        Option("coef-scale", COEF_SCALE, "learning-rate multiplier of the piggyback coefficients (a reparametrization)"),
    )

    def wrap(self, generator: nn.Module, bank: dict[str, torch.Tensor], opts: Mapping[str, Any],
             initialize: bool = True) -> nn.Module:
        lam = float(opts.get("lambda", 0.25))
        if not 0.0 < lam <= 1.0:
            raise PbganError(f"--lambda must be in (0, 1], got {lam}")
        convs = [path for path, _ in iter_convs(generator)]
        last = convs[-1] if convs else None
        free_last = bool(opts.get("free_last", False))
        coef_scale = float(opts.get("coef_scale", COEF_SCALE))
        if coef_scale <= 0:
            raise PbganError(f"--coef-scale must be positive, got {coef_scale}")
        if bank and set(bank) != set(convs):
            raise PbganError("the generator's convolutions do not match the bank's layers: later tasks must "
                             "use the same generator (architecture, --netG, --ngf, --norm) as the first task")

        def make(path: str, conv: nn.Module) -> nn.Module:
            layer_bank = bank.get(path)
            if path == last and free_last:
                layer_bank = None
            return WRAPPERS[type(conv)](conv, layer_bank, lam if layer_bank is not None else 1.0, initialize,
                                        coef_scale)

        replace_modules(generator, lambda p, m: type(m) in WRAPPERS, make)
        return generator


@hookimpl
def register_factorizers(register):
    register(PiggybackFactorizer())
