"""`quantized` (lossy): a delta's largest entries at their exact positions, each value coded in a few bits.

An RL update moves many weights by a few units in their last place and leaves the rest bit-identical: the
delta is sparse, but its singular spectrum is flat, so low-rank factors spend their bytes badly. This
encoding keeps what low-rank loses, the positions, and spends little on the values, in the spirit of
BitDelta (a sign and a scale per weight matrix) and DeltaZip (sparse positions, quantized values):

- `keep`: the share of the non-zero entries kept, the largest in magnitude (1.0 keeps every one);
- `bits`: a kept value is `table[code] · scales[row]`, with a code of `bits` bits. `table` holds 2^bits
  levels fitted by Lloyd's algorithm (1-D k-means) to the tensor's kept values divided by their row's
  root mean square; each row's scale is then the least-squares fit of its coded values (stored bf16).

The payload is laid out as `packed` lays out its own, per block of rows: an `index` (int64, one row per
block: last row + 1, entries, 0 escapes, gap bytes and the end offsets of the gap, code and (empty)
escape frames in `data`), gap-coded positions and one byte per code, each stream one zstd frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .. import fused
from ..arith import row_chunks, streaming_threads
from ..errors import FormatError, UsageError
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored
from .packed import _checked_index, _compressor, _entries, _unzstd, as_rows, blocks_in

ROLES = ("index", "table", "scales", "data")
MAX_BITS = 8
_SAMPLE = 1 << 20  # kept values the codebook is fitted on, at most
_LLOYD_STEPS = 25
_INDEX_COLUMNS = 7


def _encode(delta: torch.Tensor, *, bits: int, keep: float = 1.0, rows_per_block: int | None = None, **_: object) -> Encoded:
    if not (isinstance(bits, int) and 1 <= bits <= MAX_BITS):
        raise UsageError(f"bits {bits!r} must be an integer from 1 to {MAX_BITS}")
    if not 0.0 < keep <= 1.0:
        raise UsageError(f"keep {keep} is outside (0, 1]; 0.5 keeps the larger half of the non-zero entries")
    with streaming_threads():
        return _encode_blocks(delta.float(), bits, keep, rows_per_block)


def _encode_blocks(delta: torch.Tensor, bits: int, keep: float, rows_per_block: int | None) -> Encoded:
    rows, cols = as_rows(tuple(delta.shape))
    flat = delta.reshape(rows, cols).numpy()
    step = rows_per_block or max(1, row_chunks((rows, cols))[0][1])
    chunks = [(a, min(rows, a + step)) for a in range(0, rows, step)]
    cut = _cut(flat, chunks, keep)
    kept = cut[2]
    table = _codebook(flat, chunks, cut, bits)
    bounds = (table[1:] + table[:-1]) / 2
    scales = np.zeros(rows, dtype=np.float32)
    index, frames, offset, err_sq = [], [], 0, 0.0
    for (a, b), mask in zip(chunks, _masks(flat, chunks, cut)):
        block = flat[a:b]
        values = block[mask]
        row = np.repeat(np.arange(b - a), np.count_nonzero(mask, axis=1))
        codes = np.searchsorted(bounds, values / _row_rms(values, row, b - a)[row]).astype(np.uint8)
        level = table[codes]
        # Least-squares scale per row for the chosen codes, rounded to its stored precision.
        fit = np.bincount(row, values * level, b - a) / np.maximum(np.bincount(row, level * level, b - a), np.finfo(np.float32).tiny)
        scales[a:b] = torch.from_numpy(fit.astype(np.float32)).to(torch.bfloat16).float().numpy()
        restored = level * scales[a:b][row]
        err_sq += float(np.square(values - restored, dtype=np.float64).sum()) + float(np.square(block[~mask], dtype=np.float64).sum())
        marked = np.zeros(block.size, dtype=np.uint16)
        marked[np.flatnonzero(mask)] = codes.astype(np.uint16) + 1  # `_entries` gap-codes the non-zero entries
        gaps, coded = _entries(marked)
        ends = []
        for stream in (gaps, (coded - 1).astype(np.uint8)):
            frame = _compressor().compress(np.ascontiguousarray(stream).tobytes()) if stream.size else b""
            frames.append(frame)
            offset += len(frame)
            ends.append(offset)
        index.append([b, values.size, 0, gaps.size, ends[0], ends[1], ends[1]])
    data = torch.frombuffer(bytearray(b"".join(frames)), dtype=torch.uint8) if offset else torch.zeros(0, dtype=torch.uint8)
    stored = {
        "index": torch.tensor(index, dtype=torch.int64).reshape(-1, _INDEX_COLUMNS),
        "table": torch.from_numpy(table.astype(np.float32)),
        "scales": torch.from_numpy(scales).to(torch.bfloat16),
        "data": data,
    }
    norm = float(np.linalg.norm(flat))
    rel = math.sqrt(err_sq) / norm if norm else 0.0
    density = kept / max(1, rows * cols)
    return Encoded("quantized", stored, params={"bits": bits, "keep": keep, "density": density}, stats={"rel_error": rel, "density": density, "energy": 1.0 - rel**2})


def _cut(flat: np.ndarray, chunks: list[tuple[int, int]], keep: float) -> tuple[float, int, int]:
    """(magnitude m, entries of magnitude m kept, entries kept) for keeping the `keep` share of the non-zeros.

    Every entry above m is kept, and the first ones equal to m in row-major order until the share is met:
    a delta of a few ULPs has many equal magnitudes.
    """
    magnitudes = np.concatenate([np.abs(flat[a:b][flat[a:b] != 0]) for a, b in chunks] or [np.zeros(0, np.float32)])
    if not magnitudes.size:
        return math.inf, 0, 0
    target = max(1, int(round(keep * magnitudes.size)))
    drop = magnitudes.size - target
    threshold = float(np.partition(magnitudes, drop)[drop])
    return threshold, target - int(np.count_nonzero(magnitudes > threshold)), target


def _masks(flat: np.ndarray, chunks: list[tuple[int, int]], cut: tuple[float, int, int]) -> Iterator[np.ndarray]:
    """Per block of rows, which entries are kept."""
    threshold, ties, _ = cut
    for a, b in chunks:
        magnitude = np.abs(flat[a:b])
        mask = magnitude > threshold
        tied = np.flatnonzero(magnitude == threshold)[:ties]
        mask.reshape(-1)[tied] = True
        ties -= tied.size
        yield mask


def _row_rms(values: np.ndarray, row: np.ndarray, rows: int) -> np.ndarray:
    """Root mean square of each row's kept values (1 where a row keeps none)."""
    count = np.bincount(row, minlength=rows)
    rms = np.sqrt(np.bincount(row, values * values, rows) / np.maximum(count, 1))
    return np.where(rms > 0, rms, 1.0).astype(np.float32)


