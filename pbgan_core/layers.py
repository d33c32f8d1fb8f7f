"""Convolution wrappers whose filters are computed from parameters.

A `FilterConv` replaces an nn.Conv2d / nn.ConvTranspose2d in place (PEFT style): it keeps the
layer's geometry and bias, and subclasses say how `filters()` is computed. Filters are kept
filter-major, (C, c_in, k, k), for both kinds; a transposed conv stores its filters on dim 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PbganError


def filters_of(conv: nn.Module) -> torch.Tensor:
    """A conv's weight, filter-major."""
    w = conv.weight.detach()
    return w.transpose(0, 1) if isinstance(conv, nn.ConvTranspose2d) else w


class FilterConv(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        if base.groups != 1:
            raise PbganError(f"{type(self).__name__} supports groups=1 convolutions only, got groups={base.groups}; "
                             "use --factorizer standalone for this generator")
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        for attr in ("stride", "padding", "dilation", "padding_mode"):
            setattr(self, attr, getattr(base, attr))
        self.output_padding = getattr(base, "output_padding", 0)
        if self.padding_mode != "zeros":
            self._reversed_padding = base._reversed_padding_repeated_twice
        self.bias = base.bias

    filters_of = staticmethod(filters_of)

    def filters(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        w = self.filters()
        return w.transpose(0, 1) if self.transposed else w

    def conv(self, x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's convolution with the given filter-major filters."""
        if self.transposed:
            return F.conv_transpose2d(x, filters.transpose(0, 1), bias, self.stride, self.padding,
                                      self.output_padding, 1, self.dilation)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, filters, bias, self.stride, 0, self.dilation)
        return F.conv2d(x, filters, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.filters(), self.bias)

    def dense(self) -> nn.Module:
        """A plain nn.Conv2d / nn.ConvTranspose2d with the current weight and bias."""
        w = self.weight.detach().contiguous()
        in_ch, out_ch = (w.shape[0], w.shape[1]) if self.transposed else (w.shape[1], w.shape[0])
        kwargs: dict[str, Any] = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                                      bias=self.bias is not None, padding_mode=self.padding_mode, device="meta")
        if self.transposed:
            kwargs["output_padding"] = self.output_padding
        conv = (nn.ConvTranspose2d if self.transposed else nn.Conv2d)(in_ch, out_ch, w.shape[-2:], **kwargs)
        shares = any(w.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for p in self.parameters())
        conv.weight = nn.Parameter(w.clone() if shares else w)
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone())
        return conv


class FreeConv(FilterConv):
    """Plain trainable filters (a first task's layer), which then join the bank."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.free = nn.Parameter(filters_of(base).clone())

    def filters(self) -> torch.Tensor:
        return self.free


def split_free_filters(generator: nn.Module, kind: type) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state dict without the `free` filters of `kind` layers, those filters by layer path)."""
    state = dict(generator.state_dict())
    new_filters = {path: state.pop(f"{path}.free").detach().clone()
                   for path, module in generator.named_modules() if isinstance(module, kind)}
    return state, new_filters


def join_free_filters(task: dict[str, torch.Tensor], new_filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**task, **{f"{path}.free": filters for path, filters in new_filters.items()}}


def materialize_layers(generator: nn.Module) -> nn.Module:
    """Swap every FilterConv for the plain dense layer it computes (in place)."""
    from .factorizer import replace_modules

    with torch.no_grad():
        replace_modules(generator, lambda p, m: isinstance(m, FilterConv), lambda p, m: m.dense())
    return generator
