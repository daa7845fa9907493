"""The coded-block layout `packed` and `quantized` share: positions and one-byte codes per block of rows.

A tensor is seen as rows (`as_rows`) and cut into blocks of about a million elements (`row_chunks`), so a
row range decodes only the blocks it touches. Each block is a run of zstd frames in the tensor's `data`,
listed by its `index` (int64, one row per block: the block's last row + 1, entry, escape and position-byte
counts, and the end offsets of its position, code and escape frames):

- positions, flattened row-major: a bitmask, one bit per element (least significant first), where at least
  one element in 16 is an entry (`params["positions"]` "bitmask"); otherwise gaps, per entry its distance from
  the previous one in the block as one byte, where a 0 byte adds 255 to the next distance (runs of zeros
  longer than 255). Both cost about the entropy of the positions; the bitmask decodes sixteen elements a step
  (`_ckernels.c`), where gaps are a serial walk of a few nanoseconds per entry. Where more than 65 % of the
  elements are entries, `packed` codes every element instead and stores no positions;
- codes: per entry, one byte, an index into the encoding's codebook, 255 for a value stored whole (`packed`);
- escapes: the values stored whole (`packed` only).

zstd runs its optimal parser (`btopt`) with a one-step search: these streams are close to independent
symbols with a few very frequent ones, where Huffman-coded literals alone lose up to 15 % to the entropy
and the parser's cheap short repeats win it back (on a SmolLM2 fine-tune delta: 0.80 of ZipNN's bytes
against 0.90 with the fast strategy); a deeper search costs time and gains nothing on these streams.
`packed` stores a stream zstd shrinks by less than a quarter (a bitmask with a quarter of its bits set: by a
fifth) in a frame of raw blocks instead, which decodes at memory speed: decoding that bitmask costs as much
as adding its entries, for a fifth of its bytes.

Decoding (`decode_blocks`) and the fused add (`add_blocks`) walk a block with the compiled kernels
(`rvec_hub._kernels.coded`), or torch where they are not built, checking every count, position and code.
The fused add takes a run of whole blocks in one compiled call (`_kernels.coded_blocks`) that reads their
frames itself, so that no Python runs per block while other threads add: per block, reading three frames,
the nibbles and the escapes in Python held the interpreter lock about 150 µs, and on two threads a packed
0.5B load gained nothing from the second (0.32 s on one, 0.35 on two). A block whose frames that call does
not read is left to the walk here, which reads it or names what is wrong with it.
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
from ..errors import FormatError
from ..manifest import TensorEntry
from .base import Payload

ESCAPE = 255
_FILLER = 255
_EVERY_ELEMENT_ABOVE = 0.65  # share of non-zeros above which coding every element is smaller (measured)
# Share of entries from which positions are a bitmask: gaps are up to 10 % smaller below it (zstd, measured
# on random positions), and their walk then costs less than the bitmask's pass over every element.
BITMASK_FROM = 1 / 16
_RAW_ABOVE = 0.75  # a stream compressed to more than this share of its bytes is stored raw
_RAW_BLOCK = 1 << 17  # zstd's largest block


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
    of its bytes (by default, saves less than a quarter; 0: raw, not tried); b"" for an empty stream."""
    if not stream.size:
        return b""
    raw = np.ascontiguousarray(stream).tobytes()
    if raw_above > 0:
        compressed = _compressor().compress(raw)
        if len(compressed) <= raw_above * len(raw):
            return compressed
    return _stored_frame(raw)


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


