"""Compare merged checkpoints with the exact task-arithmetic result, streamed one chunk at a time.

The reference is base + Σ wᵢ·(modelᵢ − reference_model), computed in float32 and rounded once to the
output dtype. A weight differs when its bits differ; it is off by more than one step when another value
of the dtype lies between it and the reference; its error in ULPs is |error| / ulp(exact value), where
ulp(x) is the dtype's spacing at |x|, so values near zero do not inflate the count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rvec_hub.arith import row_chunks, streaming_threads
from rvec_hub.io.checkpoint import Checkpoint, open_checkpoint

_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
_SIGN_BITS = {torch.bfloat16: (torch.int16, 0x7FFF), torch.float16: (torch.int16, 0x7FFF), torch.float32: (torch.int32, 0x7FFFFFFF)}


@dataclass
class Agreement:
    """How far one output lies from the reference, over every compared weight."""

    weights: int = 0
    differing: int = 0
    beyond_one_ulp: int = 0
    max_abs_error: float = 0.0
    max_ulps: float = 0.0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    dtype_mismatch: list[str] = field(default_factory=list)

    @property
    def bit_exact(self) -> bool:
        return self.differing == 0 and not (self.missing or self.dtype_mismatch)

    def to_dict(self) -> dict:
        share = (lambda n: n / self.weights if self.weights else 0.0)
        return {
            **asdict(self),
            "share_differing": share(self.differing),
            "share_beyond_one_ulp": share(self.beyond_one_ulp),
            "bit_exact": self.bit_exact,
        }


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Integers whose differences count representable floats between values (so +0 and −0 are equal)."""
    int_dtype, magnitude = _SIGN_BITS[t.dtype]
    bits = t.view(int_dtype).to(torch.int64)
    return torch.where(bits < 0, -(bits & magnitude), bits)


def ulp(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` at each |exact| (its smallest normal spacing below the normal range)."""
    tiny = torch.finfo(dtype).tiny
    _, exponent = torch.frexp(exact.abs().clamp_min(tiny))
    return torch.ldexp(torch.ones_like(exact), exponent - 1 - _MANTISSA_BITS[dtype])


def _account(agg: Agreement, got: torch.Tensor, want: torch.Tensor, exact: torch.Tensor) -> None:
    agg.weights += want.numel()
    if got.dtype != want.dtype:
        got = got.to(want.dtype)
    int_dtype = _SIGN_BITS[want.dtype][0]
    agg.differing += int(torch.count_nonzero(got.view(int_dtype) != want.view(int_dtype)))
    agg.beyond_one_ulp += int(((ordered_bits(got) - ordered_bits(want)).abs() > 1).sum())
    if want.numel():
        error = (got.float() - want.float()).abs()
        agg.max_abs_error = max(agg.max_abs_error, float(error.max()))
        agg.max_ulps = max(agg.max_ulps, float((error / ulp(exact, want.dtype)).max()))


def compare_to_reference(
    base: str | Path,
    reference: str | Path,
    models: list[tuple[str | Path, float]],
    outputs: dict[str, str | Path],
    *,
    out_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Agreement]:
    """Measure each output against base + Σ wᵢ·(modelᵢ − reference) computed in float32, rounded once.

    Args:
        base: the model the deltas are added to (its tensor list is the one compared).
        reference: the model every delta is taken from.
        models: (model, weight) pairs.
        outputs: label → merged checkpoint to check.
        out_dtype: dtype the reference is rounded to (the outputs' dtype).

    Returns:
        label → agreement.
    """
    base_ck, ref_ck = open_checkpoint(base), open_checkpoint(reference)
    model_cks = [(open_checkpoint(m), w) for m, w in models]
    out_cks: dict[str, Checkpoint] = {label: open_checkpoint(p) for label, p in outputs.items()}
    result = {label: Agreement() for label in outputs}
    for label, ck in out_cks.items():
        result[label].missing = sorted(base_ck.tensors.keys() - ck.tensors.keys())
        result[label].extra = sorted(ck.tensors.keys() - base_ck.tensors.keys())
    with streaming_threads():
        for name, info in base_ck.tensors.items():
            if info.dtype.is_floating_point:
                _compare_tensor(name, info.shape, base_ck, ref_ck, model_cks, out_cks, out_dtype, result)
    for ck in (base_ck, ref_ck, *(c for c, _ in model_cks), *out_cks.values()):
        ck.close()
    return result


def _compare_tensor(
    name: str,
    shape: tuple[int, ...],
    base_ck: Checkpoint,
    ref_ck: Checkpoint,
    model_cks: list[tuple[Checkpoint, float]],
    out_cks: dict[str, Checkpoint],
    out_dtype: torch.dtype,
    result: dict[str, Agreement],
) -> None:
    """Account one tensor of every output, chunk by chunk."""
    for start, stop in row_chunks(shape):
        rows = (lambda ck: ck.read_rows(name, start, stop) if shape else ck.read_rows(name))
        exact = rows(base_ck).float()
        ref_rows = rows(ref_ck).float()
        for ck, weight in model_cks:
            exact.add_(rows(ck).float() - ref_rows, alpha=weight)
        want = exact.to(out_dtype)
        del ref_rows
        for label, ck in out_cks.items():
            agg = result[label]
            if name not in ck.tensors:
                continue
            got = rows(ck)
            if got.dtype != out_dtype:
                if start == 0:
                    agg.dtype_mismatch.append(f"{name}: {got.dtype}")
                continue
            _account(agg, got, want, exact)
