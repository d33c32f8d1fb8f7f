"""Binary masks over the first task's frozen filters (Mallya et al., ECCV 2018, "Piggyback").

A later task learns real-valued scores, one per weight of W1 (the task-1 filters):
    filters = W1 * (scores > threshold)
trained with the straight-through estimator (the gradient passes the threshold as if
it were the identity), plus the task's own biases and norms.

The task file stores the mask, not the scores: packed 8 bits per byte (uint8) under
`<layer>.mask_bits`, with the filter shape under `<layer>.mask_shape`. Stored-parameter
counts give a mask as float32 equivalents: ceil(bits / 32) per layer.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.layers import FilterConv
from pbgan_core.options import Option

from .factorizers import BankAdapterFactorizer

SCORE_INIT = 1e-2


class MaskConv(FilterConv):
    def __init__(self, base: nn.Module, frozen: torch.Tensor, threshold: float, initialize: bool = True):
        super().__init__(base)
        self.threshold = threshold
        self.register_buffer("bank", frozen, persistent=False)
        self.scores = nn.Parameter(torch.full_like(frozen, SCORE_INIT if initialize else 0.0))

    def mask(self) -> torch.Tensor:
        return (self.scores > self.threshold).to(self.scores.dtype)

    def filters(self) -> torch.Tensor:
        hard = self.mask()
        straight_through = hard + self.scores - self.scores.detach()
        return self.bank * straight_through

    def extra_repr(self) -> str:
        return f"filters={self.bank.shape[0]}, threshold={self.threshold}"


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().numpy().astype(bool)))


def unpack_mask(bits: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    size = tuple(int(s) for s in shape)
    count = math.prod(size)
    if bits.dtype != torch.uint8 or bits.numel() != math.ceil(count / 8):
        raise PbganError(f"a stored mask of shape {size} has {bits.numel()} bytes of {bits.dtype}, expected "
                         f"{math.ceil(count / 8)} of uint8: the task file is damaged")
    flat = np.unpackbits(bits.numpy(), count=count)
    return torch.from_numpy(flat.astype(np.float32)).view(size)


class MaskFactorizer(BankAdapterFactorizer):
    name = "mask"
    description = "task 1 seeds the bank; later tasks learn a binary mask over its frozen filters (Mallya 2018)"
    options = (Option("mask-threshold", 5e-3, "scores above this keep a weight (mask factorizer; scores start "
                                              f"at {SCORE_INIT})", min=0, below=1),)

    def settings(self, opts: Mapping[str, Any]) -> float:
        threshold = float(opts.get("mask_threshold", 5e-3))
        if not 0.0 <= threshold < 1.0:  # join() loads a kept weight as score 1.0, a dropped one as 0.0
            raise PbganError(f"--mask-threshold must be in [0, 1), got {threshold}")
        return threshold

    def adapter(self, conv: nn.Module, frozen: torch.Tensor, threshold: float, initialize: bool) -> FilterConv:
        return MaskConv(conv, frozen, threshold, initialize)

    def split(self, generator: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        state, new_filters = super().split(generator)
        for path, module in generator.named_modules():
            if isinstance(module, MaskConv):
                del state[f"{path}.scores"]
                state[f"{path}.mask_bits"] = pack_mask(module.mask())
                state[f"{path}.mask_shape"] = torch.tensor(module.scores.shape, dtype=torch.int64)
        return state, new_filters

    def join(self, task: dict[str, torch.Tensor], new_filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = super().join(task, new_filters)
        for key in [k for k in state if k.endswith(".mask_bits")]:
            layer = key[: -len(".mask_bits")]
            shape = state.pop(f"{layer}.mask_shape", None)
            if shape is None:
                raise PbganError(f"the task file has {key} but no {layer}.mask_shape: it is damaged")
            state[f"{layer}.scores"] = unpack_mask(state.pop(key), shape)
        return state

    def stored_parameters(self, generator: nn.Module) -> int:
        """Biases, norms and first-task filters count one each; a mask counts bits / 32."""
        total = 0
        for module in generator.modules():
            for name, p in module.named_parameters(recurse=False):
                total += math.ceil(p.numel() / 32) if isinstance(module, MaskConv) and name == "scores" else p.numel()
        return total
