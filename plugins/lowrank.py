"""Low-rank adapters (LoRA-style) over the first task's frozen filters.

For a layer with C filters of fan-in f = c_in*k*k, a later task learns
    filters = W1 + reshape(B @ A),   B: (C, r), A: (r, f)
with W1 the task-1 filters from the bank, plus its own biases and norms. Merged into
one dense weight when materialized, so inference costs what a plain generator costs.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_core.layers import FilterConv
from pbgan_core.options import Option

from .factorizers import BankAdapterFactorizer


class LowRankConv(FilterConv):
    def __init__(self, base: nn.Module, frozen: torch.Tensor, rank: int, initialize: bool = True):
        super().__init__(base)
        self.register_buffer("bank", frozen, persistent=False)
        out, fan_in = frozen.shape[0], frozen[0].numel()
        self.rank = min(rank, out, fan_in)  # a larger rank adds numbers, not expressiveness
        self.B = nn.Parameter(torch.zeros(out, self.rank, dtype=frozen.dtype, device=frozen.device))
        self.A = nn.Parameter(torch.zeros(self.rank, fan_in, dtype=frozen.dtype, device=frozen.device))
        if initialize:
            self._fit(self.filters_of(base) - frozen)

    @torch.no_grad()
    def _fit(self, delta: torch.Tensor) -> None:
        """Start at the best rank-r fit of (starting filters - W1) by SVD.

        Warm-started from task 1, delta is zero: B = 0 and A orthonormal rows, the usual
        LoRA start (output unchanged, gradients reach B). Warm-started from a later
        low-rank task, its update is reproduced exactly.
        """
        u, s, vh = torch.linalg.svd(delta.flatten(1).double(), full_matrices=False)
        r = self.rank
        self.B.copy_((u[:, :r] * s[:r]).to(self.B.dtype))
        self.A.copy_(vh[:r].to(self.A.dtype))

    def filters(self) -> torch.Tensor:
        return self.bank + (self.B @ self.A).view_as(self.bank)

    def extra_repr(self) -> str:
        return f"filters={self.bank.shape[0]}, rank={self.rank}"


class LowRankFactorizer(BankAdapterFactorizer):
    name = "lowrank"
    description = "task 1 seeds the bank; later tasks add a rank-r update to its frozen filters (LoRA-style)"
    options = (Option("rank", 8, "rank of each later task's update per layer (lowrank factorizer)", min=1),)

    def settings(self, opts: Mapping[str, Any]) -> int:
        rank = int(opts.get("rank", 8))
        if rank < 1:
            raise PbganError(f"--rank must be at least 1, got {rank}")
        return rank

    def adapter(self, conv: nn.Module, frozen: torch.Tensor, rank: int, initialize: bool) -> FilterConv:
        return LowRankConv(conv, frozen, rank, initialize)
