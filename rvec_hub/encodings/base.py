"""What every encoding provides: decode rows of a delta, and (for compressors) encode one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..manifest import TensorEntry


class Payload(Protocol):
    """Stored tensors of a vector, read by key (rows along the first dimension)."""

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor: ...

    def shape(self, key: str) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Encoded:
    """One tensor after encoding: what to store (by role), and what to record in the manifest."""

    encoding: str
    stored: dict[str, torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Payload bytes this tensor costs."""
        return sum(t.numel() * t.element_size() for t in self.stored.values())


@dataclass(frozen=True)
class Codec:
    """An encoding as the registry names it.

    Attributes:
        name: the name written into manifests.
        decode_rows: rows `[start, stop)` of the delta in float32.
        encode: builds the stored form of a float32 delta, or None for read-only encodings.
    """

    name: str
    decode_rows: Callable[[TensorEntry, Payload, int, int], torch.Tensor]
    encode: Callable[..., Encoded] | None = None
