"""`packed`: the non-zero entries of a delta, stored exactly and entropy-coded per block of rows.

A bf16 delta of an RL update is mostly exact zeros, and its non-zero entries are a few units in the last
place of the reference weight: a few hundred distinct values cover almost all of them. Each block of rows
is stored in the coded-block layout (`blocks`): the entries' positions, per entry a code, its index in
the tensor's codebook of up to 255 frequent values (`table`, most frequent first) or 255 for a value stored
whole, and the values stored whole split into byte planes (least significant byte first).

The codes are a byte each, or with `params["codes"]` "nibbles" two a byte (low nibble first), a code of 15
or more standing as a 15 there and whole in the bytes after the nibbles, in order. A tensor takes nibbles
where they cost at most a quarter more than zstd's byte codes (`_NIBBLES_WITHIN`): zstd decodes codes at
about 1 GB/s, which takes about as long as the fused add of the whole tensor; nibbles widen at memory speed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..arith import row_chunks, streaming_threads
from ..errors import FormatError
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored, storage_dtype
from .blocks import (
    ESCAPE,
    Layout,
    Streams,
    add_blocks,
    as_rows,
    decode_blocks,
    ends_of,
    frame,
    is_bitmask,
    position_coding,
    position_problems,
    split_entries,
    unzstd,
)

ROLES = ("index", "table", "data")
_INDEX_COLUMNS = 7  # row stop, entries, escapes, position bytes, end of positions, end of codes, end of escapes
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY_INT = {2: np.int16, 4: np.int32, 8: np.int64}
_LONG = 15  # in the "nibbles" layout, the nibble of a code of 15 or more, stored whole after the nibbles
# Codes go in nibbles where that costs at most this much more than zstd's byte codes: as a raw frame, zstd
# must save a quarter to pay for its decoding (about 1 GB/s of codes; the nibbles widen at memory speed).
_NIBBLES_WITHIN = 1.25


def _bits(values: torch.Tensor) -> torch.Tensor:
    """The storage bits of each value, as a signed integer of the same width."""
    return values.view(_INT[values.element_size()])


def _codebook(blocks: list[tuple[np.ndarray, np.ndarray]], dtype: torch.dtype) -> torch.Tensor:
    """Up to 255 values (as storage bits) that occur at least twice, most frequent first."""
    if dtype.itemsize == 2:  # every 16-bit pattern has a counter
        counts = np.zeros(1 << 16, dtype=np.int64)
        for _, values in blocks:
            counts += np.bincount(values.view(np.uint16), minlength=1 << 16)
        top = np.argsort(-counts, kind="stable")[:ESCAPE]
        top = top[counts[top] >= 2]
        return torch.from_numpy(top.astype(np.uint16).view(np.int16).copy())
    # Wider values: a running tally (values, counts) merged block by block, in numpy so that threads
    # surveying other tensors run beside it.
    values, counts = np.zeros(0, dtype=blocks[0][1].dtype if blocks else np.int32), np.zeros(0, dtype=np.int64)
    for _, block in blocks:
        uniq, n = np.unique(block, return_counts=True)
        values, slot = np.unique(np.concatenate([values, uniq]), return_inverse=True)
        counts = np.bincount(slot, weights=np.concatenate([counts, n]), minlength=values.size).astype(np.int64)
        if values.size > 1 << 16:  # keep the most frequent; any codebook decodes, this one only codes worse
            top = np.lexsort((values, -counts))[: 1 << 15]
            values, counts = values[top], counts[top]
    frequent = counts >= 2
    values, counts = values[frequent], counts[frequent]
    ranked = values[np.lexsort((values, -counts))[:ESCAPE]]
    return torch.from_numpy(np.ascontiguousarray(ranked).astype(_NUMPY_INT[dtype.itemsize]))


def _coder(table: torch.Tensor) -> Any:
    """A function from storage bits to codes: a 64 K lookup table for 16-bit values, a search otherwise."""
    if table.element_size() == 2:
        lookup = np.full(1 << 16, ESCAPE, dtype=np.uint8)
        lookup[table.numpy().view(np.uint16)] = np.arange(table.numel(), dtype=np.uint8)
        return lambda values: lookup[values.view(np.uint16)]
    sorted_table, order = np.sort(table.numpy()), np.argsort(table.numpy(), kind="stable").astype(np.uint8)

    def search(values: np.ndarray) -> np.ndarray:
        if not sorted_table.size:
            return np.full(values.shape, ESCAPE, dtype=np.uint8)
        slot = np.minimum(np.searchsorted(sorted_table, values), sorted_table.size - 1)
        return np.where(sorted_table[slot] == values, order[slot], np.uint8(ESCAPE)).astype(np.uint8)

    return search


def _encode(delta: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16, rows_per_block: int | None = None, **_: object) -> Encoded:
    # Every step is a memory-bound pass over a block; more threads only wait on each other (see streaming_threads).
    with streaming_threads():
        return _encode_blocks(delta, dtype, rows_per_block)


def _encode_blocks(delta: torch.Tensor, dtype: torch.dtype, rows_per_block: int | None) -> Encoded:
    shape = tuple(delta.shape)
    rows, cols = as_rows(shape)
    flat = delta.reshape(rows, cols)
    # By default a block is one chunk of the streaming passes, so each of their reads decodes one block.
    step = rows_per_block or max(1, row_chunks((rows, cols))[0][1])
    chunks = [(a, min(rows, a + step)) for a in range(0, rows, step)]
    stored_bits, err_sq = [], 0.0
    for a, b in chunks:
        values = flat[a:b].to(dtype)
        err_sq += _rounding_error_sq(flat[a:b], values)
        stored_bits.append(_bits(values).reshape(-1).numpy())
    # Mostly non-zero, a code per element (zero is then one of the values) costs less than positions and codes.
    coding = position_coding(sum(int(np.count_nonzero(bits)) for bits in stored_bits), rows * cols)
    every = coding == "every"
    split = split_entries(coding)
    blocks = [(np.zeros(0, dtype=np.uint8), bits) if every else split(bits) for bits in stored_bits]
    del stored_bits
    table = _codebook(blocks, dtype)
    coder = _coder(table)
    codes = [coder(values) for _, values in blocks]
    code_frames = [frame(block) for block in codes]
    coded_bytes = sum(map(len, code_frames))
    nibbles = coded_bytes > 0 and sum(map(_nibble_bytes, codes)) <= _NIBBLES_WITHIN * coded_bytes
    if nibbles:
        code_frames = [frame(_nibbles(block), raw_above=0.0) for block in codes]  # nibbles leave zstd little to take
    index, frames, nnz, offset = [], [], 0, 0
    for (_, b), (positions, values), block, code_frame in zip(chunks, blocks, codes, code_frames):
        escaped = values[block == ESCAPE]
        planes = escaped.view(np.uint8).reshape(-1, dtype.itemsize).T
        written = [frame(positions), code_frame, frame(planes)]
        ends = ends_of(written, offset)
        frames += written
        offset = ends[-1]
        index.append([b, values.size, escaped.size, positions.size, *ends])
        nnz += int(np.count_nonzero(values)) if every else values.size
    data = torch.frombuffer(bytearray(b"".join(frames)), dtype=torch.uint8) if offset else torch.zeros(0, dtype=torch.uint8)
    stored = {
        "index": torch.tensor(index, dtype=torch.int64).reshape(-1, _INDEX_COLUMNS),
        "table": table.view(dtype) if table.numel() else torch.zeros(0, dtype=dtype),  # numpy gives an empty array stride 0
        "data": data,
    }
    norm = torch.linalg.vector_norm(delta).item()
    rel = math.sqrt(err_sq) / norm if norm else 0.0
    density = nnz / max(1, rows * cols)
    params: dict[str, Any] = {"density": density, **({"positions": "bitmask"} if coding == "bitmask" else {}), **({"codes": "nibbles"} if nibbles else {})}
    return Encoded("packed", stored, params=params, stats={"rel_error": rel, "density": density, "energy": 1.0 - rel**2})


def _nibble_bytes(codes: np.ndarray) -> int:
    """The bytes of `codes` in the "nibbles" layout (`_nibbles`)."""
    return (codes.size + 1) // 2 + int(np.count_nonzero(codes >= _LONG))


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """Codes (uint8) in the "nibbles" layout: two a byte, low nibble first, a code of 15 or more as 15 there
    and whole in the bytes after them, in order."""
    short = np.minimum(codes, _LONG)
    if short.size % 2:
        short = np.append(short, np.uint8(0))
    return np.concatenate([short[0::2] | short[1::2] << 4, codes[codes >= _LONG]])


def _unnibbled(entry: TensorEntry, data: np.ndarray, count: int, first: int) -> np.ndarray:
    """The block's `count` codes, a byte each, from its code frame in the "nibbles" layout."""
    try:
        from .._kernels import unnibble_codes
    except ImportError:  # without the compiled part: the same in numpy
        codes, status = _unnibbled_numpy(data, count)
    else:
        codes, status = unnibble_codes(data, count)
    if status:
        raise FormatError(f"tensor {entry.name}: the packed block from row {first} {_NIBBLE_PROBLEMS[status]}; the vector is corrupt")
    return codes


