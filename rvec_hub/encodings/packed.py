"""`packed`: the non-zero entries of a delta, stored exactly and entropy-coded per block of rows.

A bf16 delta of an RL update is mostly exact zeros, and its non-zero entries are a few units in the last
place of the reference weight: a few hundred distinct values cover almost all of them. Each block of rows
(`row_chunks`, about a million elements) is stored as three zstd frames, so a row range decodes only the
blocks it touches:

- positions, flattened row-major: a `bitmask`, one bit per element (least significant first), when at
  least one element in 16 is an entry; otherwise `gaps`, per entry its distance from the previous one in the
  block as one byte, where a 0 byte adds 255 to the next distance (for runs of zeros longer than 255). Both
  cost about the entropy of the positions; the bitmask decodes sixteen elements per step (`_ckernels.c`),
  where the gaps are a serial walk of a few nanoseconds per entry;
- `codes`: per non-zero entry, one byte: its index in the tensor's codebook of up to 255 frequent values
  (`table`), or 255 for a value stored whole;
- `escapes`: the values stored whole, split into byte planes (least significant byte first).

zstd runs its optimal parser (`btopt`) with a one-step search: these streams are close to independent
symbols with a few very frequent ones, where Huffman-coded literals alone lose up to 15 % to the entropy
and the parser's cheap short repeats win it back (on a SmolLM2 fine-tune delta: 0.80 of ZipNN's bytes
against 0.90 with the fast strategy); a deeper search costs time and gains nothing on these streams.
A stream zstd shrinks by less than a quarter (a bitmask with a quarter of its bits set: by a fifth) is
stored in a frame of raw blocks instead, which decodes at memory speed: decoding that bitmask costs as much
as adding its entries, for a fifth of its bytes.
The tensor's `index` (int64, one row per block) holds the block's last row + 1, entry, escape and position
byte counts, and the end offsets of its three frames in `data` (uint8); `params["positions"]` is
"bitmask" for a bitmask (absent: gaps).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .. import fused
from ..arith import row_chunks, streaming_threads
from ..errors import FormatError
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored, storage_dtype

ROLES = ("index", "table", "data")
ESCAPE = 255
_FILLER = 255
_EVERY_ELEMENT_ABOVE = 0.65  # share of non-zeros above which coding every element is smaller (measured)
# Share of entries from which positions are a bitmask: gaps are up to 10 % smaller below it (zstd, measured
# on random positions), and their walk then costs less than the bitmask's pass over every element.
BITMASK_FROM = 1 / 16
_RAW_ABOVE = 0.75  # a stream compressed to more than this share of its bytes is stored raw
_RAW_BLOCK = 1 << 17  # zstd's largest block
_INDEX_COLUMNS = 7  # row stop, entries, escapes, position bytes, end of positions, end of codes, end of escapes
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY_INT = {2: np.int16, 4: np.int32, 8: np.int64}


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view the tensor is stored as: a vector is a column, a scalar one element."""
    if not shape:
        return 1, 1
    return shape[0], math.prod(shape[1:])


_local = threading.local()


def _compressor() -> Any:
    """This thread's zstd compressor (one is not safe to share between threads)."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        import zstandard

        params = zstandard.ZstdCompressionParameters(
            window_log=20, hash_log=14, chain_log=14, search_log=1, min_match=3, target_length=32,
            strategy=zstandard.STRATEGY_BTOPT, write_checksum=False, write_content_size=True,
        )
        compressor = _local.compressor = zstandard.ZstdCompressor(compression_params=params)
    return compressor


def frame(stream: np.ndarray, raw_above: float = _RAW_ABOVE) -> bytes:
    """One stream as a zstd frame: compressed, or raw blocks where compression leaves more than `raw_above`
    of its bytes (by default, saves less than a quarter); b"" for an empty stream."""
    if not stream.size:
        return b""
    raw = np.ascontiguousarray(stream).tobytes()
    compressed = _compressor().compress(raw)
    return compressed if len(compressed) <= raw_above * len(raw) else _stored_frame(raw)


def _stored_frame(data: bytes) -> bytes:
    """`data` as a zstd frame of raw blocks (RFC 8878: single segment, 4- or 8-byte content size, no checksum)."""
    size = len(data)
    header = b"\x28\xb5\x2f\xfd" + (bytes([0xA0]) + size.to_bytes(4, "little") if size < 1 << 32 else bytes([0xE0]) + size.to_bytes(8, "little"))
    blocks = [header]
    for at in range(0, max(size, 1), _RAW_BLOCK):
        chunk = data[at : at + _RAW_BLOCK]
        blocks.append((len(chunk) << 3 | int(at + _RAW_BLOCK >= size)).to_bytes(3, "little") + chunk)  # raw block, last flag
    return b"".join(blocks)


def _decompressor() -> Any:
    """This thread's zstd decompressor."""
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        import zstandard

        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


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


