"""Encoded tensors held in memory for the encoding tests: a payload over a dict, an RL-like delta, one tensor encoded."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from rvec_hub.encodings import ENCODINGS
from rvec_hub.manifest import TensorEntry

DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class StoredPayload:
    """The Payload protocol over encoded tensors held in memory."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.tensors[key][start:stop]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype


def rl_delta(rows: int, cols: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An RL-like delta: bf16 weights moved by far less than a step, rounded back; most entries stay zero."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(rows, cols, generator=g) * 0.02).to(dtype).float()
    tuned = (w + torch.randn(rows, cols, generator=g) * 1.5e-5).to(dtype).float()
    return (tuned - w).to(dtype).float()


def encode_one(encoding: str, delta: torch.Tensor, dtype: torch.dtype = torch.bfloat16, **options: object) -> tuple[TensorEntry, StoredPayload]:
    """`delta` encoded as tensor "w" with `encoding`: its manifest entry and its payload, which the codec validates."""
    codec = ENCODINGS[encoding]
    encoded = codec.encode(delta, dtype=dtype, **options)
    entry = TensorEntry(
        name="w", shape=tuple(delta.shape), dtype=DTYPE_NAMES[dtype], encoding=encoding,
        keys={role: role for role in encoded.stored}, params=encoded.params, stats=encoded.stats,
    )
    stored = StoredPayload(dict(encoded.stored))
    assert codec.validate(entry, stored) == []
    return entry, stored


def block_codes(entry: TensorEntry, frame: np.ndarray, count: int) -> np.ndarray:
    """A `packed` or `quantized` block's `count` codes, a byte each, from its decompressed code frame: as
    stored, or widened from the "nibbles" layout (`packed`) or the "bitpacked" one (`quantized`)."""
    if entry.params.get("codes") == "bitpacked":
        from rvec_hub.encodings.quantized import code_slot

        slot = code_slot(entry.params["bits"])
        fields = np.unpackbits(frame, bitorder="little").reshape(-1, slot)
        return (fields << np.arange(slot, dtype=np.uint8)).sum(axis=1).astype(np.uint8)[:count]
    if entry.params.get("codes") != "nibbles":
        return frame
    from rvec_hub.encodings.packed import _unnibbled_numpy

    codes, status = _unnibbled_numpy(frame, count)
    assert status == 0
    return codes


def without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the rest of a test as if the package's compiled part were not built."""
    import rvec_hub
    from rvec_hub.encodings import blocks

    monkeypatch.setitem(sys.modules, "rvec_hub._kernels", None)
    monkeypatch.delattr(rvec_hub, "_kernels", raising=False)
    monkeypatch.setattr(blocks, "_compiled_kernel", lambda: None)


@contextmanager
def walking(walk: str) -> Iterator[None]:
    """The compiled kernels' walk setting (`_kernels.WALKS`) for the body, the one before restored after."""
    from rvec_hub import _kernels

    before = _kernels.vector_walk(walk)
    try:
        yield
    finally:
        _kernels.vector_walk(before)
