"""`sparse`: the non-zero entries of a delta, stored exactly, in the smaller of two layouts.

RL updates leave most bf16 weights bit-identical, so a delta is mostly exact zeros. Each tensor is seen
as rows (its first dimension) of `cols` elements and stored with a row pointer, so any row range decodes
on its own:

- `bitmask`: one bit per element (rows × ⌈cols/8⌉ bytes) and the non-zero values in row-major order.
- `gaps`: per non-zero entry, the distance from the previous one in its row as a uint8; a gap longer than
  255 is bridged by filler entries of gap 255 and value 0. Wins when fewer than about 1 in 8 weights move.
"""

from __future__ import annotations

import math

import torch

from .. import fused
from ..arith import row_chunks
from ..errors import FormatError
from ..manifest import TensorEntry
from .base import Codec, Encoded, Payload, expect_keys, expect_stored, storage_dtype

LAYOUTS = ("bitmask", "gaps")
_MAX_GAP = 255
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view a sparse tensor is stored as; vectors are one row."""
    if len(shape) <= 1:
        return 1, math.prod(shape) if shape else 1
    return shape[0], math.prod(shape[1:])


def measure(rows: torch.Tensor) -> tuple[int, int | None]:
    """(non-zeros, gap entries including fillers) of complete rows of a 2-D delta in its storage dtype.

    Gap entries are counted only below 1 in 8 non-zeros; above that the bitmask is always smaller, and
    None is returned for them.
    """
    mask = rows.reshape(rows.shape[0], -1) != 0
    nnz = int(mask.sum())
    if nnz * 8 >= mask.numel():
        return nnz, None
    _, gaps = _row_gaps(mask)
    return nnz, nnz + int(((gaps - 1) // _MAX_GAP).sum())


def layout_bytes(shape: tuple[int, ...], nnz: int, entries: int | None, value_bytes: int) -> dict[str, int]:
    """Payload bytes of each layout for a tensor with `nnz` non-zeros (`entries` with gap fillers; None: not counted)."""
    rows, cols = as_rows(shape)
    pointer = (rows + 1) * _pointer_dtype(max(nnz, entries or 0)).itemsize
    sizes = {"bitmask": rows * ((cols + 7) // 8) + nnz * value_bytes + pointer}
    if entries is not None:
        sizes["gaps"] = entries * (1 + value_bytes) + pointer
    return sizes


def _pointer_dtype(count: int) -> torch.dtype:
    return torch.int32 if count < 2**31 else torch.int64


def _row_gaps(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row index of each non-zero and its distance from the previous one in its row (from −1 at a row start)."""
    row, col = mask.nonzero(as_tuple=True)
    prev = torch.full_like(col, -1)
    if col.numel() > 1:
        same = row[1:] == row[:-1]
        prev[1:] = torch.where(same, col[:-1], prev[1:])
    return row, col - prev


def _encode(delta: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16, layout: str | None = None, **_: object) -> Encoded:
    shape = tuple(delta.shape)
    rows, cols = as_rows(shape)
    flat = delta.reshape(rows, cols)
    chunks = row_chunks((rows, cols))
    if layout is None:
        counted = [measure(flat[a:b].to(dtype)) for a, b in chunks]
        entries = None if any(e is None for _, e in counted) else sum(e for _, e in counted)
        sizes = layout_bytes(shape, sum(n for n, _ in counted), entries, dtype.itemsize)
        layout = min(sizes, key=sizes.get)
    # Rows are independent, so the tensor is encoded a chunk of rows at a time.
    parts: dict[str, list[torch.Tensor]] = {"mask" if layout == "bitmask" else "gaps": [], "values": []}
    counts, err_sq, nnz = [], 0.0, 0
    for a, b in chunks:
        values = flat[a:b].to(dtype)
        mask = values != 0  # an entry that rounds to zero in `dtype` is not stored
        err_sq += torch.linalg.vector_norm(flat[a:b] - values.float()).item() ** 2
        nnz += int(mask.sum())
        if layout == "bitmask":
            parts["mask"].append(_pack_bits(mask))
            parts["values"].append(values[mask])
            counts.append(mask.sum(dim=1))
        else:
            gaps, entry_values, per_row = _gap_entries(mask, values)
            parts["gaps"].append(gaps)
            parts["values"].append(entry_values)
            counts.append(per_row)
    stored = {role: torch.cat(tensors) for role, tensors in parts.items()}
    pointer = torch.zeros(rows + 1, dtype=torch.long)
    pointer[1:] = torch.cumsum(torch.cat(counts), 0)
    stored["rowptr"] = pointer.to(_pointer_dtype(int(pointer[-1])))
    norm = torch.linalg.vector_norm(delta).item()
    rel = math.sqrt(err_sq) / norm if norm else 0.0
    density = nnz / max(1, rows * cols)
    stats = {"rel_error": rel, "density": density, "energy": 1.0 - rel**2}
    return Encoded("sparse", stored, params={"layout": layout, "density": density}, stats=stats)