def _entries(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gap bytes, values) of one block's flattened storage bits: every entry whose bits are not all zero."""
    where = np.flatnonzero(bits)
    gaps = np.diff(where, prepend=-1)
    if gaps.size and int(gaps.max()) > _FILLER:
        fillers = (gaps - 1) // _FILLER
        out = np.zeros(int(fillers.sum()) + gaps.size, dtype=np.int64)
        out[np.cumsum(fillers + 1) - 1] = gaps - _FILLER * fillers
        gaps = out
    return gaps.astype(np.uint8), bits[where]


def _bitmask_entries(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bitmask, values) of one block's flattened storage bits, as `_entries`."""
    nonzero = bits != 0
    return np.packbits(nonzero, bitorder="little"), bits[nonzero]


def position_coding(entries: int, elements: int) -> str:
    """How a tensor with this many entries stores their positions: "every" element coded, "bitmask" or "gaps"."""
    if entries > _EVERY_ELEMENT_ABOVE * elements:
        return "every"
    return "bitmask" if entries >= BITMASK_FROM * elements else "gaps"


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
    split = _bitmask_entries if coding == "bitmask" else _entries
    blocks = [(np.zeros(0, dtype=np.uint8), bits) if every else split(bits) for bits in stored_bits]
    del stored_bits
    table = _codebook(blocks, dtype)
    coder = _coder(table)
    index, frames, nnz, offset = [], [], 0, 0
    for (_, b), (positions, values) in zip(chunks, blocks):
        codes = coder(values)
        escaped = values[codes == ESCAPE]
        planes = escaped.view(np.uint8).reshape(-1, dtype.itemsize).T
        ends = []
        for stream in (positions, codes, planes):
            frames.append(frame(stream))
            offset += len(frames[-1])
            ends.append(offset)
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
    params: dict[str, Any] = {"density": density, **({"positions": "bitmask"} if coding == "bitmask" else {})}
    return Encoded("packed", stored, params=params, stats={"rel_error": rel, "density": density, "energy": 1.0 - rel**2})


def _rounding_error_sq(exact: torch.Tensor, stored: torch.Tensor) -> float:
    """‖exact − stored‖², skipped when the float32 values hold no bits below the storage precision."""
    if stored.dtype == torch.float32 or (stored.dtype == torch.bfloat16 and not bool((exact.view(torch.int32) & 0xFFFF).any())):
        return 0.0
    return torch.linalg.vector_norm(exact - stored.float()).item() ** 2


@dataclass(frozen=True)
class Streams:
    """One block's streams, decompressed: positions (gap bytes, or with `bitmask` a bit per element) and
    codes (uint8), escaped values and row scales (float32; None for an encoding without them)."""

    positions: np.ndarray
    codes: np.ndarray
    escaped: torch.Tensor | None
    scales: torch.Tensor | None = None
    bitmask: bool = False


# (entry, payload, its index row, its first byte in `data`, its first row) → the block's checked streams
StreamReader = Callable[[TensorEntry, Payload, list[int], int, int], Streams]
TableReader = Callable[[TensorEntry, Payload], torch.Tensor]  # the checked codebook, float32


def decode_blocks(entry: TensorEntry, payload: Payload, start: int, stop: int, table: TableReader, streams: StreamReader) -> torch.Tensor:
    """Rows `[start, stop)`, float32, of a tensor stored in coded blocks (`packed`, `quantized`): each block
    it touches decoded from `streams`."""
    shape = tuple(entry.shape)
    rows, cols = as_rows(shape)
    blocks = _checked_index(entry, payload, rows, cols)
    codebook = _memo(payload, ("table", entry.name), lambda: table(entry, payload))
    out = torch.empty(stop - start, cols, dtype=torch.float32)
    for block, first, begin, lo, hi in blocks_in(blocks, start, stop):
        target = out[lo - start : hi - start]
        inside = lo == first and hi == block[0]
        buf = target if inside else torch.empty(block[0] - first, cols, dtype=torch.float32)
        _decode_block(entry, first, codebook, streams(entry, payload, block, begin, first), buf)
        if not inside:
            target.copy_(buf[lo - first : hi - first])
    return out.reshape((stop - start, *shape[1:])) if shape else out.reshape(())


