"""Fused adds: α·Δ added straight into bf16 base rows, one rounding per weight, in one pass.

The general path (`arith.add_rows`) widens base and delta to float32 chunks, adds, casts and then
measures the cast: five passes over every weight. For the common case, one vector merged into a bf16
model, these kernels do all of it in the pass that reads the delta: the base rows are rounded in place
to bf16(float32(base) + α·Δ), and the squared rounding error and ‖α·Δ‖² (what `Survival` records) are
summed on the way. A packed (or quantized) delta is added straight from its position and code streams;
where the positions are a bitmask and the CPU has AVX-512 with VBMI2, the codes are looked up many at a time
(a bf16 vector's sixty-four) and only the weights the vector changes are computed, sixteen a step, the
others copied from the base (`_ckernels.c`).

The sum is float32's fused multiply-add, as torch's `add(alpha=)` computes it, rounded to bf16 to
nearest even, as torch casts. The kernels are C (`rvec_hub._kernels`); where the package was installed
without its compiled part the callers keep the general path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .arith import Survival

BAD_VALUE = 8  # a status: a sum is NaN or infinite in bf16 (as in rvec_hub/_ckernels.c)


def available() -> bool:
    """Whether the kernels are here (the package's compiled part was built)."""
    return _kernels() is not None


def load_kernels() -> None:
    """Load the kernels now, on this thread: a thread that imports a module while another takes a Ctrl-C
    inside its own import machinery can wait on the import lock forever."""
    _kernels()


def applies(vector: Any, source: str, base: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether `add_in_place` can add the delta of `source` to these base rows: bf16 in and out on the CPU,
    an encoding with a fused kernel, the kernels built."""
    return applies_to(vector, source, base.dtype, out_dtype, base.device)


def applies_to(vector: Any, source: str, base_dtype: torch.dtype, out_dtype: torch.dtype, device: torch.device) -> bool:
    """`applies` for base rows of `base_dtype` on `device`, decided before any row is read."""
    if base_dtype != torch.bfloat16 or out_dtype != torch.bfloat16 or device.type != "cpu":
        return False
    return vector.has_fused_add(source) and available()


def add_in_place(
    rows: torch.Tensor,
    vector: Any,
    source: str,
    start: int,
    stop: int,
    alpha: float,
    survival: Survival | None,
    *,
    name: str,
    pristine: Callable[[], torch.Tensor],
    staged: Any = None,
    base: torch.Tensor | None = None,
) -> None:
    """rows ← bf16(rows + α·Δ) for one vector's rows `[start, stop)` of `source`, in one fused pass; with
    `base`, rows ← bf16(base + α·Δ), `rows` holding anything before.

    Args:
        rows: contiguous bf16 base rows on the CPU, overwritten.
        vector: the `Vector`; `source` the tensor whose delta `name` takes (see `rvec_hub.tied`).
        survival: accumulates what the bf16 rounding kept of α·Δ.
        pristine: reads the base rows again, to name the cause when a sum is not finite.
        staged: the vector's payload with these rows read ahead (`Vector.staged`), or None.
        base: bf16 base rows shaped like `rows`, when they are not in `rows` already (read through a
            contiguous copy if they are strided): an encoding that can (`Codec.adds_from_base`) writes
            base + α·Δ in one pass, others copy first.

    Only for what `applies` accepts.

    Raises:
        What `arith.add_rows` raises for the same rows: FormatError, CheckpointError or UsageError.
    """
    status, err_sq, norm_sq = vector.add_into(source, start, stop, rows, alpha, staged, base=base)
    if status:
        from .arith import add_rows, non_finite_error

        base, terms = pristine(), [(vector.decode_rows(source, start, stop), alpha)]
        add_rows(base, terms, rows.dtype, name=name)
        raise non_finite_error(name, base, terms, rows.dtype)
    if survival is not None:
        survival.err_sq += float(err_sq)
        survival.norm_sq += float(norm_sq)


def add_dense(rows: torch.Tensor, delta: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    """rows ← bf16(rows + α·delta), in place; with `base`, rows ← bf16(base + α·delta).

    Args:
        rows: contiguous bf16 base rows, overwritten.
        delta: the delta rows, bf16 or float32, shaped like `rows`.
        base: bf16 rows shaped like `rows` to add to instead of `rows` itself.

    Returns:
        (status, rounding error², ‖α·Δ‖²); status BAD_VALUE when a sum is not finite (rows then hold
        partial results and must be discarded).
    """
    kernels = _kernels()
    target = _bits(rows)
    d = delta.reshape(-1)
    values = _bits(d) if d.dtype == torch.bfloat16 else d.float().numpy()
    source = None if base is None else _bits(base)
    return kernels["dense"](target, values, alpha, source)


def add_lowrank(rows: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float] | None:
    """rows ← bf16(rows + α·bf16(b·A)) in one pass (AMX's bf16 tiles, or AVX512-BF16), the product never
    stored; with `base`, rows ← bf16(base + α·bf16(b·A)). `b` (rows × rank) and `pairs` (A, rank × cols, as
    rank / 2 × cols × 2 pairs A[2k][n], A[2k + 1][n]) are contiguous bf16. None where the kernel cannot run
    here (no compiled kernels; neither unit, or the walk setting forbids it; an odd rank; a rank not in
    thirty-twos up to 256 where AMX runs; columns not a multiple of 16): the caller multiplies and calls
    `add_dense`. Otherwise as `add_dense`."""
    kernels = _kernels()
    if kernels is None:
        return None
    return kernels["lowrank"](rows, b, pairs, alpha, base)


def pair_ranks(a: torch.Tensor) -> torch.Tensor:
    """bf16 A (rank × cols, rank even) in the pair layout `add_lowrank` takes, rank / 2 × cols × 2."""
    kernels = _kernels()
    if kernels is None or not a.is_contiguous():
        rank, cols = a.shape
        return a.view(rank // 2, 2, cols).transpose(1, 2).contiguous()
    return kernels["pairs"](a)


def add_at(rows: torch.Tensor, where: torch.Tensor, values: torch.Tensor, alpha: float) -> tuple[int, float, float]:
    """rows ← bf16(rows + α·values) at the flat positions `where` (int64, each inside `rows`), in place.

    Returns:
        (status, rounding error², ‖α·Δ‖²), as `add_dense`.
    """
    target = _bits(rows)
    return _kernels()["indexed"](target, where.long().numpy(), values.float().numpy(), alpha)


def add_coded(
    rows: torch.Tensor,
    positions: np.ndarray,
    codes: np.ndarray,
    table: np.ndarray,
    escaped: np.ndarray | None,
    alpha: float,
    scales: np.ndarray | None = None,
    bitmask: bool = False,
    base: torch.Tensor | None = None,
) -> tuple[int, float, float]:
    """rows ← bf16(rows + α·Δ) for the entries of one packed (or quantized) block, in place.

    Args:
        rows: contiguous bf16 base rows the block covers, overwritten where the block has entries.
        positions, codes: the block's position and code streams (uint8); `positions` are gap bytes, empty
            when every element is coded, or with `bitmask` one bit per element.
        table, escaped: the codebook and the escaped values, float32 (numpy or torch); `escaped` None for an encoding
            without escaped values (`quantized`), whose code 255 is then one more code outside the codebook.
        scales: one float32 scale per row of `rows`, multiplying each coded value (`quantized`).
        base: bf16 rows shaped like `rows` to add to instead of `rows` itself; `rows` then gets
            every weight, base where the block has no entry (the merge needs no copy of the base first).

    Returns:
        (status, rounding error², ‖α·Δ‖²); a status other than 0 is a `packed` decoding status or BAD_VALUE.
    """
    cols = rows.numel() // rows.shape[0] if rows.dim() and rows.shape[0] else 1
    return _kernels()["coded"](positions, codes, table, escaped, scales, cols, rows, alpha, bitmask, base)


def add_coded_run(
    data: torch.Tensor, data_at: int, index: np.ndarray, first_row: int, cols: int, bitmask: bool, layout: Any,
    table: torch.Tensor, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None,
) -> tuple[int, float, float, int]:
    """rows ← bf16(rows + α·Δ) (with `base`, bf16(base + α·Δ)) for a run of whole packed or quantized blocks,
    in one call that reads their frames itself (`_kernels.coded_blocks`; `layout` a `blocks.Layout`).

    Returns:
        (status, rounding error², ‖α·Δ‖², blocks done): the sums cover the blocks done; a status other than
        0 and BAD_VALUE means the block after them is left to the block-by-block walk, which names what is
        wrong with it or reads the frames this call does not.
    """
    return _kernels()["blocks"](
        data, data_at, index, first_row, cols, bitmask, layout.bits, layout.nibbles, layout.escape_bytes, table, layout.scales, rows, base, alpha,
    )


def populate(out: torch.Tensor) -> None:
    """Fault in the pages of `out` (contiguous, on the CPU) in one call before the kernels write it: in a fresh
    process, where a server's parameters are new memory, the kernels' first write to each page otherwise
    traps once per page (a 0.5B model on one core, fresh process: 0.68–0.94 s against 1.22–1.32 s,
    bench/README.md). Nothing is changed; where the kernel cannot (Linux before 5.14, or without the compiled
    kernels), nothing is done."""
    kernels = _kernels()
    if kernels is not None and out.device.type == "cpu" and out.is_contiguous():
        kernels["populate"](out)


def _bits(rows: torch.Tensor) -> np.ndarray:
    """bf16 rows as their flat bits (uint16), the memory the kernels read and write."""
    return rows.reshape(-1).view(torch.int16).numpy().view(np.uint16)


@lru_cache(maxsize=1)
def _kernels() -> dict[str, Any] | None:
    try:
        from . import _kernels as compiled
    except ImportError:  # installed without the compiled part
        return None
    return {"dense": compiled.dense, "coded": compiled.coded, "indexed": compiled.indexed, "lowrank": compiled.lowrank, "populate": compiled.populate,
            "blocks": compiled.coded_blocks, "pairs": compiled.pair_ranks}
