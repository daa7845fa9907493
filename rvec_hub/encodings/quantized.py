"""`quantized` (lossy): a delta's largest entries at their exact positions, each value coded in a few bits.

An RL update moves many weights by a few units in their last place and leaves the rest bit-identical: the
delta is sparse, but its singular spectrum is flat, so low-rank factors spend their bytes badly. This
encoding keeps what low-rank loses, the positions, and spends little on the values, in the spirit of
BitDelta (a sign and a scale per weight matrix) and DeltaZip (sparse positions, quantized values):

- `keep`: the share of the non-zero entries kept, the largest in magnitude (1.0 keeps every one);
- `bits`: a kept value is `table[code] · scales[row]`, with a code of `bits` bits. `table` holds 2^bits
  levels fitted by Lloyd's algorithm (1-D k-means) to the tensor's kept values divided by their row's
  root mean square; each row's scale is then the least-squares fit of its coded values (stored bf16).

The payload uses the coded-block layout `packed` uses (`blocks`), per block of rows: an `index` (int64, one
row per block: last row + 1, entries, 0 escapes, position bytes and the end offsets of the position, code and
(empty) escape frames in `data`), positions as a bitmask or gaps (`blocks.position_coding`: a bitmask from
one kept entry in 16 on) and the codes bit-packed (`params["codes"]` "bitpacked": 8, 4 or 2 codes to a
byte for 1, 2, or 3 and 4 bits; a byte each above 4), each stream one zstd frame, stored raw where zstd
saves less than a quarter, as `packed` does: a server adds the vector at every start, and zstd's decoding of
a 2-bit vector's bitmask and byte-wide codes cost more than reading the larger streams (bench/README.md).
Vectors written with a byte per code (no "codes" parameter) read as before. The block walks
(`decode_blocks`, `add_blocks`) read it, with this encoding's codebook and streams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..arith import row_chunks, streaming_threads
from ..errors import FormatError, UsageError
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored
from .blocks import Layout, Streams, add_blocks, as_rows, decode_blocks, frames_of, is_bitmask, memo, position_coding, position_problems, split_entries, unzstd

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
    bitmask = position_coding(kept, rows * cols) != "gaps"  # with scales, every element is never coded
    split = split_entries("bitmask" if bitmask else "gaps")
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
        marked[np.flatnonzero(mask)] = codes.astype(np.uint16) + 1  # `split` codes the non-zero entries' positions
        positions, coded = split(marked)
        written, ends = frames_of((positions, _packed((coded - 1).astype(np.uint8), code_slot(bits))), offset)
        frames += written
        offset = ends[-1]
        index.append([b, values.size, 0, positions.size, ends[0], ends[1], ends[1]])
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
    params = {"bits": bits, "keep": keep, "density": density, "codes": "bitpacked", **({"positions": "bitmask"} if bitmask else {})}
    return Encoded("quantized", stored, params=params, stats={"rel_error": rel, "density": density, "energy": 1.0 - rel**2})


def code_slot(bits: int) -> int:
    """The bits a code of `bits` bits takes in a "bitpacked" code frame: 1, 2, 4 or 8 (a byte, unpacked)."""
    return 1 << (bits - 1).bit_length()


def _packed(codes: np.ndarray, slot: int) -> np.ndarray:
    """Codes (uint8) `8 // slot` to a byte, least significant first, the last byte's unused bits 0."""
    if slot == 8:
        return codes
    per = 8 // slot
    lanes = np.zeros(-(-codes.size // per) * per, dtype=np.uint8)
    lanes[: codes.size] = codes
    lanes = lanes.reshape(-1, per)
    out = lanes[:, 0].copy()
    for j in range(1, per):
        out |= lanes[:, j] << (j * slot)
    return out


def _unpacked(entry: TensorEntry, packed: np.ndarray, count: int, slot: int, first: int) -> np.ndarray:
    """The block's `count` codes, a byte each, from its bit-packed code frame."""
    try:
        from .._kernels import unpack_codes
    except ImportError:  # without the compiled part: the same in numpy
        per = 8 // slot
        wide = ((packed[:, None] >> (np.arange(per, dtype=np.uint8) * slot)) & ((1 << slot) - 1)).reshape(-1)
        codes, status = wide[:count], int(bool(wide[count:].any()))
    else:
        codes, status = unpack_codes(packed, count, slot)
    if status:
        raise FormatError(f"tensor {entry.name}: the quantized block from row {first} sets code bits past its {count} codes; the vector is corrupt")
    return codes


def _slot(entry: TensorEntry) -> int:
    return code_slot(entry.params["bits"]) if entry.params.get("codes") == "bitpacked" else 8


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
    return decode_blocks(entry, payload, start, stop, _table, _streams)


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    return add_blocks(entry, payload, start, stop, rows, alpha, _table, _streams, base, _layout)


def _layout(entry: TensorEntry, payload: Payload) -> Layout:
    """The compiled run's view of the tensor's blocks: its code width and checked row scales."""
    return Layout(bits=_slot(entry), scales=memo(payload, ("scales", entry.name), lambda: _row_scales(entry, payload)))


def _table(entry: TensorEntry, payload: Payload) -> torch.Tensor:
    table = payload.read(entry.keys["table"]).float()
    if not bool(torch.isfinite(table).all()):
        raise FormatError(f"tensor {entry.name}: the quantized codebook holds NaN or Inf; the vector is corrupt")
    return table


def _row_scales(entry: TensorEntry, payload: Payload) -> torch.Tensor:
    """The tensor's row scales, float32, checked finite (read once per payload, as the codebook is)."""
    scales = payload.read(entry.keys["scales"]).float()
    bad = (~torch.isfinite(scales)).nonzero()
    if bad.numel():
        raise FormatError(f"tensor {entry.name}: the quantized row scale of row {int(bad[0])} is NaN or Inf; the vector is corrupt")
    return scales


def _streams(entry: TensorEntry, payload: Payload, block: list[int], begin: int, first: int) -> Streams:
    """A block's positions, codes and row scales (float32), checked and decompressed."""
    last, count, escapes, position_bytes, end_positions, end_codes, end_escapes = block
    if escapes or end_escapes != end_codes:
        raise FormatError(f"tensor {entry.name}: the quantized block from row {first} lists escaped values, which this encoding never stores; the vector is corrupt")
    scales = memo(payload, ("scales", entry.name), lambda: _row_scales(entry, payload))[first:last]
    raw = payload.read(entry.keys["data"], begin, end_codes).numpy()
    positions = unzstd(entry, raw[: end_positions - begin], position_bytes, first)
    slot = _slot(entry)
    codes = unzstd(entry, raw[end_positions - begin :], -(-count * slot // 8), first)
    if slot < 8:
        codes = _unpacked(entry, codes, count, slot, first)
    return Streams(positions, codes, None, scales, is_bitmask(entry))


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    problems = expect_keys(entry, ROLES)
    if problems:
        return problems
    bits = entry.params.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        return [f"tensor {entry.name}: quantized bits {bits!r} is not an integer from 1 to {MAX_BITS}"]
    if entry.params.get("codes", "bitpacked") != "bitpacked":
        return [f"tensor {entry.name}: quantized codes {entry.params['codes']!r} is not a code layout rvec knows (\"bitpacked\", or absent for a byte each)"]
    rows, _ = as_rows(tuple(entry.shape))
    problems += position_problems(entry)
    problems += expect_stored(entry, payload, "table", (1 << bits,), [torch.float32])
    problems += expect_stored(entry, payload, "scales", (rows,), [torch.bfloat16])
    problems += expect_stored(entry, payload, "data", None, [torch.uint8])
    key = entry.keys["index"]
    shape = tuple(payload.shape(key))
    if len(shape) != 2 or shape[1] != _INDEX_COLUMNS or payload.dtype(key) != torch.int64:
        problems.append(f"tensor {entry.name}: stored index {key!r} has shape {list(shape)} and dtype {payload.dtype(key)}, expected [blocks, {_INDEX_COLUMNS}] int64")
    return problems


CODEC = Codec("quantized", _decode_rows, _encode, validate=_validate, add_into=_add_into, adds_from_base=True, adds_block_by_block=True)
