"""Tensor parallelism: each rank adds the vectors only to the slice of a tensor it keeps.

vLLM's weight loaders receive whole checkpoint tensors and cut out their rank's shard with
`loaded_weight.narrow(dim, start, length)` (column-parallel layers and the vocabulary along dim 0,
row-parallel layers along dim 1). Under tensor parallelism the rvec loader therefore yields each touched
tensor as a `MergeOnNarrow`: the base tensor, with the vectors added when it is used. `narrow` merges just
the requested slice; any other use (a replicated norm copied whole, a reshape) merges the whole tensor first,
so a loader that cuts its shard some other way still gets the right weights, only without the saving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch

from rvec_hub import fused
from rvec_hub.arith import Survival, add_rows, row_chunks
from rvec_hub.tied import delta_source

from .merge import _active, _fused, merge_tensor
from .spec import OpenedVector

# Reading these never needs the merged values.
_METADATA = {
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.is_floating_point,
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__, torch.Tensor.is_cuda.__get__,  # type: ignore[attr-defined]
}


class MergeOnNarrow(torch.Tensor):
    """A base tensor that becomes base + Σ αᵢ·Δᵢ when used; `narrow` computes only the slice it returns."""

    _merge: Callable[[int | None, int, int], torch.Tensor]

    @staticmethod
    def __new__(cls, base: torch.Tensor, merge: Callable[[int | None, int, int], torch.Tensor]) -> MergeOnNarrow:
        out = torch.Tensor._make_subclass(cls, base, False)
        out._merge = merge
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func is torch.Tensor.narrow and isinstance(args[0], MergeOnNarrow):
            given = list(args[1:]) + [kwargs[k] for k in ("dim", "start", "length")[len(args) - 1:]]
            dim, start, length = (int(v) for v in given)
            return args[0]._merge(dim % args[0].dim(), start, length)
        whole = [a._merge(None, 0, 0) if isinstance(a, MergeOnNarrow) else a for a in args]
        return func(*whole, **kwargs)


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

    Along dim 0 only the slice's rows are decoded, and one vector into bf16 is added by the fused kernels
    as `merge_tensor` adds it; along another dim every row is decoded (the encodings decode by rows) but
    only the slice is added and cast.
    """
    active = _active(vectors, name)
    rows = base.narrow(dim, start, length)
    if not active or not base.dtype.is_floating_point:
        return rows
    src = {i: delta_source(vectors[i].vector, name) for i in active}
    if dim == 0 and len(active) == 1 and fused.applies(vectors[active[0]].vector, src[active[0]], base, out_dtype):
        i = active[0]
        return _fused(name, rows, vectors[i], src[i], survival[i], first_row=start)
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
    """Like `merged_weights`, but each touched tensor is merged only where the rank's weight loader reads it.

    Args:
        seconds: a one-element accumulator of the time spent merging, for the per-rank report.
    """
    for name, tensor in weights:
        if not _active(vectors, name) or not tensor.dtype.is_floating_point or tensor.dim() == 0:
            yield name, tensor
            continue

        def merge(dim: int | None, start: int, length: int, name: str = name, base: torch.Tensor = tensor) -> torch.Tensor:
            began = time.perf_counter()
            if dim is None:
                out = merge_tensor(name, base, vectors, out_dtype, survival)
            else:
                out = merge_slice(name, base, vectors, out_dtype, survival, dim, start, length)
            seconds[0] += time.perf_counter() - began
            return out

        yield name, MergeOnNarrow(tensor, merge)
        del tensor
