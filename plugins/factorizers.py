"""Alternatives to piggyback behind the same Factorizer interface.

- standalone: every task stores a full generator of its own (the storage baseline).
- finetune: one generator retrained task after task; earlier tasks use the latest
  weights, so they are forgotten (the forgetting baseline).
- lowrank (lowrank.py) and mask (mask.py): task 1 trains plain filters that seed the
  bank; later tasks adapt those frozen filters with a rank-r update or a binary mask.

Lowrank and mask layers are `pbgan_core.layers.FilterConv`s, like piggyback's.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.factorizer import CONV_TYPES, Factorizer, FilterConvFactorizer, iter_convs, replace_modules
from pbgan_core.hookspecs import hookimpl
from pbgan_core.layers import FilterConv, FreeConv


class BankAdapterFactorizer(FilterConvFactorizer):
    """Task 1 trains FreeConv layers that seed the bank; later tasks wrap each conv with
    `adapter(conv, frozen task-1 filters, settings, initialize)` and add nothing to the bank."""

    bank_layer = FreeConv

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


class StandaloneFactorizer(Factorizer):
    """Nothing shared: the plain generator is trained and stored whole. Each task starts from
    fresh weights, a truly independent model (`--init warm` starts it from the latest task)."""

    name = "standalone"
    description = "a full generator per task, no bank (storage baseline; no forgetting)"
    warm_start = False

    def wrap(self, generator, bank, opts, initialize=True):
        return generator


class FinetuneFactorizer(StandaloneFactorizer):
    name = "finetune"
    warm_start = True
    description = "one generator retrained task after task; earlier tasks use the latest weights (forgets)"
    keeps_old_tasks = False


@hookimpl
def register_factorizers(register):
    from .lowrank import LowRankFactorizer
    from .mask import MaskFactorizer

    for factorizer in (StandaloneFactorizer(), FinetuneFactorizer(), LowRankFactorizer(), MaskFactorizer()):
        register(factorizer)
