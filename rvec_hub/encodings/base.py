"""What every encoding provides: decode rows of a delta, check a stored payload, and (for compressors) encode one."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..manifest import TensorEntry

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Payload(Protocol):
    """Stored tensors of a vector, read by key (rows along the first dimension)."""

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> torch.dtype: ...


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
        decode_rows: rows `[start, stop)` of the delta in float32. It raises FormatError for stored values
            that break the encoding (an index out of range or out of order, counts that disagree), checked
            on the rows it decodes, so streaming passes validate values without a pass of their own.
        encode: builds the stored form of a float32 delta, or None for read-only encodings.
        validate: every way the stored payload of one tensor breaks the encoding's invariants (keys,
            stored shapes and dtypes against the manifest entry and each other), one string each, from
            the payload header alone: it reads no values and runs on every open. Required, so an encoding
            cannot be registered without it.
        add_into: optional; adds α·(rows `[start, stop)` of the delta) to bf16 rows in place, with
            `rvec_hub.fused`'s kernels, and returns (status, rounding error², ‖α·Δ‖²). Status 0 is
            success, `fused.BAD_VALUE` a sum that is not finite (the rows are then garbage). It raises
            FormatError as `decode_rows` does. Without it, callers decode and add in float32.
        reads: optional; the stored rows (key, start, stop) that `decode_rows` and `add_into` read for
            rows `[start, stop)`, so a reader thread can fetch them ahead (`Vector.staged`).
        adds_from_base: whether `add_into` takes `base=`, bf16 base rows it adds to while writing every
            weight into `rows` (one pass instead of a copy and an add); `Vector.add_into` copies for the others.
        adds_block_by_block: whether `add_into` reads and adds a row range a bounded piece at a time (a
            stored block; a chunk of a low-rank product, or none where AMX adds the product as it is
            computed), so a caller may hand it many streaming chunks' rows in one call without holding
            more in memory than the range's share of the payload.
    """

    name: str
    decode_rows: Callable[[TensorEntry, Payload, int, int], torch.Tensor]
    encode: Callable[..., Encoded] | None = None
    validate: Callable[[TensorEntry, Payload], list[str]] = field(kw_only=True)
    add_into: Callable[[TensorEntry, Payload, int, int, torch.Tensor, float], tuple[int, float, float]] | None = field(default=None, kw_only=True)
    reads: Callable[[TensorEntry, int, int], list[tuple[str, int, int | None]]] | None = field(default=None, kw_only=True)
    adds_from_base: bool = field(default=False, kw_only=True)
    adds_block_by_block: bool = field(default=False, kw_only=True)


def expect_keys(entry: TensorEntry, roles: Collection[str]) -> list[str]:
    """The problem with an entry whose payload roles differ from `roles`, if any."""
    if set(entry.keys) != set(roles):
        return [f"tensor {entry.name}: {entry.encoding} stores {sorted(roles) or 'nothing'}, manifest lists {sorted(entry.keys) or 'nothing'}"]
    return []


def expect_stored(
    entry: TensorEntry, payload: Payload, role: str, shape: tuple[int, ...] | None, dtypes: Collection[torch.dtype]
) -> list[str]:
    """Problems of one stored tensor whose shape (None: any 1-D) or dtype differs from what the encoding needs."""
    key = entry.keys[role]
    problems = []
    got_shape, got_dtype = tuple(payload.shape(key)), payload.dtype(key)
    if shape is None:
        if len(got_shape) != 1:
            problems.append(f"tensor {entry.name}: stored {role} {key!r} has shape {list(got_shape)}, expected one dimension")
    elif got_shape != tuple(shape):
        problems.append(f"tensor {entry.name}: stored {role} {key!r} has shape {list(got_shape)}, expected {list(shape)}")
    if got_dtype not in dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        problems.append(f"tensor {entry.name}: stored {role} {key!r} has dtype {str(got_dtype).removeprefix('torch.')}, expected {names}")
    return problems


def storage_dtype(entry: TensorEntry) -> torch.dtype | None:
    """The torch dtype an entry's `dtype` names, or None for a name rvec does not store."""
    return _BY_NAME.get(entry.dtype)


_BY_NAME = {str(d).removeprefix("torch."): d for d in FLOAT_DTYPES}