def _codebook(flat: np.ndarray, chunks: list[tuple[int, int]], cut: tuple[float, int, int], bits: int) -> np.ndarray:
    """2^bits levels, ascending, fitted by Lloyd's algorithm to an even sample of the row-normalised kept values."""
    stride = max(1, -(-cut[2] // _SAMPLE))
    parts, skip = [], 0
    for (a, b), mask in zip(chunks, _masks(flat, chunks, cut)):
        block = flat[a:b]
        values = block[mask]
        row = np.repeat(np.arange(b - a), np.count_nonzero(mask, axis=1))
        normalised = values / _row_rms(values, row, b - a)[row]
        parts.append(normalised[skip::stride])
        skip = (skip - values.size) % stride
    sample = np.sort(np.concatenate(parts or [np.zeros(0, np.float32)]).astype(np.float64))
    levels = 1 << bits
    if not sample.size:
        return np.linspace(-1.0, 1.0, levels)
    table = np.quantile(sample, (np.arange(levels) + 0.5) / levels)
    running = np.r_[0.0, np.cumsum(sample)]
    for _ in range(_LLOYD_STEPS):
        cells = np.r_[0, np.searchsorted(sample, (table[1:] + table[:-1]) / 2), sample.size]
        counts = np.diff(cells)
        sums = np.diff(running[cells])
        table = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), table))  # an empty cell keeps its level
    return table


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    shape = tuple(entry.shape)
    rows, cols = as_rows(shape)
    blocks = _checked_index(entry, payload, rows, cols)
    table = _table(entry, payload)
    out = torch.empty(stop - start, cols, dtype=torch.float32)
    for block, first, begin, lo, hi in blocks_in(blocks, start, stop):
        target = out[lo - start : hi - start]
        inside = lo == first and hi == block[0]
        buf = target if inside else torch.empty(block[0] - first, cols, dtype=torch.float32)
        _decode_block(entry, payload, block, begin, first, table, buf)
        if not inside:
            target.copy_(buf[lo - first : hi - first])
    return out.reshape((stop - start, *shape[1:])) if shape else out.reshape(())


def _table(entry: TensorEntry, payload: Payload) -> torch.Tensor:
    table = payload.read(entry.keys["table"]).float()
    if not bool(torch.isfinite(table).all()):
        raise FormatError(f"tensor {entry.name}: the quantized codebook holds NaN or Inf; the vector is corrupt")
    return table