def _unnibbled_numpy(data: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """`_kernels.unnibble_codes` in numpy."""
    half = (count + 1) // 2
    if data.size < half:
        return np.zeros(0, dtype=np.uint8), 1
    codes = np.stack([data[:half] & 15, data[:half] >> 4], axis=1).reshape(-1)
    if codes[count:].any():
        return codes, 2
    codes, longs = codes[:count], data[half:]
    long = codes == _LONG
    n_long = int(np.count_nonzero(long))
    if n_long != longs.size:
        return codes, 3 if n_long > longs.size else 4
    codes[long] = longs
    return codes, 0


_NIBBLE_PROBLEMS = {
    1: "holds fewer code bytes than its codes need",
    2: "sets a code nibble past its last code",
    3: "names more long codes than it holds",
    4: "leaves long codes unused",
}


def _rounding_error_sq(exact: torch.Tensor, stored: torch.Tensor) -> float:
    """‖exact − stored‖², skipped when the float32 values hold no bits below the storage precision."""
    if stored.dtype == torch.float32 or (stored.dtype == torch.bfloat16 and not bool((exact.view(torch.int32) & 0xFFFF).any())):
        return 0.0
    return torch.linalg.vector_norm(exact - stored.float()).item() ** 2


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    return decode_blocks(entry, payload, start, stop, _table, _streams)


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    return add_blocks(entry, payload, start, stop, rows, alpha, _table, _streams, base, _layout)


def _layout(entry: TensorEntry, payload: Payload) -> Layout | None:
    """The compiled run's view of the tensor's blocks; None for values neither bf16 nor float32."""
    escape_bytes = {torch.bfloat16: 2, torch.float32: 4}.get(storage_dtype(entry))
    if escape_bytes is None:
        return None
    nibbles = entry.params.get("codes") == "nibbles"
    return Layout(bits=4 if nibbles else 8, nibbles=nibbles, escape_bytes=escape_bytes)


def _table(entry: TensorEntry, payload: Payload) -> torch.Tensor:
    return payload.read(entry.keys["table"]).float()


def _streams(entry: TensorEntry, payload: Payload, block: list[int], begin: int, first_row: int) -> Streams:
    """A block's positions, codes and escaped values (float32), decompressed."""
    _, count, escapes, position_bytes, end_positions, end_codes, end_escapes = block
    dtype = storage_dtype(entry)
    raw = payload.read(entry.keys["data"], begin, end_escapes).numpy()
    positions = unzstd(entry, raw[: end_positions - begin], position_bytes, first_row)
    if entry.params.get("codes") == "nibbles":  # at most a byte and a half per code
        coded = unzstd(entry, raw[end_positions - begin : end_codes - begin], count + (count + 1) // 2, first_row, at_most=True)
        codes = _unnibbled(entry, coded, count, first_row)
    else:
        codes = unzstd(entry, raw[end_positions - begin : end_codes - begin], count, first_row)
    planes = unzstd(entry, raw[end_codes - begin :], escapes * dtype.itemsize, first_row)
    return Streams(positions, codes, _escaped(planes, escapes, dtype), bitmask=is_bitmask(entry))


def _escaped(planes: np.ndarray, escapes: int, dtype: torch.dtype) -> torch.Tensor:
    """The escaped values of a block, float32, from their byte planes (least significant first)."""
    if dtype == torch.bfloat16:  # a bf16 value is the high half of its float32
        return torch.from_numpy((planes[:escapes].astype(np.uint32) << 16 | planes[escapes:].astype(np.uint32) << 24).view(np.float32))
    if not escapes:
        return torch.zeros(0, dtype=torch.float32)
    return torch.from_numpy(planes.reshape(dtype.itemsize, escapes).T.copy()).view(dtype).reshape(-1).float()


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    problems = expect_keys(entry, ROLES)
    if problems:
        return problems
    dtype = storage_dtype(entry)
    if dtype is None or dtype.itemsize not in _INT:
        return [f"tensor {entry.name}: packed stores {entry.dtype!r} values, which it cannot code"]
    problems += expect_stored(entry, payload, "table", None, [dtype])
    problems += expect_stored(entry, payload, "data", None, [torch.uint8])
    key = entry.keys["index"]
    shape = tuple(payload.shape(key))
    if len(shape) != 2 or shape[1] != _INDEX_COLUMNS or payload.dtype(key) != torch.int64:
        problems.append(f"tensor {entry.name}: stored index {key!r} has shape {list(shape)} and dtype {payload.dtype(key)}, expected [blocks, {_INDEX_COLUMNS}] int64")
    elif not problems and payload.shape(entry.keys["table"])[0] > ESCAPE:
        problems.append(f"tensor {entry.name}: the packed codebook holds {payload.shape(entry.keys['table'])[0]} values, at most {ESCAPE} are allowed")
    if entry.params.get("codes", "nibbles") != "nibbles":
        problems.append(f"tensor {entry.name}: packed codes {entry.params['codes']!r} is not a code layout rvec knows (\"nibbles\", or absent for a byte each)")
    return problems + position_problems(entry)


CODEC = Codec("packed", _decode_rows, _encode, validate=_validate, add_into=_add_into, adds_from_base=True, adds_block_by_block=True)
