"""The factorizer interface: how a task's generator is built from the bank and stored.

A factorizer wraps the convolutions of a plain generator in place (the architecture's
forward stays exactly as written), says which tensors the task stores and which new
filters join the bank, and turns a trained task back into a dense generator.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .layers import join_free_filters, materialize_layers, split_free_filters
from .options import Option

CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


class Factorizer:
    name: str = ""
    description: str = ""
    options: tuple[Option, ...] = ()
    #: False for methods whose single shared model is retrained (fine-tuning): every
    #: task is then evaluated with the latest weights, and forgetting shows.
    keeps_old_tasks: bool = True
    #: Whether a later task starts from the latest task's generator under `--init auto`.
    warm_start: bool = True
    #: Whether `wrap` takes each layer's bank as a `pbgan_core.bank.LayerBank` (read only the rows
    #: it uses: `rows(index)`, or `all()`) instead of one tensor of every bank filter.
    reads_bank_rows: bool = False

    def wrap(self, generator: nn.Module, bank: dict[str, torch.Tensor], opts: Mapping[str, Any],
             initialize: bool = True) -> nn.Module:
        """Bind `generator` to this generator's bank prefix (layer path -> filters).

        An empty bank means the first task. `initialize=False` skips computing initial
        values that a following `load_state_dict` overwrites anyway.
        """
        raise NotImplementedError

    def split(self, generator: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(tensors the task file stores, new filters for the bank keyed by layer path)."""
        return dict(generator.state_dict()), {}

    def join(self, task: dict[str, torch.Tensor], new_filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of `split`: the full state dict of the wrapped generator."""
        return dict(task)

    def materialize(self, generator: nn.Module) -> nn.Module:
        """A plain dense generator computing the same function (in place)."""
        return generator

    def stored_parameters(self, generator: nn.Module) -> int:
        """Learned numbers this task adds to the model (frozen bank filters excluded)."""
        return sum(p.numel() for p in generator.parameters())


def iter_convs(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in root.named_modules():
        if isinstance(module, CONV_TYPES):
            yield name, module


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, new)


def replace_modules(root: nn.Module, select: Callable[[str, nn.Module], bool],
                    make: Callable[[str, nn.Module], nn.Module]) -> list[str]:
    """Swap every selected submodule on its parent; returns the replaced paths."""
    chosen = [(path, m) for path, m in root.named_modules() if path and select(path, m)]
    for path, module in chosen:
        replace_module(root, path, make(path, module))
    return [path for path, _ in chosen]


class FilterConvFactorizer(Factorizer):
    """A factorizer whose layers are `pbgan_core.layers.FilterConv`s: the `free` filters of its
    `bank_layer` layers join the bank, and materializing swaps every layer for a dense one."""

    bank_layer: type

    def split(self, generator: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return split_free_filters(generator, self.bank_layer)

    def join(self, task: dict[str, torch.Tensor], new_filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return join_free_filters(task, new_filters)

    def materialize(self, generator: nn.Module) -> nn.Module:
        return materialize_layers(generator)
