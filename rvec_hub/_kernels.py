"""The kernels of `fused`, and the walk the `packed` and `quantized` decoders share with the fused add
(`coded`): C (`_ckernels.c`), built with the package, called through ctypes, which releases the GIL for
each call, so chunks added on several threads run side by side.

Hand-written rather than compiled by numba, which rvec used before: loading numba and its cached kernels
cost every process that adds a vector about 0.45 s and 170 MB of resident memory (llvmlite's LLVM alone
115 MB), as much as the arithmetic itself on a 0.5B model; these kernels load in a millisecond and run
faster (bench/README.md). Importing this module raises ImportError where the compiled part was not built
(no C compiler at install); callers then keep torch's general path.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

from . import _ckernels  # noqa: F401  (ImportError without the compiled part)

try:
    _lib = ctypes.CDLL(_ckernels.__file__)
except OSError as exc:  # built, but not loadable here: as if it had not been built
    raise ImportError(f"rvec's compiled kernels do not load: {exc}") from exc
_P, _N, _F, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
for _name, _args in {
    "rvec_dense_bf16": [_P, _P, _P, _N, _F, _P],
    "rvec_dense_f32": [_P, _P, _P, _N, _F, _P],
    "rvec_indexed": [_P, _P, _P, _N, _F, _P],
    "rvec_coded_add": [_P, _N, _I, _P, _N, _P, _N, _P, _N, _I, _P, _N, _N, _P, _P, _N, _F, _P],
    "rvec_coded_decode": [_P, _N, _I, _P, _N, _P, _N, _P, _N, _I, _P, _N, _N, _P, _N, _P],
    "rvec_lowrank_bf16": [_P, _P, _P, _P, _N, _N, _N, _F, _P],
    "rvec_unpack_codes": [_P, _N, _I, _P, _N],
    "rvec_unnibble_codes": [_P, _N, _P, _N],
    "rvec_populate": [_P, _N],
    "rvec_pair_ranks": [_P, _P, _N, _N],
    "rvec_coded_blocks": [_P, _N, _N, _P, _N, _N, _N, _I, _I, _I, _I, _P, _N, _P, _P, _P, _F, _P, _P],
    "rvec_zstd_frames": [_I],
}.items():
    getattr(_lib, _name).argtypes = _args
    getattr(_lib, _name).restype = _I
_lib.rvec_vector_walk.argtypes = [_I]
_lib.rvec_vector_walk.restype = _I
_lib.rvec_last_walk.argtypes = []
_lib.rvec_last_walk.restype = _I
_NONE = np.zeros(0, dtype=np.float32)
_NO_MEMORY = 9  # a status of `coded`: its buffer could not be allocated (as in _ckernels.c)
FRAMES = 10  # a status of `coded_blocks`: a block left to the Python reader, nothing of it written


_TORCH = {np.uint8: torch.uint8, np.uint16: torch.bfloat16, np.float32: torch.float32, np.int64: torch.int64}
_SUMS = ctypes.c_float * 2  # a kernel's two sums: rounding error², ‖α·Δ‖²


def _at(array: Any, dtype: type) -> int:
    """The address of a C-contiguous array of `dtype`, numpy or torch (bf16 for uint16 bits): a kernel reads
    and writes it as flat memory."""
    if not isinstance(array, np.ndarray):  # a torch tensor: its address costs a tenth of a numpy array's
        if array.dtype is not _TORCH[dtype] or not array.is_cpu or not array.is_contiguous():
            raise ValueError(f"a kernel needs a contiguous {_TORCH[dtype]} tensor on the CPU, got {array.dtype} on {array.device}")
        return array.data_ptr()
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise ValueError(f"a kernel needs a contiguous {np.dtype(dtype).name} array, got {array.dtype} {'' if array.flags.c_contiguous else 'strided'}")
    return array.ctypes.data


def _size(array: Any) -> int:
    return array.size if isinstance(array, np.ndarray) else array.numel()


def _result(status: int, sums: Any) -> tuple[int, float, float]:
    return status, float(sums[0]), float(sums[1])


def dense(out: np.ndarray, delta: np.ndarray, alpha: float, source: np.ndarray | None = None) -> tuple[int, float, float]:
    """out ← bf16(out + α·delta) for bf16 bits `out` and bf16 bits (uint16) or float32 `delta`, as many;
    with `source` (bf16 bits, as many), out ← bf16(source + α·delta).

    Returns (status, rounding error², ‖α·Δ‖²); status 8 (`fused.BAD_VALUE`) when a sum is not finite."""
    if delta.size != out.size or (source is not None and source.size != out.size):
        raise ValueError(f"a delta of {delta.size} values for {out.size} weights")
    sums = _SUMS()
    from_ = None if source is None else _at(source, np.uint16)
    if delta.dtype == np.uint16:
        status = _lib.rvec_dense_bf16(_at(out, np.uint16), from_, _at(delta, np.uint16), out.size, alpha, sums)
    else:
        status = _lib.rvec_dense_f32(_at(out, np.uint16), from_, _at(delta, np.float32), out.size, alpha, sums)
    return _result(status, sums)


def lowrank(out: Any, b: Any, pairs: Any, alpha: float, source: Any | None = None) -> tuple[int, float, float] | None:
    """out ← bf16(out + α·bf16(b·A)) in one pass (AMX, or AVX512-BF16) for bf16 tensors: `out` rows × cols,
    `b` rows × rank, `pairs` A (rank × cols) in pairs of ranks, rank / 2 × cols × 2 (A[2k][n], A[2k + 1][n]);
    with `source` (bf16 like `out`), out ← bf16(source + α·bf16(b·A)). None where it cannot run here (neither
    unit, an odd rank, a rank not in thirty-twos up to 256 where AMX runs, columns not a multiple of 16); else
    as `dense`."""
    rows, rank = b.shape
    cols = pairs.shape[1]
    if _size(out) != rows * cols or (source is not None and _size(source) != rows * cols) or tuple(pairs.shape) != (rank // 2, cols, 2):
        raise ValueError(f"a {rows}×{rank} factor and {tuple(pairs.shape)} pairs for {_size(out)} weights")
    sums = _SUMS()
    from_ = None if source is None else _at(source, np.uint16)
    status = _lib.rvec_lowrank_bf16(_at(out, np.uint16), from_, _at(b, np.uint16), _at(pairs, np.uint16), rows, cols, rank, alpha, sums)
    return None if status < 0 else _result(status, sums)


def pair_ranks(a: torch.Tensor) -> torch.Tensor:
    """bf16 A (rank × cols, rank even, contiguous) in pairs of ranks, rank / 2 × cols × 2 (A[2k][n], A[2k + 1][n]),
    the layout `lowrank` takes."""
    rank, cols = a.shape
    if rank % 2:
        raise ValueError(f"an odd rank ({rank}) has no pairs of ranks")
    out = torch.empty(rank // 2, cols, 2, dtype=torch.bfloat16)
    _lib.rvec_pair_ranks(_at(a, np.uint16), _at(out, np.uint16), rank, cols)
    return out


def indexed(out: np.ndarray, where: np.ndarray, values: np.ndarray, alpha: float) -> tuple[int, float, float]:
    """out ← bf16(out + α·value) at each flat position of `where` (int64 positions, each inside `out`, in any order)."""
    if where.size != values.size:
        raise ValueError(f"{where.size} positions for {values.size} values")
    sums = _SUMS()
    status = _lib.rvec_indexed(_at(out, np.uint16), _at(where, np.int64), _at(values, np.float32), where.size, alpha, sums)
    return _result(status, sums)


def coded(
    positions: np.ndarray, codes: np.ndarray, table: Any, escaped: Any | None, scales: Any | None,
    cols: int, out: Any, alpha: float, bitmask: bool = False, source: Any | None = None,
) -> tuple[int, float, float]:
    """Each coded entry of a `packed` block, or with per-row `scales` (one per row of `cols` elements) a
    `quantized` one, into `out`: float32 `out` is filled with the decoded block (zeros between the entries),
    bf16 `out` (a tensor, or its bits as uint16) gets out ← bf16(out + α·value), or with `source` (bf16
    shaped like `out`) out ← bf16(source + α·value) and out ← source where the block has no entry.
    `positions` (uint8) are gap bytes or, with `bitmask`, one bit per element of `out`; `table`, `escaped`
    and `scales` are float32, numpy or torch.

    `escaped` None is an encoding without escaped values (code 255 is then one more code outside the
    codebook); `scales` None or empty, no scales. Returns (status, error², ‖α·Δ‖²): a status other than 0 is
    a `packed` decoding status (see `_ckernels.c`) or `fused.BAD_VALUE`; the sums are 0 for a decode.
    """
    has_escaped = escaped is not None
    escaped = _NONE if escaped is None else escaped
    scales = _NONE if scales is None else scales
    sums = _SUMS()
    n_codes = codes.size
    streams = (
        _at(positions, np.uint8), positions.size, bitmask, _at(codes, np.uint8), n_codes, _at(table, np.float32), _size(table),
        _at(escaped, np.float32), _size(escaped), has_escaped, _at(scales, np.float32), _size(scales), cols,
    )
    n = _size(out)
    if out.dtype == np.float32 or out.dtype is torch.float32:
        status = _lib.rvec_coded_decode(*streams, _at(out, np.float32), n, sums)
    else:
        if source is not None and _size(source) != n:
            raise ValueError(f"a source of {_size(source)} weights for {n}")
        from_ = None if source is None else _at(source, np.uint16)
        status = _lib.rvec_coded_add(*streams, _at(out, np.uint16), from_, n, alpha, sums)
    if status == _NO_MEMORY:
        raise MemoryError(f"no memory for the {n_codes} values of a coded block")
    return _result(status, sums)


def coded_blocks(
    data: Any, data_at: int, index: np.ndarray, first_row: int, cols: int, bitmask: bool, bits: int, nibbles: bool,
    escape_bytes: int, table: Any, scales: Any | None, out: Any, source: Any | None, alpha: float,
) -> tuple[int, float, float, int]:
    """A run of one tensor's whole coded blocks added in one call, frames, codes and escaped values read in C
    (`rvec_coded_blocks`): `data` (uint8) holds the tensor's stored bytes from its byte `data_at` to the
    end of the run's last frame, `index` (int64, blocks × 7) the run's rows of the block index, the first
    block starting at row `first_row`; `out` and `source` (bf16, or None to add in place) hold the run's rows.
    Codes are `bits` wide (8 a byte, 1, 2 or 4 bit-packed; 4 with `nibbles`, `packed`'s nibbles); escaped
    values `escape_bytes` wide (2 bf16, 4 float32; 0 none, `scales` then one float32 per row of the tensor).

    Returns (status, error², ‖α·Δ‖², blocks done): status 0, `fused.BAD_VALUE`, a `coded` status naming
    the first block not done as corrupt, or FRAMES where that block is left to the Python reader.
    """
    if index.dtype != np.int64 or not index.flags.c_contiguous or index.ndim != 2 or index.shape[1] != 7:
        raise ValueError(f"a block index of {index.dtype} {tuple(index.shape)}, expected contiguous int64 rows of 7")
    last = int(index[-1, 0]) if index.size else first_row
    n = (last - first_row) * cols
    if _size(out) != n or (source is not None and _size(source) != n) or (scales is not None and _size(scales) < last):
        raise ValueError(f"{_size(out)} weights for rows {first_row}-{last} of {cols}")
    sums, done = _SUMS(), ctypes.c_int64()
    status = _lib.rvec_coded_blocks(
        _at(data, np.uint8), _size(data), data_at, _at(index, np.int64), index.shape[0], first_row, cols, bitmask, bits, nibbles,
        escape_bytes, _at(table, np.float32), _size(table), None if scales is None else _at(scales, np.float32), _at(out, np.uint16),
        None if source is None else _at(source, np.uint16), alpha, sums, ctypes.byref(done),
    )
    if status == _NO_MEMORY:
        raise MemoryError("no memory for the streams of a coded block")
    return (*_result(status, sums), done.value)


def zstd_frames(enable: bool | None = None) -> bool:
    """Whether `coded_blocks` decompresses zstd-compressed blocks itself (libzstd found at run time); `enable`
    False leaves them to the Python reader (tests), True restores it."""
    return bool(_lib.rvec_zstd_frames(-1 if enable is None else int(enable)))


WALKS = ("scalar", "vector", "gathered")  # the bitmask walks, each allowing the ones before it


def vector_walk(walk: str | None = None) -> str:
    """Which walks may run where the CPU has them: "gathered" (the default) all, "vector" the AVX-512 walk
    but not the gathered walks of a fused bitmask add (they need VBMI2) nor the dense and low-rank loops that
    convert to bf16 with AVX512-BF16, "scalar" only the scalar loops, the dense add's too (the same results,
    for tests). `walk` None only asks; returns the setting before the call."""
    return WALKS[_lib.rvec_vector_walk(-1 if walk is None else WALKS.index(walk))]


def last_walk() -> str | None:
    """The walk (`WALKS`) this thread's last bitmask block took; None before any."""
    walked = _lib.rvec_last_walk()
    return WALKS[walked] if walked >= 0 else None