def split_entries(coding: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The (positions, values) split of a block's flattened storage bits for a position coding: `_bitmask_entries`
    for "bitmask", `_entries` (gap bytes) otherwise."""
    return _bitmask_entries if coding == "bitmask" else _entries


def frames_of(streams: tuple[np.ndarray, ...], offset: int, raw_above: float = _RAW_ABOVE) -> tuple[list[bytes], list[int]]:
    """One block's streams as zstd frames (`frame`) and the end offset of each in `data`, the block starting at `offset`."""
    frames = [frame(stream, raw_above) for stream in streams]
    return frames, ends_of(frames, offset)


def ends_of(frames: list[bytes], offset: int) -> list[int]:
    """The end offset in `data` of each of a block's frames, the block starting at `offset`."""
    ends = []
    for written in frames:
        offset += len(written)
        ends.append(offset)
    return ends


def position_coding(entries: int, elements: int) -> str:
    """How a tensor with this many entries stores their positions: "every" element coded, "bitmask" or "gaps"."""
    if entries > _EVERY_ELEMENT_ABOVE * elements:
        return "every"
    return "bitmask" if entries >= BITMASK_FROM * elements else "gaps"


@dataclass(frozen=True)
class Streams:
    """One block's streams, decompressed: positions (gap bytes, or with `bitmask` a bit per element) and
    codes (uint8), escaped values and row scales (float32; None for an encoding without them)."""

    positions: np.ndarray
    codes: np.ndarray
    escaped: torch.Tensor | None
    scales: torch.Tensor | None = None
    bitmask: bool = False


@dataclass(frozen=True)
class Layout:
    """How an encoding's blocks hold codes and escaped values, for the compiled walk that adds a run of
    whole blocks in one call (`_kernels.coded_blocks`): a code's width in bits (8 a byte; 1, 2 or 4
    bit-packed, or 4 with `nibbles`, `packed`'s nibbles), an escaped value's bytes (2 bf16, 4 float32, 0 an
    encoding without them) and the tensor's checked row scales (float32, or None)."""

    bits: int = 8
    nibbles: bool = False
    escape_bytes: int = 0
    scales: torch.Tensor | None = None


# (entry, payload, its index row, its first byte in `data`, its first row) → the block's checked streams
StreamReader = Callable[[TensorEntry, Payload, list[int], int, int], Streams]
TableReader = Callable[[TensorEntry, Payload], torch.Tensor]  # the checked codebook, float32
LayoutReader = Callable[[TensorEntry, Payload], "Layout | None"]  # None: the tensor takes the block-by-block walk


def decode_blocks(entry: TensorEntry, payload: Payload, start: int, stop: int, table: TableReader, streams: StreamReader) -> torch.Tensor:
    """Rows `[start, stop)`, float32, of a tensor stored in coded blocks (`packed`, `quantized`): each block
    it touches decoded from `streams`."""
    shape = tuple(entry.shape)
    blocks, codebook, cols = _index_and_codebook(entry, payload, table)
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
    streams: StreamReader, base: torch.Tensor | None = None, layout: LayoutReader | None = None,
) -> tuple[int, float, float]:
    """α·Δ added to bf16 `rows` (rows `[start, stop)`) of a tensor stored in coded blocks, entry by entry
    straight from each block's `streams`; a block the range cuts is decoded whole and its rows in range added.
    With bf16 `base` rows, `rows` gets base + α·Δ: the kernel writes every weight of a block.

    With the encoding's `layout`, consecutive whole blocks are added by one compiled call (`_add_run`); a
    block it leaves (a frame it does not read, or a corrupt block, named here) takes the walk below."""
    blocks, codebook, cols = _index_and_codebook(entry, payload, table)
    flat = rows.reshape(stop - start, cols)
    source = None if base is None else base.reshape(stop - start, cols)
    status, err_sq, norm_sq = 0, 0.0, 0.0
    spans = list(blocks_in(blocks, start, stop))
    shape = None if layout is None or not fused.available() else memo(payload, ("layout", entry.name), lambda: layout(entry, payload))
    at = 0
    while at < len(spans):
        run = 0
        while shape is not None and at + run < len(spans) and _is_whole(spans[at + run]):
            run += 1
        if run:
            step, e, n, done = _add_run(entry, payload, spans[at : at + run], shape, codebook, cols, flat, source, start, alpha)
            status, err_sq, norm_sq = max(status, step if step == fused.BAD_VALUE else 0), err_sq + e, norm_sq + n
            at += done
            if done == run:
                continue
        block, first, begin, lo, hi = spans[at]
        at += 1
        whole = (lo, hi) == (start, stop)  # the usual call: one block, the rows of a streaming chunk
        target = flat if whole else flat[lo - start : hi - start]
        origin = source if whole or source is None else source[lo - start : hi - start]
        coded = streams(entry, payload, block, begin, first)
        if lo == first and hi == block[0]:
            step, e, n = fused.add_coded(target, coded.positions, coded.codes, codebook, coded.escaped, alpha, coded.scales, coded.bitmask, origin)
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


