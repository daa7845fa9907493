"""A global byte budget for low-rank factors, spent where it captures the most energy.

Each singular value σᵢ of a matrix Δ (out×in) costs (out + in) stored numbers and removes σᵢ² from
‖Δ − Δ̂‖². Spectra descend, so taking singular values greedily by σ²/bytes across all matrices is the
optimal allocation for the captured energy, up to the last partly affordable step.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

import torch

from .errors import UsageError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes for `200MB`, `1.5GB`, `512MiB` or a plain integer.

    Example:
        >>> parse_size("200MB")
        200000000
    """
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise UsageError(f"cannot read size {text!r}; write it like 200MB, 1.5GB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class RankCandidate:
    """One matrix competing for the budget.

    Attributes:
        bytes_per_rank: payload bytes one more rank costs, (out + in) × factor element size.
        energies: squared singular values, largest first.
        max_rank: the largest rank worth storing (below the matrix's dense cost).
    """

    bytes_per_rank: int
    energies: torch.Tensor
    max_rank: int


def minimum_bytes(candidates: dict[str, RankCandidate]) -> int:
    """What rank 1 for every matrix costs."""
    return sum(c.bytes_per_rank for c in candidates.values())


def allocate_ranks(candidates: dict[str, RankCandidate], budget: int) -> dict[str, int]:
    """Ranks per matrix that fit `budget` bytes and capture the most energy, every matrix at rank ≥ 1.

    Args:
        candidates: the matrices by name.
        budget: bytes available to their factors.

    Returns:
        The rank of every candidate.

    Raises:
        UsageError: when even rank 1 everywhere does not fit.
    """
    need = minimum_bytes(candidates)
    if budget < need:
        raise UsageError(f"a budget of {budget:,} bytes cannot hold even rank 1 for every matrix; it needs at least {need:,} bytes")
    ranks = {name: 1 for name in candidates}
    left = budget - need
    heap = [(-_gain(c, 1), name) for name, c in candidates.items() if c.max_rank > 1]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        c = candidates[name]
        if c.bytes_per_rank > left:
            continue  # this matrix stops growing; cheaper ones may still fit
        left -= c.bytes_per_rank
        ranks[name] += 1
        if ranks[name] < c.max_rank:
            heapq.heappush(heap, (-_gain(c, ranks[name]), name))
    return ranks


def uniform_rank(candidates: dict[str, RankCandidate], budget: int) -> int:
    """The largest single rank every matrix can share within `budget` (0 when none fits)."""
    per_rank = minimum_bytes(candidates)
    return budget // per_rank if per_rank else 0


def _gain(c: RankCandidate, index: int) -> float:
    return float(c.energies[index]) / c.bytes_per_rank if index < c.energies.numel() else 0.0
