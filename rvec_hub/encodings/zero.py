"""`zero`: a tensor the donors hold bit-identical; it costs no payload."""

from __future__ import annotations

import torch

from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    if not entry.shape:
        return torch.zeros((), dtype=torch.float32)
    return torch.zeros((stop - start, *entry.shape[1:]), dtype=torch.float32)


def _encode(delta: torch.Tensor, **_: object) -> Encoded:
    return Encoded("zero", {}, stats={"rel_error": 0.0})


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    return expect_keys(entry, ())


CODEC = Codec("zero", _decode_rows, _encode, validate=_validate)
