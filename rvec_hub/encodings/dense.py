"""`dense`: the delta stored whole, in the vector's storage dtype."""

from __future__ import annotations

import torch

from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    key = entry.keys["delta"]
    if not entry.shape:
        return payload.read(key).float()
    return payload.read(key, start, stop).float()


def _encode(delta: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16, **_: object) -> Encoded:
    stored = delta.to(dtype)
    err = torch.linalg.vector_norm(delta - stored.float()).item()
    norm = torch.linalg.vector_norm(delta).item()
    return Encoded("dense", {"delta": stored}, stats={"rel_error": err / norm if norm else 0.0})


CODEC = Codec("dense", _decode_rows, _encode)
