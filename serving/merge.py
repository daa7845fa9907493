"""The heart of load-time application: a weights iterator that yields base + Σ αᵢ·Δᵢ, one tensor at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from rvec_hub import collector, fused
from rvec_hub.arith import Survival, add_rows, row_chunks
from rvec_hub.tied import delta_source

from .spec import OpenedVector


def _active(vectors: list[OpenedVector], name: str) -> list[int]:
    out = []
    for i, item in enumerate(vectors):
        # delta_source: an untied base head also takes a tied-donor vector's embedding delta (rvec_hub.tied).
        if delta_source(item.vector, name) is not None and item.alpha != 0.0:
            out.append(i)
    return out


def merge_tensor(
    name: str,
    base: torch.Tensor,
    vectors: list[OpenedVector],
    out_dtype: torch.dtype,
    survival: list[Survival],
    device: torch.device | None = None,
) -> torch.Tensor:
    """One base tensor plus every vector's scaled delta, in float32 row chunks, cast once to `out_dtype`.

    Tensors no vector touches (and non-float tensors) come back unchanged. With `device` (an accelerator),
    the arithmetic runs there and the merged tensor is returned there; vLLM's weight loaders copy from any device.
    """
    active = _active(vectors, name)
    if not active or not base.dtype.is_floating_point:
        return base
    src = {i: delta_source(vectors[i].vector, name) for i in active}
    if len(active) == 1 and device is None and fused.applies(vectors[active[0]].vector, src[active[0]], base, out_dtype):
        return _fused(name, base, vectors[active[0]], src[active[0]], survival[active[0]])
    if device is not None and base.device != device:
        base = base.to(device, non_blocking=True)
    shape = tuple(base.shape)
    if not shape:
        terms = [(vectors[i].vector.decode_rows(src[i], 0, 1).to(base.device), vectors[i].alpha) for i in active]
        return add_rows(base, terms, out_dtype, [survival[i] for i in active], name=name)
    chunks = row_chunks(shape)
    if len(chunks) == 1:
        terms = [(vectors[i].vector.decode_rows(src[i], 0, shape[0]).to(base.device), vectors[i].alpha) for i in active]
        return add_rows(base, terms, out_dtype, [survival[i] for i in active], name=name)
    out = torch.empty(shape, dtype=out_dtype, device=base.device)
    for start, stop in chunks:
        terms = [(vectors[i].vector.decode_rows(src[i], start, stop).to(base.device), vectors[i].alpha) for i in active]
        out[start:stop] = add_rows(base[start:stop], terms, out_dtype, [survival[i] for i in active], name=name)
    return out


def _fused(name: str, base: torch.Tensor, item: OpenedVector, source: str, survival: Survival, first_row: int = 0) -> torch.Tensor:
    """base + α·Δ for one vector into a bf16 copy of `base`, with `rvec_hub.fused`'s kernels; `base` holds
    the tensor's rows from `first_row` on (a rank's slice), or all of it."""
    out = torch.empty_like(base, memory_format=torch.contiguous_format)
    fused_into(out, base, name, item, source, survival, first_row)
    return out


def fused_into(out: torch.Tensor, base: torch.Tensor, name: str, item: OpenedVector, source: str, survival: Survival, first_row: int = 0) -> None:
    """out ← base + α·Δ, where `base` holds the tensor's rows from `first_row` on and `out` is contiguous
    bf16 of its shape: a fresh tensor, or the parameter the weights load into.

    Chunks are independent (disjoint rows, kernels that release the GIL), so they spread over the
    threads torch may use: the cores vLLM gave this worker. An encoding that adds a bounded piece at a
    time (`Codec.adds_block_by_block`: packed, quantized, low-rank) gets one call per thread, each over a
    run of chunks, instead of one per chunk: the Python around each call holds the interpreter lock, and
    on two threads a low-rank vector's 0.5B adds took 0.21 s at best (median 0.27) in runs against 0.28
    (0.41) in chunks, where one thread took 0.33 and 0.32.
    """
    shape = tuple(base.shape)
    chunks = row_chunks(shape)
    workers = min(len(chunks), torch.get_num_threads())
    if shape and item.vector.adds_block_by_block(source):
        chunks = _runs(chunks, workers)
    parts = [Survival() for _ in chunks]

    def one(chunk: tuple[int, int], kept: Survival) -> None:
        lo, hi = chunk
        rows, pristine = (out, base) if not shape else (out[lo:hi], base[lo:hi])
        fused.populate(rows)  # a fresh parameter's pages, faulted in one call rather than one trap a page
        fused.add_in_place(rows, item.vector, source, first_row + lo, first_row + hi, item.alpha, kept, name=name, pristine=lambda: pristine,
                           base=pristine)

    if workers > 1:
        with _threads(workers) as pool:
            list(pool.map(one, chunks, parts))
    else:
        for chunk, kept in zip(chunks, parts):
            one(chunk, kept)
    for kept in parts:
        survival.merge(kept)


def _runs(chunks: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """`chunks` (consecutive row ranges) joined into `count` runs of as equal a number of chunks as can be."""
    bounds = [len(chunks) * i // count for i in range(count + 1)]
    return [(chunks[a][0], chunks[b - 1][1]) for a, b in zip(bounds, bounds[1:])]


_lock = threading.Lock()
_loads = 0  # loads under way in this process (`merge_threads`)
_pools: dict[int, ThreadPoolExecutor] = {}  # their threads, by count


@contextmanager
def merge_threads() -> Iterator[None]:
    """Threads for the adds of one load, kept for all its tensors and joined when it ends (or the last of
    several ends).

    Threads must not outlive a load: one that ran a parallel torch op keeps an OpenMP team of its own while it
    lives, and a vLLM CPU engine serves slower beside it. Measured on 2 cores (AMD EPYC), an engine that
    loaded a 2-bit quantized vector (whose adds run torch ops on these threads) served 179 tokens/s on 1.47
    cores with them alive, 294 tokens/s on 1.98 once they were joined; a dense vector's engine served 257.
    """
    global _loads
    with _lock:
        _loads += 1
    try:
        yield
    finally:
        with _lock:
            _loads -= 1
            done = list(_pools.values()) if _loads == 0 else []
            if done:
                _pools.clear()
        for pool in done:
            pool.shutdown(wait=True)


@contextmanager
def _threads(workers: int) -> Iterator[ThreadPoolExecutor]:
    """`workers` threads: the current load's (`merge_threads`), else ones joined right after this use."""
    with _lock:
        pool = _pools.get(workers)
        if pool is None and _loads:
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rvec-merge")
    if pool is not None:
        yield pool
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rvec-merge") as own:
        yield own


