"""Alternatives to piggyback behind the same Factorizer interface.

- standalone: every task stores a full generator of its own (the storage baseline).
- finetune: one generator retrained task after task; earlier tasks use the latest
  weights, so they are forgotten (the forgetting baseline).
- lowrank (lowrank.py) and mask (mask.py): task 1 trains plain filters that seed the
  bank; later tasks adapt those frozen filters with a rank-r update or a binary mask.

FilterConv below is what lowrank and mask share: a convolution whose filters are
computed from parameters, kept filter-major (C, c_in, k, k) for both conv kinds.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.factorizer import CONV_TYPES, Factorizer, iter_convs, replace_modules
from pbgan_core.hookspecs import hookimpl


class FilterConv(nn.Module):
    """Copies a conv's geometry and bias; subclasses say how `filters()` is computed."""

    def __init__(self, base: nn.Module):
        super().__init__()
        if base.groups != 1:
            raise PbganError(f"{type(self).__name__} supports groups=1 convolutions only, got "
                             f"groups={base.groups}; use --factorizer standalone for this generator")
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        for attr in ("stride", "padding", "dilation", "padding_mode"):
            setattr(self, attr, getattr(base, attr))
        self.output_padding = getattr(base, "output_padding", 0)
        if self.padding_mode != "zeros":
            self._reversed_padding = base._reversed_padding_repeated_twice
        self.bias = base.bias

    @staticmethod
    def filters_of(base: nn.Module) -> torch.Tensor:
        """A conv's weight, filter-major: a transposed conv keeps its filters on dim 1."""
        w = base.weight.detach()
        return w.transpose(0, 1) if isinstance(base, nn.ConvTranspose2d) else w

    def filters(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        w = self.filters()
        return w.transpose(0, 1) if self.transposed else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.transposed:
            return F.conv_transpose2d(x, w, self.bias, self.stride, self.padding, self.output_padding, 1,
                                      self.dilation)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)

    def dense(self) -> nn.Module:
        """A plain nn.Conv2d / nn.ConvTranspose2d with the current weight and bias."""
        w = self.weight.detach()
        in_ch, out_ch = (w.shape[0], w.shape[1]) if self.transposed else (w.shape[1], w.shape[0])
        kwargs: dict[str, Any] = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                                      bias=self.bias is not None, padding_mode=self.padding_mode, device="meta")
        if self.transposed:
            kwargs["output_padding"] = self.output_padding
        conv = (nn.ConvTranspose2d if self.transposed else nn.Conv2d)(in_ch, out_ch, w.shape[-2:], **kwargs)
        conv.weight = nn.Parameter(w.clone())
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone())
        return conv


class FreeConv(FilterConv):
    """The first task's layer: plain trainable filters, which then become the bank."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.free = nn.Parameter(self.filters_of(base).clone())

    def filters(self) -> torch.Tensor:
        return self.free


class BankAdapterFactorizer(Factorizer):
    """Task 1 trains FreeConv layers that seed the bank; later tasks wrap each conv with
    `adapter(conv, frozen task-1 filters, settings, initialize)` and add nothing to the bank."""

    def settings(self, opts: Mapping[str, Any]) -> Any:
        """This factorizer's options, checked (on every task, so a bad value fails early)."""
        return None

    def adapter(self, conv: nn.Module, frozen: torch.Tensor, settings: Any, initialize: bool) -> FilterConv:
        raise NotImplementedError

    def wrap(self, generator: nn.Module, bank: dict[str, torch.Tensor], opts: Mapping[str, Any],
             initialize: bool = True) -> nn.Module:
        settings = self.settings(opts)
        convs = [path for path, _ in iter_convs(generator)]
        if not bank:
            replace_modules(generator, lambda p, m: isinstance(m, CONV_TYPES), lambda p, m: FreeConv(m))
            return generator
        if set(bank) != set(convs):
            raise PbganError(f"the generator's convolutions do not match the bank's layers: later {self.name} "
                             "tasks must use the same generator (architecture, --netG, --ngf, --norm) as the first")

        def make(path: str, conv: nn.Module) -> nn.Module:
            filters = self.filters_of_first_task(path, conv, bank[path])
            return self.adapter(conv, filters, settings, initialize)

        replace_modules(generator, lambda p, m: isinstance(m, CONV_TYPES), make)
        return generator

    @staticmethod
    def filters_of_first_task(path: str, conv: nn.Module, bank: torch.Tensor) -> torch.Tensor:
        """The first task's filters are the bank's first C rows (it committed all of them)."""
        shape = FilterConv.filters_of(conv).shape
        if bank.shape[0] < shape[0] or bank.shape[1:] != shape[1:]:
            raise PbganError(f"bank filters {tuple(bank.shape)} of layer {path} do not fit its filters "
                             f"{tuple(shape)}: the generator differs from the one this bank was built for")
        return bank[: shape[0]].detach()

    def split(self, generator: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        state = dict(generator.state_dict())
        new_filters = {}
        for path, module in generator.named_modules():
            if isinstance(module, FreeConv):
                new_filters[path] = state.pop(f"{path}.free").detach().clone()
        return state, new_filters

    def join(self, task: dict[str, torch.Tensor], new_filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**task, **{f"{path}.free": filters for path, filters in new_filters.items()}}

    def materialize(self, generator: nn.Module) -> nn.Module:
        with torch.no_grad():
            replace_modules(generator, lambda p, m: isinstance(m, FilterConv), lambda p, m: m.dense())
        return generator


class StandaloneFactorizer(Factorizer):
    """Nothing shared: the plain generator is trained and stored whole. Later tasks start
    from the latest task's weights unless --init scratch makes them fully independent."""

    name = "standalone"
    description = "a full generator per task, no bank (storage baseline; no forgetting)"

    def wrap(self, generator, bank, opts, initialize=True):
        return generator


class FinetuneFactorizer(StandaloneFactorizer):
    name = "finetune"
    description = "one generator retrained task after task; earlier tasks use the latest weights (forgets)"
    keeps_old_tasks = False


@hookimpl
def register_factorizers(register):
    from .lowrank import LowRankFactorizer
    from .mask import MaskFactorizer

    for factorizer in (StandaloneFactorizer(), FinetuneFactorizer(), LowRankFactorizer(), MaskFactorizer()):
        register(factorizer)
