"""Recently used task generators kept in memory, least recently used dropped first, under a
byte budget: switching back to a task then costs a dictionary look-up."""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from torch import nn

DEFAULT_BUDGET = 1 << 30  # 1 GiB: about ten materialized unet_256 generators


def module_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a module holds (parameters and buffers), each storage counted once."""
    seen: dict[int, int] = {}
    for t in (*module.parameters(), *module.buffers()):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class TaskCache:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET):
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[Hashable, tuple[nn.Module, int]] = OrderedDict()

    def get(self, key: Hashable) -> nn.Module | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, module: nn.Module) -> nn.Module:
        """Keep `module` (re-measured if the key is there already), dropping the least recently
        used others while the total is over budget; the newest is always kept."""
        self._items[key] = (module, module_bytes(module))
        self._items.move_to_end(key)
        while self.total_bytes > self.budget_bytes and len(self._items) > 1:
            self._items.popitem(last=False)
        return module

    def clear(self) -> None:
        self._items.clear()

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list[Hashable]:
        """Oldest first."""
        return list(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
