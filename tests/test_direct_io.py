"""Writes past the page cache: bytes arrive whole and in order, whatever the file system allows."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rvec_hub.io import direct
from rvec_hub.io.safetensors_io import ShardWriter

PIECES = [1, 4095, 4096, 3 * 4096 + 17, 10_000, 1, 2 * 8192 - 3, 123_457]


def fcntl_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _stream_out(path: Path, offset: int, stage_bytes: int = 8192) -> tuple[bytes, bool]:
    """Create `path` and write random pieces from `offset` through a two-page stage; the bytes wanted and
    whether O_DIRECT held."""
    data = os.urandom(sum(PIECES))
    with open(path, "wb") as f:
        stream = direct.Stream(path, f.fileno(), offset, direct.stage(stage_bytes))
        done = 0
        for n in PIECES:
            stream.write(data[done : done + n])
            done += n
        held = stream.direct
        stream.close()
    return data, held


def test_bytes_arrive_in_order_across_stage_boundaries_past_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    data, held = _stream_out(path, 4096)
    if not held:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    raw = path.read_bytes()
    assert len(raw) == 4096 + len(data) and raw[4096:] == data and raw[:4096] == bytes(4096)


def test_a_file_system_that_refuses_o_direct_at_open_gets_every_byte_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    path = tmp_path / "out.bin"
    data, held = _stream_out(path, 8192)
    assert not held and path.read_bytes()[8192:] == data


def test_a_file_system_that_refuses_the_first_direct_write_gets_it_and_the_rest_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite, calls = os.pwrite, []

    def refusing(fd, data, offset):
        if fcntl_flags(fd) & os.O_DIRECT:
            calls.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing)
    path = tmp_path / "out.bin"
    data, held = _stream_out(path, 4096)
    assert calls == [4096] and not held and path.read_bytes()[4096:] == data


def test_a_failing_direct_write_is_raised_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def full(fd, data, offset):
        if fcntl_flags(fd) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    path = tmp_path / "out.bin"
    with pytest.raises(OSError) as caught:
        _stream_out(path, 0)
    if caught.value.errno != errno.ENOSPC:
        raise caught.value


def test_a_stream_refuses_an_offset_o_direct_cannot_write_at(tmp_path: Path) -> None:
    with open(tmp_path / "out.bin", "wb") as f, pytest.raises(ValueError, match="multiples of 4096"):
        direct.Stream(tmp_path / "out.bin", f.fileno(), 100, direct.stage(8192))


def test_shards_start_their_tensor_bytes_at_a_page_and_read_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "STAGE_BYTES", 3 * 4096)
    tensors = {f"t{i}": torch.randn(n, 7).to(torch.bfloat16) for i, n in enumerate((1, 300, 5, 2000, 3))}
    plan = [(k, tuple(t.shape), t.dtype) for k, t in tensors.items()]
    writer = ShardWriter(tmp_path, "model", 20_000, {"format": "pt"}, plan)
    for k, t in tensors.items():
        writer.begin(k, tuple(t.shape), t.dtype)
        for rows in t.split(7):
            writer.write(rows)
    shards = writer.finish()
    assert len(shards) > 1
    got = {}
    for path, _ in shards:
        raw = path.read_bytes()
        assert (8 + int.from_bytes(raw[:8], "little")) % 4096 == 0
        got.update(load_file(path))
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], t) for k, t in tensors.items())


def test_an_abandoned_stream_releases_its_direct_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    before = len(os.listdir("/proc/self/fd"))
    with open(path, "wb") as f:
        stream = direct.Stream(path, f.fileno(), 0, direct.stage(8192))
        if not stream.direct:
            pytest.skip(f"{tmp_path} refuses O_DIRECT")
        stream.write(b"x" * 100)
        del stream  # a write failed upstream: nobody calls close
    assert len(os.listdir("/proc/self/fd")) == before