def unpack_codes(packed: np.ndarray, n: int, slot: int) -> tuple[np.ndarray, int]:
    """`n` codes of `slot` bits (1, 2 or 4) packed 8 / slot to a byte, least significant first, one a byte;
    and 0, or 1 for a packed length that does not fit `n`, 2 for a bit set past the last code."""
    out = np.empty(n, dtype=np.uint8)
    status = _lib.rvec_unpack_codes(_at(packed, np.uint8), packed.size, slot, _at(out, np.uint8), n)
    return out, status


def unnibble_codes(data: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """`n` codes, one a byte, from `packed`'s "nibbles" layout (`rvec_hub.encodings.packed`); and 0, or the
    status of `rvec_unnibble_codes` (_ckernels.c): 1 too few bytes, 2 a nibble set past the last code, 3 more
    15s than long codes, 4 long codes left over."""
    out = np.empty(n, dtype=np.uint8)
    status = _lib.rvec_unnibble_codes(_at(data, np.uint8), data.size, _at(out, np.uint8), n)
    return out, status


def populate(tensor: torch.Tensor) -> int:
    """Fault in a CPU tensor's pages for writing in one call (`rvec_populate`); 0, or why the kernel could not."""
    return _lib.rvec_populate(tensor.data_ptr(), tensor.numel() * tensor.element_size())
