"""The encodings a vector's tensors may use, by the name written into manifests."""

from __future__ import annotations

from . import dense, lowrank, packed, quantized, sparse, zero
from .base import Codec, Encoded, Payload

ENCODINGS: dict[str, Codec] = {codec.name: codec for codec in [zero.CODEC, dense.CODEC, sparse.CODEC, packed.CODEC, lowrank.CODEC, quantized.CODEC]}

__all__ = ["ENCODINGS", "Codec", "Encoded", "Payload"]
