"""safetensors bytes that depend only on their content.

safetensors keeps the metadata in a hash map, so its keys come out in a different order from
one call to the next; here they are sorted, so the same tensors and metadata always give the
same bytes (and two identical trainings the same sha256 in the manifest).
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import save as st_save


def save_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    data = st_save(tensors, metadata=metadata)
    if not metadata:
        return data
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])  # tensor entries keep their (deterministic) order
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def read_header(path) -> dict:
    """A safetensors file's header (tensor names, dtypes, shapes), reading nothing else."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= 100_000_000:
            raise ValueError(f"header length {n}")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])
    return header.get("__metadata__", {}) or {}
