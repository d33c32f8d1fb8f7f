"""The filter bank: per factorized layer, an append-only stack of frozen filters.

Each task appends one segment (its new free filters). Task t trained against the
first t-1 segments; a fingerprint of that prefix travels in its task file, so a task
can never be loaded against filters it did not see. A segment read from a model
directory is read (and its hash checked) only when a filter of it is used: a task that
combines a bounded set of bank rows costs the same to load at task 100 as at task 2.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Segment:
    """One task's filters: held, or read by `read()` on first use (`shapes` known before)."""

    def __init__(self, task: str, digest: str, tensors: dict[str, torch.Tensor] | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None,
                 read: Callable[[], dict[str, torch.Tensor]] | None = None):
        if tensors is None and (shapes is None or read is None):
            raise ValueError("a segment needs its tensors, or their shapes and a way to read them")
        self.task, self.digest, self._tensors, self._read = task, digest, tensors, read
        self.shapes = shapes if shapes is not None else {k: tuple(v.shape) for k, v in tensors.items()}

    @property
    def tensors(self) -> dict[str, torch.Tensor]:  # "generator/layer.path" -> (u, c_in, k, k)
        if self._tensors is None:
            self._tensors = self._read()
        return self._tensors


class LayerBank:
    """One layer's bank filters: the segments' filters in order, as one (n, c_in, k, k) stack that
    is never built unless `all()` asks for it; `rows()` reads only the segments holding the rows."""

    def __init__(self, parts: list[tuple[int, Callable[[], torch.Tensor]]], filter_shape: tuple[int, ...],
                 is_meta: bool = False):
        self._parts = parts
        self._starts = [0]
        for count, _ in parts:
            self._starts.append(self._starts[-1] + count)
        self.shape = torch.Size((self._starts[-1], *filter_shape))
        self.is_meta = is_meta

    @classmethod
    def of(cls, filters: "torch.Tensor | LayerBank") -> "LayerBank":
        if isinstance(filters, LayerBank):
            return filters
        filters = filters.detach()
        return cls([(filters.shape[0], lambda: filters)], tuple(filters.shape[1:]), filters.is_meta)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def parts(self) -> int:
        return len(self._parts)

    def part_of(self, index: torch.Tensor) -> torch.Tensor:
        """Which part (segment) holds each row in `index`."""
        return torch.bucketize(index.to(torch.long).cpu(), torch.tensor(self._starts[1:-1]), right=True)

    def part_rows(self, part: int) -> torch.Tensor:
        """The positions of a part's rows in the whole stack."""
        return torch.arange(self._starts[part], self._starts[part + 1])

    def all(self) -> torch.Tensor:
        chunks = [read() for _, read in self._parts]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The filters at `index` (positions in the whole stack), in that order."""
        index = index.to(torch.long).cpu()
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"bank rows up to {int(index.max())} asked of a bank of {len(self)}")
        if len(self._parts) == 1:
            return self._parts[0][1]().index_select(0, index)
        part = self.part_of(index)
        places, chunks = [], []
        for p in part.unique().tolist():
            where = (part == p).nonzero().flatten()
            chunks.append(self._parts[p][1]().index_select(0, index[where] - self._starts[p]))
            places.append(where)
        if not chunks:  # no rows asked for: the right shape and dtype, from one part
            return self._parts[0][1]()[:0]
        gathered = torch.cat(chunks)
        out = torch.empty_like(gathered)
        out[torch.cat(places)] = gathered
        return out


class FilterBank:
    EMPTY = hashlib.sha256(b"pbgan-bank").hexdigest()

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def append(self, task: str, tensors: dict[str, torch.Tensor], digest: str | None = None) -> Segment:
        """Add a task's filters. `digest` may name the verified hash of the file they came from."""
        return self.add(Segment(task, digest or tensors_digest(tensors), tensors))

    def add(self, segment: Segment) -> Segment:
        self.segments.append(segment)
        return segment

    def fingerprint(self, length: int | None = None) -> str:
        """Hash chain over the first `length` segments (all by default)."""
        digest = self.EMPTY
        for segment in self.segments[: len(self.segments) if length is None else length]:
            digest = hashlib.sha256(f"{digest}:{segment.digest}".encode()).hexdigest()
        return digest

    def prefix(self, length: int, generator: str, lazy: bool = False) -> dict[str, torch.Tensor | LayerBank]:
        """Layer path -> filters of the first `length` segments, for one generator: one tensor per
        layer, or with `lazy` a `LayerBank` that reads segments only for the rows used."""
        parts: dict[str, list[tuple[int, Callable[[], torch.Tensor]]]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        lead = f"{generator}/"
        for segment in self.segments[:length]:
            for key, shape in segment.shapes.items():
                if key.startswith(lead):
                    parts.setdefault(key[len(lead):], []).append(
                        (shape[0], lambda segment=segment, key=key: segment.tensors[key]))
                    shapes[key[len(lead):]] = tuple(shape[1:])
        banks = {layer: LayerBank(chunks, shapes[layer]) for layer, chunks in parts.items()}
        return banks if lazy else {layer: bank.all() for layer, bank in banks.items()}

    def size(self, length: int | None = None) -> int:
        """Number of stored filter parameters in the first `length` segments."""
        return sum(torch.Size(shape).numel() for s in self.segments[:length] for shape in s.shapes.values())

    def __len__(self) -> int:
        return len(self.segments)