def add_blocks(
    entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, table: TableReader,
    streams: StreamReader, base: torch.Tensor | None = None,
) -> tuple[int, float, float]:
    """α·Δ added to bf16 `rows` (rows `[start, stop)`) of a tensor stored in coded blocks, entry by entry
    straight from each block's `streams`; a block the range cuts is decoded whole and its rows in range added.
    With contiguous bf16 `base` rows, `rows` gets base + α·Δ: the kernel writes every weight of a block."""
    rows_n, cols = as_rows(tuple(entry.shape))
    blocks = _checked_index(entry, payload, rows_n, cols)
    codebook = _memo(payload, ("table", entry.name), lambda: table(entry, payload))
    values = codebook.numpy()
    flat = rows.reshape(stop - start, cols)
    source = None if base is None else base.reshape(stop - start, cols)
    status, err_sq, norm_sq = 0, 0.0, 0.0
    for block, first, begin, lo, hi in blocks_in(blocks, start, stop):
        target = flat[lo - start : hi - start]
        origin = None if source is None else source[lo - start : hi - start]
        coded = streams(entry, payload, block, begin, first)
        if lo == first and hi == block[0]:
            escaped = None if coded.escaped is None else coded.escaped.numpy()
            scales = None if coded.scales is None else coded.scales.numpy()
            step, e, n = fused.add_coded(target, coded.positions, coded.codes, values, escaped, alpha, scales, coded.bitmask, origin)
            if 0 < step < fused.BAD_VALUE:
                raise _corrupt_block(entry, first, _problem(step, coded.escaped))
        else:
            if origin is not None:
                target.copy_(origin)
            buf = torch.empty(block[0] - first, cols, dtype=torch.float32)
            _decode_block(entry, first, codebook, coded, buf)
            step, e, n = fused.add_dense(target, buf[lo - first : hi - first], alpha)
        status, err_sq, norm_sq = max(status, step), err_sq + e, norm_sq + n
    return status, err_sq, norm_sq



def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    return decode_blocks(entry, payload, start, stop, _table, _streams)


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    return add_blocks(entry, payload, start, stop, rows, alpha, _table, _streams, base)


def _table(entry: TensorEntry, payload: Payload) -> torch.Tensor:
    return payload.read(entry.keys["table"]).float()


def blocks_in(blocks: list[list[int]], start: int, stop: int) -> Iterator[tuple[list[int], int, int, int, int]]:
    """Each block holding rows of `[start, stop)`: (its index row, its first row, its first byte in `data`,
    and `lo`, `hi`, the rows of the range it holds)."""
    first, begin = 0, 0
    for block in blocks:
        last = block[0]
        if last > start and first < stop:
            yield block, first, begin, max(first, start), min(last, stop)
        first, begin = last, block[6]
        if first >= stop:
            return


_MEMO: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def _memo(payload: Payload, key: tuple[str, str], compute: Callable[[], Any]) -> Any:
    """`compute()`, once per payload and key: a server adds a tensor block by block, and each call needs the
    tensor's checked index and codebook. A payload that takes no weak references computes every time."""
    try:
        known = _MEMO.setdefault(payload, {})
    except TypeError:
        return compute()
    if key not in known:
        known[key] = compute()
    return known[key]


def _checked_index(entry: TensorEntry, payload: Payload, rows: int, cols: int) -> list[list[int]]:
    """The block index, refused unless its rows and frame offsets rise to the tensor's and the data's ends
    (checked once per payload)."""
    return _memo(payload, ("index", entry.name), lambda: _check_index(entry, payload, rows, cols))


