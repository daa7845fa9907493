"""Streaming safetensors reads: rows mapped instead of copied read what the copy reads, and fail as it fails."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rvec_hub.errors import CheckpointError
from rvec_hub.io.safetensors_io import SafetensorsFile, ShardWriter


def _ranges(rows: int) -> list[tuple[int, int | None]]:
    return [(0, None), (0, rows), (1, max(1, rows // 3)), (rows // 2, rows), (rows - 1, rows), (rows // 2, rows // 2)]


def test_mapped_rows_equal_read_rows_for_every_tensor_and_range(family: dict[str, Path]) -> None:
    f = SafetensorsFile(family["instruct"] / "model.safetensors")
    for name, info in f.tensors.items():
        for start, stop in _ranges(info.shape[0]) if info.shape else [(0, None)]:
            mapped, read = f.map_rows(name, start, stop), f.read_rows(name, start, stop)
            assert mapped.dtype == read.dtype and mapped.shape == read.shape, (name, start, stop)
            assert torch.equal(mapped, read), (name, start, stop)


def test_writes_to_mapped_rows_never_reach_the_file(family: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes((family["instruct"] / "model.safetensors").read_bytes())
    before = path.read_bytes()
    f = SafetensorsFile(path)
    name = next(n for n, i in f.tensors.items() if len(i.shape) == 2)
    rows = f.map_rows(name, 2, 6)
    rows.fill_(7.0)
    assert torch.all(rows == 7.0)
    del rows
    assert path.read_bytes() == before
    assert not torch.all(f.map_rows(name, 2, 6) == 7.0)


def test_mapped_rows_of_a_file_cut_short_after_opening_fail_with_a_clear_error(family: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes((family["instruct"] / "model.safetensors").read_bytes())
    f = SafetensorsFile(path)
    name, info = max(f.tensors.items(), key=lambda item: item[1].start)
    with open(path, "r+b") as handle:
        handle.truncate(info.start + info.nbytes // 2)
    with pytest.raises(CheckpointError, match="ended early"):
        f.map_rows(name)
    with pytest.raises(CheckpointError, match="ended early"):
        f.read_rows(name)


def _write_raw(path: Path, tensors: list[tuple[str, str, list[int], bytes]]) -> None:
    """A safetensors file laid out as given, with no alignment added (the format does not require any)."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(t[3] for t in tensors))


def test_rows_a_mapping_cannot_align_to_their_dtype_are_read_instead(tmp_path: Path) -> None:
    odd = torch.arange(3, dtype=torch.uint8)
    weights = torch.randn(5, 4).to(torch.bfloat16)
    scalar = torch.tensor(2.5, dtype=torch.float32)
    path = tmp_path / "odd.safetensors"
    _write_raw(path, [
        ("odd", "U8", [3], odd.numpy().tobytes()),
        ("weights", "BF16", [5, 4], weights.view(torch.int16).numpy().tobytes()),
        ("scalar", "F32", [], scalar.numpy().tobytes()),
    ])
    f = SafetensorsFile(path)
    assert f.tensors["weights"].start % 2 == 1
    # The kernels read weights through pointers of their type: never at an address their size does not divide.
    for rows, want in ((f.map_rows("weights", 1, 4), weights[1:4]), (f.map_rows("weights"), weights)):
        assert rows.data_ptr() % 2 == 0 and torch.equal(rows, want)
    assert torch.equal(f.map_rows("odd", 1, 3), odd[1:3])
    assert f.map_rows("scalar").shape == () and f.map_rows("scalar").item() == 2.5


def test_the_writer_hands_back_owned_rows_only_once_it_holds_their_bytes(tmp_path: Path) -> None:
    chunks = [torch.full((4, 8), float(i), dtype=torch.bfloat16) for i in range(6)]
    want = torch.cat(chunks)
    writer = ShardWriter(tmp_path, "model", 2**30, {"format": "pt"}, [("w", (24, 8), torch.bfloat16)])
    writer.begin("w", (24, 8), torch.bfloat16)
    handed_back: list[int] = []

    def reuse(i: int) -> None:  # the caller fills a buffer again as soon as it has it back
        chunks[i].fill_(-1.0)
        handed_back.append(i)

    for i, chunk in enumerate(chunks):
        writer.write(chunk, owned=True, written=lambda i=i: reuse(i))
    [(path, _)] = writer.finish()
    assert handed_back == list(range(6))
    assert torch.equal(load_file(path)["w"], want)
