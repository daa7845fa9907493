"""Delta arithmetic: add α·Δ to base rows in float32, cast once, and measure what the cast kept."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from .errors import CheckpointError, FormatError, UsageError

# Rows per chunk are chosen so one float32 chunk stays near this many elements (4 MB). Chunks this small
# stay in cache across the few passes made over them, and their buffers are reused from the heap
# instead of being mapped and zeroed afresh by the kernel as 32 MB ones are: 5x less CPU per weight.
CHUNK_ELEMENTS = 1024 * 1024
# Below this |α|·‖Δ‖ of a chunk, base + α·Δ cannot overflow float32 weights of any trained model, so a
# float32 output needs no finiteness pass of its own (a narrower output is checked through its rounding error).
_OVERFLOW_GUARD = 1e30
T, R = TypeVar("T"), TypeVar("R")


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Row ranges that split a tensor into chunks of about CHUNK_ELEMENTS elements."""
    if not shape:
        return [(0, 1)]
    rows = shape[0]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [(i, min(rows, i + step)) for i in range(0, rows, step)] or [(0, 0)]


@contextmanager
def streaming_threads(count: int = 1) -> Iterator[None]:
    """Run torch's CPU ops on `count` threads inside the block, restoring the setting after.

    Each op of a streaming pass touches a few megabytes and is bound by memory, not arithmetic;
    splitting it across OpenMP threads gains little, and on a busy machine every op waits at a barrier
    for a descheduled thread: measured 4x the CPU time and 4x the wall time of one thread, which leaves
    the other cores to the file reads and writes running beside it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ordered_map(work: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`work` on each item, results in item order, on up to `workers` threads (for work that releases the
    GIL). At most `workers` items are in flight or waiting to be taken, so memory stays that of `workers` results."""
    if workers <= 1:
        yield from map(work, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rvec-work") as pool:
        try:
            for item in items:
                if len(pending) >= workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(work, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def resolve_device(device: str | None) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; None picks cuda when available."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {device!r}; use cpu or cuda") from exc


class Workspace:
    """Scratch tensors reused from chunk to chunk, so a streaming pass allocates no buffer per chunk.

    A fresh multi-megabyte tensor per chunk costs page faults and zeroing whenever the allocator has
    handed the previous one back to the kernel, which doubles the cost of the arithmetic itself.

    Example:
        >>> ws = Workspace()
        >>> acc = ws.get("acc", (4, 8), torch.float32, torch.device("cpu"))
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of `shape` for `slot`; valid until the slot is asked for again."""
        numel = math.prod(shape)
        key = (slot, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(max(numel, 1), dtype=dtype, device=device)
        return buf[:numel].view(shape)


@dataclass
class Survival:
    """How much of α·Δ a cast to the output dtype kept, accumulated over chunks.

    `retained` is 1 − ‖realised − α·Δ‖ / ‖α·Δ‖, where realised = cast(base + α·Δ) − base.
    """

    err_sq: float = 0.0
    norm_sq: float = 0.0

    def add(
        self, exact: torch.Tensor, out: torch.Tensor, delta: torch.Tensor, alpha: float, scratch: torch.Tensor | None = None
    ) -> bool:
        """Account one chunk: `exact` is base + α·Δ in float32, `out` its cast.

        `scratch`, a float32 tensor shaped like `exact`, receives the rounding error instead of a new one.

        Returns:
            False when `out` holds NaN or Inf (the chunk is then not accounted). The norms this computes
            anyway tell: a cast's error is finite exactly when both `exact` and `out` are.
        """
        # realised − α·Δ = cast(exact) − exact, so the base never needs a second conversion.
        # Widening into `scratch` first keeps both steps on torch's fast same-dtype kernels.
        err_sq = 0.0
        if out.dtype != exact.dtype:
            err = scratch.copy_(out).sub_(exact) if scratch is not None else out.float().sub_(exact)
            err_sq = torch.linalg.vector_norm(err).item() ** 2
        scaled = abs(alpha) * torch.linalg.vector_norm(delta).item()
        if not (math.isfinite(err_sq) and math.isfinite(scaled)):
            # A float32 norm overflows long before its elements do: look at the values, then recount in float64.
            if not bool(torch.isfinite(out).all()):
                return False
            err_sq = torch.linalg.vector_norm(out.double() - exact.double()).item() ** 2 if out.dtype != exact.dtype else 0.0
            scaled = abs(alpha) * torch.linalg.vector_norm(delta, dtype=torch.float64).item()
        if out.dtype == exact.dtype and scaled >= _OVERFLOW_GUARD and not bool(torch.isfinite(out).all()):
            return False
        self.err_sq += err_sq
        self.norm_sq += scaled**2
        return True

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
    *,
    workspace: Workspace | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """base + Σ αᵢ·Δᵢ computed in float32 and cast once to `out_dtype`; a result with NaN or Inf is refused.

    Args:
        base: rows of the base tensor, any dtype.
        terms: (float32 delta rows, alpha) per vector.
        out_dtype: dtype of the result.
        survival: one accumulator per term; each records what a cast of base + that term alone keeps.
        workspace: scratch buffers to compute in; the result then lives in the workspace and stays
            valid only until its next use (streaming callers write it out at once).
        name: the tensor, for the message when the result is not finite.

    Returns:
        The merged rows in `out_dtype`.

    Raises:
        FormatError: a delta holds NaN or Inf. CheckpointError: the base rows do.
        UsageError: α·Δ overflows `out_dtype`.
    """
    ws = workspace if workspace is not None else _Fresh()
    shape, device = tuple(base.shape), base.device
    acc = ws.get("acc", shape, torch.float32, device).copy_(base)
    scratch = ws.get("err", shape, torch.float32, device) if survival is not None else None
    if len(terms) == 1:
        delta, alpha = terms[0]
        acc.add_(delta, alpha=alpha)
        out = acc if out_dtype == torch.float32 else ws.get("out", shape, out_dtype, device).copy_(acc)
        finite = survival[0].add(acc, out, delta, alpha, scratch) if survival is not None else bool(torch.isfinite(out).all())
        if not finite:
            raise non_finite_error(name, base, terms, out_dtype)
        return out
    base_f = ws.get("base", shape, torch.float32, device).copy_(acc) if survival is not None else None
    for i, (delta, alpha) in enumerate(terms):
        if survival is not None:
            alone = torch.add(base_f, delta, alpha=alpha, out=ws.get("alone", shape, torch.float32, device))
            cast = alone if out_dtype == torch.float32 else ws.get("out", shape, out_dtype, device).copy_(alone)
            if not survival[i].add(alone, cast, delta, alpha, scratch):
                raise non_finite_error(name, base, terms, out_dtype)
        acc.add_(delta, alpha=alpha)
    out = acc if out_dtype == torch.float32 else ws.get("out", shape, out_dtype, device).copy_(acc)
    # Every term alone was finite; their sum can still overflow.
    if not bool(torch.isfinite(out).all()):
        raise non_finite_error(name, base, terms, out_dtype)
    return out


def non_finite_error(name: str | None, base: torch.Tensor, terms: list[tuple[torch.Tensor, float]], out_dtype: torch.dtype) -> Exception:
    """The error for a merged chunk holding NaN or Inf, naming its cause: the vector, the base, or α."""
    where = name or "a tensor"
    for delta, _ in terms:
        if not bool(torch.isfinite(delta).all()):
            return FormatError(f"the vector's delta for {where} holds NaN or Inf; the vector is corrupt: run `rvec check VEC`, then fetch or extract it again")
    if base.is_floating_point() and not bool(torch.isfinite(base).all()):
        return CheckpointError(f"base tensor {where} holds NaN or Inf; the base checkpoint is corrupt")
    largest = max(abs(a) * float(d.abs().max()) if d.numel() else 0.0 for d, a in terms)
    limit = float(torch.finfo(out_dtype).max) if out_dtype.is_floating_point else float("inf")
    hint = "" if out_dtype == torch.float32 else " or --out-dtype fp32"
    return UsageError(
        f"alpha × the vector overflows {str(out_dtype).removeprefix('torch.')} in {where} "
        f"(largest |alpha·v| {largest:.3g}, the dtype holds {limit:.3g}); use a smaller alpha{hint}"
    )


class _Fresh:
    """A workspace that hands out new tensors: `add_rows` without one returns a tensor of its own."""

    def get(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device)