def _check_index(entry: TensorEntry, payload: Payload, rows: int, cols: int) -> list[list[int]]:
    blocks = payload.read(entry.keys["index"]).tolist()
    size = payload.shape(entry.keys["data"])[0]
    bitmask = is_bitmask(entry)
    first, offset, problem = 0, 0, None
    for last, count, escapes, position_bytes, end_positions, end_codes, end_escapes in blocks:
        elements = (last - first) * cols
        if bitmask:
            positions_fit = position_bytes == -(-elements // 8)
        else:
            positions_fit = not (count > position_bytes and position_bytes)
        if not first < last <= rows:
            problem = f"lists rows {first}-{last} of a tensor with {rows}"
        elif min(count, escapes, position_bytes) < 0 or escapes > count or count > elements or not positions_fit:
            kind = "bitmask" if bitmask else "gap"
            problem = f"counts {count} entries, {escapes} escapes and {position_bytes} {kind} bytes in rows {first}-{last}"
        elif not offset <= end_positions <= end_codes <= end_escapes <= size:
            problem = f"places the frames of rows {first}-{last} outside the {size} stored bytes"
        if problem:
            break
        first, offset = last, end_escapes
    if problem is None and (first != rows or offset != size):
        problem = f"covers {first} of {rows} rows and {offset} of {size} stored bytes"
    if problem:
        raise FormatError(f"tensor {entry.name}: the {entry.encoding} index {problem}; the vector is corrupt")
    return blocks


def is_bitmask(entry: TensorEntry) -> bool:
    """Whether the tensor's blocks store their positions as a bitmask (else as gap bytes)."""
    return entry.params.get("positions") == "bitmask"


def _decode_block(entry: TensorEntry, first_row: int, table: torch.Tensor, coded: Streams, out: torch.Tensor) -> None:
    problem = scatter(coded.positions, coded.codes, table, coded.escaped, out, coded.scales, bitmask=coded.bitmask)
    if problem:
        raise _corrupt_block(entry, first_row, problem)


def _corrupt_block(entry: TensorEntry, first_row: int, problem: str) -> FormatError:
    return FormatError(f"tensor {entry.name}: the {entry.encoding} block from row {first_row} {problem}; the vector is corrupt")


def _streams(entry: TensorEntry, payload: Payload, block: list[int], begin: int, first_row: int) -> Streams:
    """A block's positions, codes and escaped values (float32), decompressed."""
    _, count, escapes, position_bytes, end_positions, end_codes, end_escapes = block
    itemsize = _item_size(entry)
    raw = payload.read(entry.keys["data"], begin, end_escapes)
    positions = _unzstd(entry, raw[: end_positions - begin], position_bytes, first_row)
    codes = _unzstd(entry, raw[end_positions - begin : end_codes - begin], count, first_row)
    planes = _unzstd(entry, raw[end_codes - begin :], escapes * itemsize, first_row)
    escaped = torch.zeros(0, dtype=torch.float32)
    if escapes:
        escaped = torch.from_numpy(planes.reshape(itemsize, escapes).T.copy()).view(storage_dtype(entry)).reshape(-1).float()
    return Streams(positions, codes, escaped, bitmask=is_bitmask(entry))


def _unzstd(entry: TensorEntry, frame: torch.Tensor, size: int, first_row: int) -> np.ndarray:
    if size == 0 and frame.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    import zstandard

    try:
        data = _decompressor().decompress(frame.numpy(), max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"tensor {entry.name}: a {entry.encoding} frame of the block from row {first_row} does not decompress ({exc}); the vector is corrupt") from None
    if len(data) != size:
        raise FormatError(f"tensor {entry.name}: a {entry.encoding} frame of the block from row {first_row} holds {len(data)} bytes, the index says {size}; the vector is corrupt")
    return np.frombuffer(data, dtype=np.uint8)


def _item_size(entry: TensorEntry) -> int:
    return torch.empty((), dtype=storage_dtype(entry)).element_size()


def scatter(
    positions: np.ndarray, codes: np.ndarray, table: torch.Tensor, escaped: torch.Tensor | None, out: torch.Tensor,
    scales: torch.Tensor | None = None, *, bitmask: bool = False,
) -> str | None:
    """Fill the float32 block `out` with zeros and each coded entry; a description of what is wrong, or None.

    `positions` are gap bytes or, with `bitmask`, one bit per element. `escaped` None is an encoding without
    escaped values (`quantized`); with `scales`, one per row of the 2-D `out`, each value is multiplied by
    its row's. One pass of the compiled walk (`rvec_hub._kernels`,
    about a nanosecond per element) where the package's compiled part was built; otherwise the same in
    torch operations (`scatter_torch`).
    """
    if not positions.size and codes.size and scales is None and not bitmask:  # a code for every element
        if codes.size != out.numel():
            return _STATUS[7]
    kernel = _compiled_kernel()
    if kernel is None:
        return scatter_torch(positions, codes, table, escaped, out, scales, bitmask=bitmask)
    status = kernel(
        positions, codes, table.numpy(), None if escaped is None else escaped.numpy(), out.reshape(-1).numpy(),
        None if scales is None else scales.numpy(), _cols(out), bitmask,
    )
    return _problem(int(status), escaped) if status else None


def _cols(out: torch.Tensor) -> int:
    return out.shape[1] if out.dim() == 2 else max(1, out.numel())


_STATUS = {
    1: "places an entry past its last element",
    2: "has more entries than codes",
    3: "uses a code outside its codebook",
    4: "has more escaped codes than escaped values",
    5: "leaves codes unused",
    6: "leaves escaped values unused",
    7: "holds a number of codes, scales or bitmask bytes that does not fit its elements",
}


def _problem(status: int, escaped: torch.Tensor | None) -> str:
    """What a decoding status says is wrong with a block; the escape code of an encoding without escaped
    values is one more code outside its codebook."""
    return _STATUS[3 if status == 4 and escaped is None else status]


def scatter_torch(
    positions: np.ndarray, codes: np.ndarray, table: torch.Tensor, escaped: torch.Tensor | None, out: torch.Tensor,
    scales: torch.Tensor | None = None, *, bitmask: bool = False,
) -> str | None:
    """`scatter` in torch operations, for an installation without the compiled kernels."""
    out.zero_()
    flat = out.view(-1)
    code = torch.from_numpy(codes.astype(np.int64))
    if scales is not None and scales.numel() * _cols(out) != flat.numel():
        return _STATUS[7]
    if bitmask:
        if positions.size != -(-flat.numel() // 8):
            return _STATUS[7]
        bits = np.unpackbits(positions, bitorder="little")
        if bits[flat.numel() :].any():
            return _STATUS[1]
        position = torch.from_numpy(np.flatnonzero(bits))
    elif not positions.size and codes.size and scales is None:  # a code for every element
        return _gather_torch(code, table, escaped, flat)
    else:
        steps = torch.from_numpy(positions.astype(np.int64))
        filler = steps == 0
        position = torch.cumsum(torch.where(filler, _FILLER, steps), 0) - 1
        position = position[~filler]
    if position.numel() > code.numel():
        return _STATUS[2]
    if position.numel() < code.numel():
        return _STATUS[5]
    if position.numel() and int(position[-1]) >= flat.numel():
        return _STATUS[1]
    values = torch.empty(code.numel(), dtype=torch.float32)
    problem = _gather_torch(code, table, escaped, values)
    if problem is None:
        flat[position] = values if scales is None else values * scales[position // _cols(out)]
    return problem


def _gather_torch(code: torch.Tensor, table: torch.Tensor, escaped: torch.Tensor | None, out: torch.Tensor) -> str | None:
    """Each code's value (an escaped one for code 255 beyond the codebook) into `out`, one element per code."""
    escape = (code == ESCAPE) & (code >= table.numel())  # a codebook of 256 values (8 bits) has no escape code
    if bool((code[~escape] >= table.numel()).any()):
        return _STATUS[3]
    n_escaped, stored = int(escape.sum()), 0 if escaped is None else escaped.numel()
    if n_escaped > stored:
        return _problem(4, escaped)
    if n_escaped < stored:
        return _STATUS[6]
    out[~escape] = table[code[~escape]]
    if n_escaped:
        out[escape] = escaped
    return None


@lru_cache(maxsize=1)
def _compiled_kernel() -> Any:
    """The compiled scatter, or None without the compiled kernels: `rvec_hub._kernels.coded`, the walk the
    fused add takes too, writing into float32 instead of adding into bf16."""
    try:
        from .._kernels import coded
    except ImportError:
        return None

    def kernel(
        positions: np.ndarray, codes: np.ndarray, table: np.ndarray, escaped: np.ndarray | None, out: np.ndarray,
        scales: np.ndarray | None = None, cols: int = 1, bitmask: bool = False,
    ) -> int:
        return coded(positions, codes, table, escaped, scales, cols, out, 0.0, bitmask)[0]

    return kernel


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
    return problems + position_problems(entry)


def position_problems(entry: TensorEntry) -> list[str]:
    """What is wrong with the tensor's `positions` parameter: absent (gaps) or "bitmask"."""
    coding = entry.params.get("positions")
    if coding is None or coding == "bitmask":
        return []
    return [f"tensor {entry.name}: {entry.encoding} positions {coding!r} is not a position coding rvec knows (\"bitmask\", or absent for gaps)"]


CODEC = Codec("packed", _decode_rows, _encode, validate=_validate, add_into=_add_into, adds_from_base=True)