def _is_whole(span: tuple[list[int], int, int, int, int]) -> bool:
    block, first, _, lo, hi = span
    return lo == first and hi == block[0]


def _add_run(
    entry: TensorEntry, payload: Payload, spans: list[tuple[list[int], int, int, int, int]], layout: Layout, codebook: torch.Tensor,
    cols: int, flat: torch.Tensor, source: torch.Tensor | None, start: int, alpha: float,
) -> tuple[int, float, float, int]:
    """Whole blocks `spans` (consecutive) added by one compiled call, their frames read from a mapping of
    their bytes (a copy for a payload that does not map); (status, error², ‖α·Δ‖², blocks done)."""
    first, begin, last, end = spans[0][1], spans[0][2], spans[-1][0][0], spans[-1][0][6]
    reader = getattr(payload, "map", payload.read)  # a vector maps its file's pages; other payloads copy
    data = reader(entry.keys["data"], begin, end)
    index = np.array([span[0] for span in spans], dtype=np.int64).reshape(-1, 7)
    rows = slice(first - start, last - start)
    base = None if source is None else source[rows]
    return fused.add_coded_run(data, begin, index, first, cols, is_bitmask(entry), layout, codebook, flat[rows], alpha, base)


def _index_and_codebook(entry: TensorEntry, payload: Payload, table: TableReader) -> tuple[list[list[int]], torch.Tensor, int]:
    """The tensor's checked block index, its codebook and its columns (each read once per payload)."""
    rows, cols = as_rows(tuple(entry.shape))
    return _checked_index(entry, payload, rows, cols), memo(payload, ("table", entry.name), lambda: table(entry, payload)), cols


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


def memo(payload: Payload, key: tuple[str, str], compute: Callable[[], Any]) -> Any:
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
    return memo(payload, ("index", entry.name), lambda: _check_index(entry, payload, rows, cols))


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


def unzstd(entry: TensorEntry, frame: np.ndarray, size: int, first_row: int, *, at_most: bool = False) -> np.ndarray:
    """One stored frame (uint8) decompressed, checked to hold `size` bytes (with `at_most`, up to `size`).

    The size a frame's header declares is checked before anything is allocated: zstd allocates it whole."""
    if size == 0 and frame.size == 0:
        return np.zeros(0, dtype=np.uint8)
    import zstandard

    where = f"tensor {entry.name}: a {entry.encoding} frame of the block from row {first_row}"
    expected = f"{'at most ' if at_most else ''}{size}"
    try:
        declared = zstandard.frame_content_size(frame)
        if declared > size:
            raise FormatError(f"{where} declares {declared} bytes, the index says {expected}; the vector is corrupt")
        data = _decompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{where} does not decompress ({exc}); the vector is corrupt") from None
    if len(data) > size or (len(data) != size and not at_most):
        raise FormatError(f"{where} holds {len(data)} bytes, the index says {expected}; the vector is corrupt")
    return np.frombuffer(data, dtype=np.uint8)


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


def position_problems(entry: TensorEntry) -> list[str]:
    """What is wrong with the tensor's `positions` parameter: absent (gaps) or "bitmask"."""
    coding = entry.params.get("positions")
    if coding is None or coding == "bitmask":
        return []
    return [f"tensor {entry.name}: {entry.encoding} positions {coding!r} is not a position coding rvec knows (\"bitmask\", or absent for gaps)"]
