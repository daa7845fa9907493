"""Load-time merging on the CPU: each touched tensor is added to where, and as far as, the weight loader uses it.

vLLM's weight loaders receive whole checkpoint tensors, cut out their rank's shard with
`loaded_weight.narrow(dim, start, length)` (column-parallel layers and the vocabulary along dim 0,
row-parallel layers along dim 1; with one rank the "shard" is the whole tensor) and copy it into the
parameter with `param.copy_(loaded_weight)`. The rvec loader therefore yields each touched tensor as a
`MergeOnNarrow`: the base tensor, with the vectors added when it is used.

- `narrow` along dim 0, or over the whole extent of another dim (a row-parallel layer's weight loader with
  one rank), gives the same kind of tensor over those rows; along another dim it merges just that slice.
- `param.copy_(it)` of one vector into contiguous bf16 copies the base rows into the parameter and adds
  the vector there with the fused kernels (`rvec_hub.fused`): no merged copy is made and copied again.
- Any other use (another dtype, a reshape, a replicated norm read whole) merges the tensor first, so a
  loader that does something else still gets the right weights, only without the saving.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils._pytree import tree_map

from rvec_hub import collector, fused
from rvec_hub.arith import Survival, add_rows, row_chunks
from rvec_hub.tied import delta_source

from .merge import _active, _fused, fused_into, merge_threads, merge_tensor
from .spec import OpenedVector

# Reading these never needs the merged values.
_METADATA = {
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.is_floating_point,
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__, torch.Tensor.is_cuda.__get__,  # type: ignore[attr-defined]
}


@contextmanager
def _timed(seconds: list[float]) -> Iterator[None]:
    """Add the time the block takes to the one-element accumulator `seconds`."""
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds[0] += time.perf_counter() - began


@dataclass(frozen=True)
class _Pending:
    """Rows `[lo, hi)` of the checkpoint tensor `base` plus the vectors, not added yet."""

    name: str
    base: torch.Tensor
    lo: int
    hi: int
    vectors: list[OpenedVector]
    out_dtype: torch.dtype
    survival: list[Survival]
    seconds: list[float]

    @property
    def whole_rows(self) -> bool:
        return (self.lo, self.hi) == (0, self.base.shape[0])

    def rows(self, start: int, length: int) -> _Pending:
        return replace(self, lo=self.lo + start, hi=self.lo + start + length)

    def merged(self) -> torch.Tensor:
        """These rows, merged."""
        with _timed(self.seconds):
            if self.whole_rows:
                return merge_tensor(self.name, self.base, self.vectors, self.out_dtype, self.survival)
            return merge_slice(self.name, self.base, self.vectors, self.out_dtype, self.survival, 0, self.lo, self.hi - self.lo)

    def merged_slice(self, dim: int, start: int, length: int) -> torch.Tensor:
        """`merged().narrow(dim, start, length)` for a dim other than 0, merging only that slice where it can."""
        if not self.whole_rows:
            return self.merged().narrow(dim, start, length)
        with _timed(self.seconds):
            return merge_slice(self.name, self.base, self.vectors, self.out_dtype, self.survival, dim, start, length)

    def add_into(self, dst: torch.Tensor) -> bool:
        """dst ← these rows merged, computed in `dst` itself by the fused kernels when one vector goes into
        contiguous bf16 of this shape on the CPU; False (nothing done) otherwise."""
        active = _active(self.vectors, self.name)
        rows = self.base[self.lo:self.hi]
        if len(active) != 1 or dst.dtype != self.out_dtype or dst.device.type != "cpu" or not dst.is_contiguous() or dst.shape != rows.shape:
            return False
        item = self.vectors[active[0]]
        source = delta_source(item.vector, self.name)
        if not fused.applies(item.vector, source, rows, self.out_dtype):
            return False
        with _timed(self.seconds):
            fused_into(dst, rows, self.name, item, source, self.survival[active[0]], self.lo)
        return True


class MergeOnNarrow(torch.Tensor):
    """A base tensor that becomes base + Σ αᵢ·Δᵢ where it is used (see the module's text)."""

    _pending: _Pending

    @staticmethod
    def __new__(cls, base: torch.Tensor, pending: _Pending) -> MergeOnNarrow:
        out = torch.Tensor._make_subclass(cls, base, False)
        out._pending = pending
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func is torch.Tensor.narrow and isinstance(args[0], MergeOnNarrow):
            lazy = args[0]
            given = list(args[1:]) + [kwargs[k] for k in ("dim", "start", "length")[len(args) - 1:]]
            dim, start, length = (int(v) for v in given)
            dim %= lazy.dim()
            start += lazy.shape[dim] if start < 0 else 0
            # Rows stay pending; so does the whole extent of another dim (a row-parallel loader's one-rank "shard").
            if dim == 0 or (start, length) == (0, lazy.shape[dim]):
                with torch._C.DisableTorchFunctionSubclass():
                    part = torch.Tensor.narrow(lazy, dim, start, length)
                return MergeOnNarrow(part, lazy._pending.rows(start, length) if dim == 0 else lazy._pending)
            return lazy._pending.merged_slice(dim, start, length)
        if (func is torch.Tensor.copy_ and len(args) == 2 and not kwargs and isinstance(args[1], MergeOnNarrow)
                and not isinstance(args[0], MergeOnNarrow) and args[1]._pending.add_into(args[0])):
            return args[0]
        merged = lambda a: a._pending.merged() if isinstance(a, MergeOnNarrow) else a  # noqa: E731
        return func(*tree_map(merged, tuple(args)), **tree_map(merged, kwargs))


def merge_slice(
    name: str,
    base: torch.Tensor,
    vectors: list[OpenedVector],
    out_dtype: torch.dtype,
    survival: list[Survival],
    dim: int,
    start: int,
    length: int,
) -> torch.Tensor:
    """`merge_tensor(...).narrow(dim, start, length)` without merging the rest of the tensor.

    Along dim 0 only the slice's rows are decoded. Along another dim every row is decoded (the encodings
    decode by rows): one vector into bf16 is added to whole rows by the fused kernels, as `merge_tensor` adds
    it, and the slice kept (its survival then counts the whole rows); otherwise only the slice is added and cast.
    """
    active = _active(vectors, name)
    rows = base.narrow(dim, start, length)
    if not active or not base.dtype.is_floating_point:
        return rows
    src = {i: delta_source(vectors[i].vector, name) for i in active}
    if len(active) == 1 and fused.applies(vectors[active[0]].vector, src[active[0]], base, out_dtype):
        i = active[0]
        if dim == 0:
            return _fused(name, rows, vectors[i], src[i], survival[i], first_row=start)
        return _fused(name, base, vectors[i], src[i], survival[i]).narrow(dim, start, length)
    span = (start, start + length) if dim == 0 else (0, base.shape[0])
    out = torch.empty(tuple(rows.shape), dtype=out_dtype)
    for a, b in row_chunks((span[1] - span[0], *base.shape[1:])):
        lo, hi = span[0] + a, span[0] + b
        terms = []
        for i in active:
            delta = vectors[i].vector.decode_rows(src[i], lo, hi)
            terms.append((delta if dim == 0 else delta.narrow(dim, start, length), vectors[i].alpha))
        part = base[lo:hi] if dim == 0 else base[lo:hi].narrow(dim, start, length)
        out[a:b] = add_rows(part, terms, out_dtype, [survival[i] for i in active], name=name)
    return out


def lazily_merged_weights(
    weights: Iterable[tuple[str, torch.Tensor]],
    vectors: list[OpenedVector],
    out_dtype: torch.dtype,
    survival: list[Survival],
    seconds: list[float],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Like `merged_weights`, but each touched tensor is merged only where, and as far as, the weight loader uses it.

    Args:
        seconds: a one-element accumulator of the time spent merging, for the loader's report.
    """
    with collector.paused(), merge_threads():  # as in `merged_weights`
        for name, tensor in weights:
            if not _active(vectors, name) or not tensor.dtype.is_floating_point:
                yield name, tensor
            elif tensor.dim() == 0:
                with _timed(seconds):
                    merged = merge_tensor(name, tensor, vectors, out_dtype, survival)
                yield name, merged
            else:
                yield name, MergeOnNarrow(tensor, _Pending(name, tensor, 0, tensor.shape[0], vectors, out_dtype, survival, seconds))
            del tensor
