"""Delta arithmetic: add α·Δ to base rows in float32, cast once, and measure what the cast kept."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Rows per chunk are chosen so one float32 chunk stays near this many elements.
CHUNK_ELEMENTS = 8 * 1024 * 1024


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Row ranges that split a tensor into chunks of about CHUNK_ELEMENTS elements."""
    if not shape:
        return [(0, 1)]
    rows = shape[0]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [(i, min(rows, i + step)) for i in range(0, rows, step)] or [(0, 0)]


def resolve_device(device: str | None) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; None picks cuda when available."""
    from .errors import UsageError

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {device!r}; use cpu or cuda") from exc


@dataclass
class Survival:
    """How much of α·Δ a cast to the output dtype kept, accumulated over chunks.

    `retained` is 1 − ‖realised − α·Δ‖ / ‖α·Δ‖, where realised = cast(base + α·Δ) − base.
    """

    err_sq: float = 0.0
    norm_sq: float = 0.0

    def add(self, exact: torch.Tensor, out: torch.Tensor, delta: torch.Tensor, alpha: float) -> None:
        """Account one chunk: `exact` is base + α·Δ in float32, `out` its cast."""
        # realised − α·Δ = cast(exact) − exact, so the base never needs a second conversion.
        self.err_sq += torch.linalg.vector_norm(out.float() - exact).item() ** 2
        self.norm_sq += (alpha * torch.linalg.vector_norm(delta).item()) ** 2

    def merge(self, other: Survival) -> None:
        """Fold another accumulator into this one."""
        self.err_sq += other.err_sq
        self.norm_sq += other.norm_sq

    @property
    def retained(self) -> float:
        """Share of the vector's norm that survives (1.0 for an empty vector)."""
        if self.norm_sq == 0.0:
            return 1.0
        return max(0.0, 1.0 - math.sqrt(self.err_sq / self.norm_sq))


def add_rows(
    base: torch.Tensor,
    terms: list[tuple[torch.Tensor, float]],
    out_dtype: torch.dtype,
    survival: list[Survival] | None = None,
) -> torch.Tensor:
    """base + Σ αᵢ·Δᵢ computed in float32 and cast once to `out_dtype`.

    Args:
        base: rows of the base tensor, any dtype.
        terms: (float32 delta rows, alpha) per vector.
        out_dtype: dtype of the result.
        survival: one accumulator per term; each records what a cast of base + that term alone keeps.

    Returns:
        The merged rows in `out_dtype`.
    """
    acc = base.to(torch.float32, copy=True)
    if len(terms) == 1:
        delta, alpha = terms[0]
        acc.add_(delta, alpha=alpha)
        out = acc.to(out_dtype)
        if survival is not None:
            survival[0].add(acc, out, delta, alpha)
        return out
    base_f = acc.clone() if survival is not None else None
    for i, (delta, alpha) in enumerate(terms):
        if survival is not None:
            alone = torch.add(base_f, delta, alpha=alpha)
            survival[i].add(alone, alone.to(out_dtype), delta, alpha)
        acc.add_(delta, alpha=alpha)
    return acc.to(out_dtype)