def _streams(entry: TensorEntry, payload: Payload, block: list[int], begin: int, first: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A block's gap bytes, codes and row scales (float32), checked and decompressed."""
    last, count, escapes, gap_bytes, end_gaps, end_codes, end_escapes = block
    if escapes or end_escapes != end_codes:
        raise FormatError(f"tensor {entry.name}: the quantized block from row {first} lists escaped values, which this encoding never stores; the vector is corrupt")
    scales = payload.read(entry.keys["scales"], first, last).float()
    if not bool(torch.isfinite(scales).all()):
        raise FormatError(f"tensor {entry.name}: a quantized row scale from row {first} is NaN or Inf; the vector is corrupt")
    raw = payload.read(entry.keys["data"], begin, end_codes)
    gaps = _unzstd(entry, raw[: end_gaps - begin], gap_bytes, first)
    codes = _unzstd(entry, raw[end_gaps - begin :], count, first)
    return gaps, codes, scales


def _decode_block(entry: TensorEntry, payload: Payload, block: list[int], begin: int, first: int, table: torch.Tensor, out: torch.Tensor) -> None:
    gaps, codes, scales = _streams(entry, payload, block, begin, first)
    problem = scatter_scaled(gaps, codes, table, scales, out)
    if problem:
        raise FormatError(f"tensor {entry.name}: the quantized block from row {first} {problem}; the vector is corrupt")


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float) -> tuple[int, float, float]:
    """α·Δ added to bf16 `rows` (rows `[start, stop)`) entry by entry, straight from each block's streams."""
    rows_n, cols = as_rows(tuple(entry.shape))
    blocks = _checked_index(entry, payload, rows_n, cols)
    table = _table(entry, payload)
    flat = rows.reshape(stop - start, cols)
    status, err_sq, norm_sq = 0, 0.0, 0.0
    for block, first, begin, lo, hi in blocks_in(blocks, start, stop):
        target = flat[lo - start : hi - start]
        if lo == first and hi == block[0]:
            gaps, codes, scales = _streams(entry, payload, block, begin, first)
            step, e, n = fused.add_coded(target, gaps, codes, table.numpy(), np.zeros(0, dtype=np.float32), alpha, scales.numpy())
            if 0 < step < fused.BAD_VALUE:
                raise FormatError(f"tensor {entry.name}: the quantized block from row {first} {_STATUS.get(step, 'is corrupt')}; the vector is corrupt")
        else:  # a block the range cuts: decoded whole, its rows in range added
            buf = torch.empty(block[0] - first, cols, dtype=torch.float32)
            _decode_block(entry, payload, block, begin, first, table, buf)
            step, e, n = fused.add_dense(target, buf[lo - first : hi - first], alpha)
        status, err_sq, norm_sq = max(status, step), err_sq + e, norm_sq + n
    return status, err_sq, norm_sq


_STATUS = {
    1: "places an entry past its last element",
    2: "has more gaps than codes",
    3: "uses a code outside its codebook",
    4: "uses a code outside its codebook",  # the escape code, which only packed gives a value
    5: "leaves codes unused",
}


def scatter_scaled(gaps: np.ndarray, codes: np.ndarray, table: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> str | None:
    """Fill the 2-D float32 block `out` with zeros and `table[code] · scales[row]` at each gap-coded position.

    Returns what is wrong with the streams, or None. Compiled by numba when it is installed (one pass over
    the entries); otherwise the same in torch operations.
    """
    kernel = _numba_kernel()
    if kernel is None:
        return _scatter_torch(gaps, codes, table, scales, out)
    return _STATUS.get(int(kernel(gaps, codes, table.numpy(), scales.numpy(), out.shape[1], out.reshape(-1).numpy())))


def _scatter_torch(gaps: np.ndarray, codes: np.ndarray, table: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> str | None:
    out.zero_()
    steps = torch.from_numpy(gaps.astype(np.int64))
    filler = steps == 0
    position = (torch.cumsum(torch.where(filler, 255, steps), 0) - 1)[~filler]
    code = torch.from_numpy(codes.astype(np.int64))
    if position.numel() != code.numel():
        return _STATUS[2] if position.numel() > code.numel() else _STATUS[5]
    if position.numel() and int(position[-1]) >= out.numel():
        return _STATUS[1]
    if code.numel() and int(code.max()) >= table.numel():
        return _STATUS[3]
    out.view(-1)[position] = table[code] * scales[position // out.shape[1]]
    return None


@lru_cache(maxsize=1)
def _numba_kernel() -> Any:
    """The compiled scatter, or None without numba: `rvec_hub._kernels.coded` (packed's and the fused
    add's walk) with row scales and no escaped values."""
    try:
        from .._kernels import coded
    except ImportError:
        return None

    def kernel(gaps: np.ndarray, codes: np.ndarray, table: np.ndarray, scales: np.ndarray, cols: int, out: np.ndarray) -> int:
        return coded(gaps, codes, table, None, scales, cols, out, 0.0)[0]

    return kernel


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    problems = expect_keys(entry, ROLES)
    if problems:
        return problems
    bits = entry.params.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        return [f"tensor {entry.name}: quantized bits {bits!r} is not an integer from 1 to {MAX_BITS}"]
    rows, _ = as_rows(tuple(entry.shape))
    problems += expect_stored(entry, payload, "table", (1 << bits,), [torch.float32])
    problems += expect_stored(entry, payload, "scales", (rows,), [torch.bfloat16])
    problems += expect_stored(entry, payload, "data", None, [torch.uint8])
    key = entry.keys["index"]
    shape = tuple(payload.shape(key))
    if len(shape) != 2 or shape[1] != _INDEX_COLUMNS or payload.dtype(key) != torch.int64:
        problems.append(f"tensor {entry.name}: stored index {key!r} has shape {list(shape)} and dtype {payload.dtype(key)}, expected [blocks, {_INDEX_COLUMNS}] int64")
    return problems


CODEC = Codec("quantized", _decode_rows, _encode, validate=_validate, add_into=_add_into)