def merged_weights(
    weights: Iterable[tuple[str, torch.Tensor]],
    vectors: list[OpenedVector],
    out_dtype: torch.dtype,
    survival: list[Survival] | None = None,
    device: torch.device | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Wrap a `(name, tensor)` weights iterator so each tensor leaves with the vectors added.

    Only one base tensor and its merged copy are alive at a time, so memory stays at the model plus one tensor.

    Args:
        weights: the base checkpoint's tensors, as vLLM's safetensors iterator yields them.
        vectors: the opened vectors with their alphas.
        out_dtype: the serving dtype; merged tensors are cast to it once.
        survival: one accumulator per vector, filled with the share of its norm the cast keeps.
        device: where to do the arithmetic (the accelerator the model loads onto); None keeps each tensor's device.

    Example:
        >>> model.load_weights(merged_weights(safetensors_weights_iterator(files), vectors, torch.bfloat16))
    """
    survival = survival if survival is not None else [Survival() for _ in vectors]
    # see `collector`: a full pass over an engine's heap costs more than a tensor's merge
    with collector.paused(), merge_threads():
        for name, tensor in weights:
            yield name, merge_tensor(name, tensor, vectors, out_dtype, survival, device)
            del tensor


def untouched(vectors: list[OpenedVector], seen: set[str]) -> list[str]:
    """Tensors some vector changes that the weights iterator never yielded (they would be silently lost)."""
    missing = []
    for item in vectors:
        for name, entry in item.vector.entries.items():
            if entry.encoding != "zero" and item.alpha != 0.0 and name not in seen:
                missing.append(f"{item.ref}: {name}")
    return missing
