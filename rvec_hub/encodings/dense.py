"""`dense`: the delta stored whole, in the vector's storage dtype."""

from __future__ import annotations

import torch

from .. import fused
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored, storage_dtype


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    key = entry.keys["delta"]
    if not entry.shape:
        return payload.read(key).float()
    return payload.read(key, start, stop).float()


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    key = entry.keys["delta"]
    return fused.add_dense(rows, payload.read(key) if not entry.shape else payload.read(key, start, stop), alpha, base)


def _reads(entry: TensorEntry, start: int, stop: int) -> list[tuple[str, int, int | None]]:
    return [(entry.keys["delta"], start, stop) if entry.shape else (entry.keys["delta"], 0, None)]


def _encode(delta: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16, **_: object) -> Encoded:
    stored = delta.to(dtype)
    err = torch.linalg.vector_norm(delta - stored.float()).item()
    norm = torch.linalg.vector_norm(delta).item()
    return Encoded("dense", {"delta": stored}, stats={"rel_error": err / norm if norm else 0.0})


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    # The stored tensor is the delta itself: the manifest's shape, in the manifest's dtype.
    return expect_keys(entry, ("delta",)) or expect_stored(entry, payload, "delta", tuple(entry.shape), [storage_dtype(entry)])


CODEC = Codec("dense", _decode_rows, _encode, validate=_validate, add_into=_add_into, reads=_reads, adds_from_base=True)
