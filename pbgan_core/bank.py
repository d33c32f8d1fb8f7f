"""The filter bank: per factorized layer, an append-only stack of frozen filters.

Each task appends one segment (its new free filters). Task t trained against the
first t-1 segments; a fingerprint of that prefix travels in its task file, so a task
can never be loaded against filters it did not see.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of named tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Segment:
    task: str
    tensors: dict[str, torch.Tensor]  # "generator/layer.path" -> (u, c_in, k, k)
    digest: str


class FilterBank:
    EMPTY = hashlib.sha256(b"pbgan-bank").hexdigest()

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def append(self, task: str, tensors: dict[str, torch.Tensor], digest: str | None = None) -> Segment:
        """Add a task's filters. `digest` may name the verified hash of the file they came from."""
        segment = Segment(task, tensors, digest or tensors_digest(tensors))
        self.segments.append(segment)
        return segment

    def fingerprint(self, length: int | None = None) -> str:
        """Hash chain over the first `length` segments (all by default)."""
        digest = self.EMPTY
        for segment in self.segments[: len(self.segments) if length is None else length]:
            digest = hashlib.sha256(f"{digest}:{segment.digest}".encode()).hexdigest()
        return digest

    def prefix(self, length: int, generator: str) -> dict[str, torch.Tensor]:
        """Layer path -> filters of the first `length` segments, for one generator."""
        parts: dict[str, list[torch.Tensor]] = {}
        lead = f"{generator}/"
        for segment in self.segments[:length]:
            for key, filters in segment.tensors.items():
                if key.startswith(lead):
                    parts.setdefault(key[len(lead):], []).append(filters)
        return {layer: torch.cat(chunks) if len(chunks) > 1 else chunks[0] for layer, chunks in parts.items()}

    def size(self, length: int | None = None) -> int:
        """Number of stored filter parameters in the first `length` segments."""
        return sum(t.numel() for s in self.segments[:length] for t in s.tensors.values())

    def __len__(self) -> int:
        return len(self.segments)