def _gap_entries(mask: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 gaps, values and entries per row for some rows, with zero-valued fillers bridging gaps over 255."""
    row, gaps = _row_gaps(mask)
    nz_values = values[mask]
    fillers = (gaps - 1) // _MAX_GAP
    per = fillers + 1
    owner = torch.repeat_interleave(torch.arange(gaps.numel()), per)
    first = torch.cumsum(per, 0) - per
    last = (torch.arange(owner.numel()) - first[owner]) == fillers[owner]
    entry_gaps = torch.where(last, gaps[owner] - _MAX_GAP * fillers[owner], torch.full_like(owner, _MAX_GAP))
    entry_values = torch.where(last, nz_values[owner], torch.zeros((), dtype=values.dtype))
    per_row = torch.bincount(row[owner], minlength=mask.shape[0]) if owner.numel() else torch.zeros(mask.shape[0], dtype=torch.long)
    return entry_gaps.to(torch.uint8), entry_values.to(values.dtype), per_row


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = mask.shape
    padded = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8)
    padded[:, :cols] = mask
    return (padded.reshape(rows, -1, 8) * _BITS).sum(dim=2, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    bits = (packed.unsqueeze(-1) & _BITS) != 0
    return bits.reshape(packed.shape[0], -1)[:, :cols]


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    shape = tuple(entry.shape)
    rows, cols = as_rows(shape)
    if len(shape) <= 1:
        # A vector is one stored row; its "rows" are elements.
        return _decode_stored(entry, payload, 0, 1, cols).reshape(-1)[start:stop].reshape((stop - start,) if shape else ())
    return _decode_stored(entry, payload, start, stop, cols).reshape((stop - start, *shape[1:]))


def _decode_stored(entry: TensorEntry, payload: Payload, start: int, stop: int, cols: int) -> torch.Tensor:
    out = torch.zeros(stop - start, cols, dtype=torch.float32)
    where, values = _stored_entries(entry, payload, start, stop, cols)
    out.view(-1)[where] = values
    return out


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float) -> tuple[int, float, float]:
    """α·Δ added to bf16 `rows` (rows `[start, stop)`) at the stored entries only."""
    shape = tuple(entry.shape)
    if len(shape) <= 1:  # a vector is one stored row: decoded whole (it is small), its range added
        return fused.add_dense(rows, _decode_rows(entry, payload, start, stop), alpha)
    where, values = _stored_entries(entry, payload, start, stop, as_rows(shape)[1])
    return fused.add_at(rows, where, values, alpha)


def _stored_entries(entry: TensorEntry, payload: Payload, start: int, stop: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions within rows `[start, stop)`, float32 values) of the stored entries, checked."""
    keys = entry.keys
    pointer = payload.read(keys["rowptr"], start, stop + 1).long()
    counts = _checked_counts(entry, payload, pointer, start, stop)
    lo, hi = int(pointer[0]), int(pointer[-1])
    values = payload.read(keys["values"], lo, hi).float()
    if entry.params["layout"] == "bitmask":
        mask = _unpack_bits(payload.read(keys["mask"], start, stop), cols)
        if not torch.equal(mask.sum(dim=1), counts):
            raise FormatError(f"tensor {entry.name}: the sparse bitmask of rows {start}-{stop} disagrees with its row pointer; the vector is corrupt")
        return mask.reshape(-1).nonzero().reshape(-1), values
    gaps = payload.read(keys["gaps"], lo, hi).long()
    if gaps.numel() and int(gaps.min()) < 1:
        raise FormatError(f"tensor {entry.name}: a sparse gap of 0 in rows {start}-{stop} repeats a position; the vector is corrupt")
    row = torch.repeat_interleave(torch.arange(stop - start), counts)
    # Positions are the running sum of gaps within each row, minus one.
    running = torch.cumsum(gaps, 0)
    first = pointer[:-1] - lo  # each row's first entry in this slice
    before = torch.zeros(stop - start, dtype=torch.long)
    before[first > 0] = running[first[first > 0] - 1]
    col = running - before[row] - 1
    if col.numel() and int(col.max()) >= cols:
        raise FormatError(f"tensor {entry.name}: a sparse index in rows {start}-{stop} lies past column {cols}; the vector is corrupt")
    return row * cols + col, values


def _checked_counts(entry: TensorEntry, payload: Payload, pointer: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Entries per row from a slice of the row pointer, which must start at 0, never fall and end at the value count."""
    total = payload.shape(entry.keys["values"])[0]
    counts = pointer[1:] - pointer[:-1]
    rows, _ = as_rows(tuple(entry.shape))
    problem = None
    if counts.numel() and int(counts.min()) < 0:
        problem = f"falls between rows {start} and {stop}"
    elif int(pointer[0]) < 0 or int(pointer[-1]) > total:
        problem = f"points outside the {total} stored values"
    elif start == 0 and int(pointer[0]) != 0:
        problem = "does not start at 0"
    elif stop == rows and int(pointer[-1]) != total:
        problem = f"ends at {int(pointer[-1])} but {total} values are stored"
    if problem:
        raise FormatError(f"tensor {entry.name}: the sparse row pointer {problem}; the vector is corrupt")
    return counts


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    layout = entry.params.get("layout")
    if layout not in LAYOUTS:
        return [f"tensor {entry.name}: sparse layout {layout!r} is not one of {', '.join(LAYOUTS)}"]
    index = "mask" if layout == "bitmask" else "gaps"
    problems = expect_keys(entry, ("rowptr", "values", index))
    if problems:
        return problems
    rows, cols = as_rows(tuple(entry.shape))
    problems += expect_stored(entry, payload, "rowptr", (rows + 1,), (torch.int32, torch.int64))
    problems += expect_stored(entry, payload, "values", None, [storage_dtype(entry)])
    if layout == "bitmask":
        problems += expect_stored(entry, payload, "mask", (rows, (cols + 7) // 8), (torch.uint8,))
    else:
        problems += expect_stored(entry, payload, "gaps", tuple(payload.shape(entry.keys["values"]))[:1], (torch.uint8,))
    return problems


CODEC = Codec("sparse", _decode_rows, _encode, validate=_validate, add_into=_add_into)
