"""A run of whole `packed` or `quantized` blocks added in one compiled call (`_kernels.coded_blocks`) gives
bit for bit what the block-by-block walk gives, and leaves to that walk every block whose frames it does not
read, so that a corrupt block is named as before."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from rvec_hub import FormatError, _kernels, fused
from rvec_hub.encodings import ENCODINGS, blocks, packed, quantized

from codec_common import StoredPayload, encode_one, rl_delta

pytestmark = pytest.mark.skipif(not fused.available(), reason="the compiled kernels are not built")


@pytest.fixture
def block_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The rows of each block the block-by-block walk adds (the compiled run's blocks are not in it)."""
    calls: list[int] = []
    walk = fused.add_coded

    def counted(rows, *args, **kwargs):
        calls.append(rows.shape[0])
        return walk(rows, *args, **kwargs)

    monkeypatch.setattr(fused, "add_coded", counted)
    yield calls


@pytest.fixture
def without_zstd() -> Iterator[None]:
    """The compiled run as where libzstd does not load: compressed blocks are left to the Python reader."""
    before = _kernels.zstd_frames()
    _kernels.zstd_frames(False)
    try:
        yield
    finally:
        _kernels.zstd_frames(before)


def _delta(rows: int, cols: int, seed: int) -> torch.Tensor:
    """An RL-like delta with a few large entries: codes beyond the codebook, escaped values."""
    delta = rl_delta(rows, cols, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    delta.view(-1)[::37] = (torch.randn(delta.view(-1)[::37].numel(), generator=g) * 1e-2).to(torch.bfloat16).float()
    return delta.to(torch.bfloat16).float()


# every stream stored compressed, whatever zstd makes of it
_COMPRESS = [(blocks.frame, "__defaults__", (4.0,)), (blocks.frames_of, "__defaults__", (4.0,))]
_BYTES = (packed, "_NIBBLES_WITHIN", 0.0)  # a byte a code
_GAPS = (blocks, "BITMASK_FROM", 2.0)
CASES = {
    "packed nibbles, bitmask": ("packed", [], {}),
    "packed bytes, bitmask": ("packed", [_BYTES], {}),
    "packed nibbles, gaps": ("packed", [_GAPS], {}),
    "packed, every element": ("packed", [], {"every": True}),
    "packed float32 values": ("packed", [], {"dtype": torch.float32}),
    "packed, frames compressed": ("packed", [*_COMPRESS, _BYTES], {}),
    "quantized 1 bit": ("quantized", [], {"bits": 1}),
    "quantized 2 bits, gaps": ("quantized", [_GAPS], {"bits": 2, "keep": 0.5}),
    "quantized 3 bits": ("quantized", [], {"bits": 3}),
    "quantized 4 bits, frames compressed": ("quantized", _COMPRESS, {"bits": 4}),
    "quantized 8 bits": ("quantized", [], {"bits": 8}),
}


def _encoded(case: str, rows: int = 48, cols: int = 97, rows_per_block: int = 7):
    encoding, settings, options = CASES[case]
    options = dict(options)
    delta = _delta(rows, cols, 1)
    if options.pop("every", False):  # every element moved
        delta = (delta + 2.0**-12).to(torch.bfloat16).float()
    with pytest.MonkeyPatch.context() as m:
        for owner, name, value in settings:
            m.setattr(owner, name, value)
        return encode_one(encoding, delta, dtype=options.pop("dtype", torch.bfloat16), rows_per_block=rows_per_block, **options)


def _compressed_blocks(stored: StoredPayload) -> int:
    """Blocks with a frame of zstd-compressed blocks (the first block of each frame's type is checked)."""
    data, count, begin = stored.tensors["data"].numpy(), 0, 0
    for row in stored.tensors["index"].tolist():
        kinds = []
        for a, b in ((begin, row[4]), (row[4], row[5]), (row[5], row[6])):
            if b > a:
                fhd = int(data[a + 4])
                at = a + 5 + (0 if fhd & 0x20 else 1) + [0, 1, 2, 4][fhd & 3] + [1 if fhd & 0x20 else 0, 2, 4, 8][fhd >> 6]
                kinds.append(int(data[at]) >> 1 & 3)
        count += 2 in kinds
        begin = row[6]
    return count


def _walked(entry, stored, start: int, stop: int, base: torch.Tensor, alpha: float, *, separate: bool):
    """rows `[start, stop)` added block by block (the walk without a layout) and with the encoding's run."""
    codec = ENCODINGS[entry.encoding]
    module = packed if entry.encoding == "packed" else quantized
    by_block = base.clone() if not separate else torch.full_like(base, float("nan"))
    expected = blocks.add_blocks(entry, stored, start, stop, by_block, alpha, module._table, module._streams, base if separate else None)
    rows = base.clone() if not separate else torch.full_like(base, float("nan"))
    got = codec.add_into(entry, stored, start, stop, rows, alpha, **({"base": base} if separate else {}))
    return by_block, expected, rows, got


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("separate", [False, True])  # added in place, or written from separate base rows
def test_a_run_of_blocks_adds_as_the_block_by_block_walk(case: str, separate: bool, block_calls: list[int]) -> None:
    entry, stored = _encoded(case)
    assert _compressed_blocks(stored) > 0 or "compressed" not in case
    base = (torch.randn(48, 97, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16)
    for start, stop in [(0, 48), (7, 35), (3, 30)]:  # every block; whole blocks only; cut blocks at both ends
        block_calls.clear()
        by_block, expected, rows, got = _walked(entry, stored, start, stop, base[start:stop].contiguous(), 0.7, separate=separate)
        walked = len(block_calls)  # the walk's, one per whole block; the run's, none
        block_calls.clear()
        assert torch.equal(rows.view(torch.int16), by_block.view(torch.int16)), (start, stop)
        assert got[0] == expected[0] == 0
        assert got[1] == pytest.approx(expected[1], rel=1e-5) and got[2] == pytest.approx(expected[2], rel=1e-5)
        assert walked == len(list(blocks.blocks_in(stored.tensors["index"].tolist(), start, stop))) - 2 * (start == 3)
    block_calls.clear()
    ENCODINGS[entry.encoding].add_into(entry, stored, 7, 35, base[7:35].clone(), 0.7)
    assert block_calls == []  # four whole blocks, one compiled call, none by the walk


@pytest.mark.parametrize("case", ["packed, frames compressed", "quantized 4 bits, frames compressed"])
def test_compressed_blocks_are_left_to_the_python_reader_where_libzstd_is_not_loaded(case: str, block_calls, without_zstd) -> None:
    entry, stored = _encoded(case)
    base = (torch.randn(48, 97, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16)
    by_block, _, rows, got = _walked(entry, stored, 0, 48, base, -1.0, separate=True)
    assert torch.equal(rows.view(torch.int16), by_block.view(torch.int16))
    assert got[0] == 0
    assert len(block_calls) == 7 + _compressed_blocks(stored)  # the walk's own seven, then those the run left to it


def _one_block(code_frame: bytes | None = None, delta: torch.Tensor | None = None):
    """A one-block packed tensor of 9 × 40 (byte codes; by default with escaped values), its code frame replaced."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(packed, "_NIBBLES_WITHIN", 0.0)
        entry, stored = encode_one("packed", _delta(9, 40, 5) if delta is None else delta)
    index = stored.tensors["index"].clone()
    _, _, _, _, end_positions, end_codes, end = index[0].tolist()
    data = stored.tensors["data"].numpy().tobytes()
    codes = code_frame if code_frame is not None else data[end_positions:end_codes]
    rebuilt = data[:end_positions] + codes + data[end_codes:end]
    index[0, 5] = end_positions + len(codes)
    index[0, 6] = len(rebuilt)
    return entry, StoredPayload({**stored.tensors, "index": index, "data": torch.frombuffer(bytearray(rebuilt), dtype=torch.uint8)}), stored


def _stream(stored: StoredPayload, which: int, block: int = 0) -> bytes:
    """The decompressed bytes of a block's stream `which` (0 positions, 1 codes, 2 escapes)."""
    import zstandard

    index = stored.tensors["index"].tolist()
    row = index[block]
    bounds = [index[block - 1][6] if block else 0, row[4], row[5], row[6]]
    frame = stored.tensors["data"].numpy()[bounds[which] : bounds[which + 1]].tobytes()
    return zstandard.ZstdDecompressor().decompress(frame) if frame else b""


def _rle_frame(value: int, size: int) -> bytes:
    """A zstd frame of one RLE block: `size` bytes of `value`."""
    return b"\x28\xb5\x2f\xfd\xa0" + size.to_bytes(4, "little") + (size << 3 | 1 << 1 | 1).to_bytes(3, "little") + bytes([value])


def _run(entry, stored, rows: torch.Tensor) -> tuple[int, int]:
    """(status, blocks done) of the compiled run over every block of a one-block tensor."""
    layout = packed._layout(entry, stored)
    index = stored.tensors["index"].numpy().astype(np.int64)
    status, _, _, done = fused.add_coded_run(stored.tensors["data"], 0, index, 0, rows.shape[1], blocks.is_bitmask(entry), layout, packed._table(entry, stored), rows, 1.0)
    return status, done


@pytest.mark.parametrize(
    "frame",
    [
        "raw, in one block",
        "raw, in many blocks",
        "rle",
        "compressed with a checksum",
    ],
)
def test_every_frame_kind_reads_as_the_python_reader_reads_it(frame: str) -> None:
    import zstandard

    distinct = torch.zeros(9, 40)
    distinct[::2, ::3] = (1 + torch.arange(70).reshape(5, 14) / 128) * 2.0**-8  # each value once: every code the escape
    delta = distinct if frame == "rle" else _delta(9, 40, 5)  # "rle": a run of one code
    entry, _, original = _one_block(delta=delta)
    codes = _stream(original, 1)
    assert len(codes) > 1 and (frame != "rle" or set(codes) == {codes[0]})
    if frame == "rle":
        built = _rle_frame(codes[0], len(codes))
    elif frame == "raw, in many blocks":
        with pytest.MonkeyPatch.context() as m:
            m.setattr(blocks, "_RAW_BLOCK", 7)
            built = blocks._stored_frame(codes)
        assert len(built) == 9 + len(codes) + 3 * -(-len(codes) // 7)
    elif frame == "raw, in one block":
        built = blocks._stored_frame(codes)
    else:
        built = zstandard.ZstdCompressor(write_checksum=True).compress(codes)
    entry, stored, _ = _one_block(code_frame=built, delta=delta)
    base = torch.randn(9, 40, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    by_block, _, rows, _ = _walked(entry, stored, 0, 9, base, 1.0, separate=True)
    assert torch.equal(rows.view(torch.int16), by_block.view(torch.int16))
    run = base.clone()
    assert _run(entry, stored, run) == (0, 1) or (frame == "compressed with a checksum" and not _kernels.zstd_frames())
    assert torch.equal(run.view(torch.int16), by_block.view(torch.int16))


@pytest.mark.parametrize(
    "change",
    ["a byte after the frame", "a second frame", "a frame without its size", "a frame declaring more than the index"],
)
def test_a_frame_the_run_does_not_read_is_left_to_the_python_reader_untouched(change: str) -> None:
    import zstandard

    entry, _, original = _one_block()
    codes = _stream(original, 1)
    framed = blocks._stored_frame(codes)
    built = {
        "a byte after the frame": framed + b"\x00",
        "a second frame": framed + blocks._stored_frame(b"\x01"),
        "a frame without its size": zstandard.ZstdCompressor(write_content_size=False).compress(codes),
        "a frame declaring more than the index": blocks._stored_frame(codes + b"\x00"),
    }[change]
    entry, stored, _ = _one_block(code_frame=built)
    rows = torch.ones(9, 40, dtype=torch.bfloat16)
    assert _run(entry, stored, rows) == (_kernels.FRAMES, 0)
    assert torch.equal(rows, torch.ones(9, 40, dtype=torch.bfloat16))  # nothing of the block written
    try:  # the Python reader's verdict stands, whichever it is
        expected = ENCODINGS["packed"].decode_rows(entry, stored, 0, 9)
    except FormatError as exc:
        with pytest.raises(FormatError, match="tensor w: a packed frame of the block from row 0"):
            ENCODINGS["packed"].add_into(entry, stored, 0, 9, rows, 1.0)
        assert "the vector is corrupt" in str(exc)
    else:
        ENCODINGS["packed"].add_into(entry, stored, 0, 9, rows, 1.0)
        assert torch.equal(rows, (torch.ones(9, 40) + expected).to(torch.bfloat16))


def test_a_corrupt_block_inside_a_run_is_named_after_the_blocks_before_it_are_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "_NIBBLES_WITHIN", 0.0)
    entry, stored = encode_one("packed", _delta(40, 50, 7), rows_per_block=8)
    index, data = stored.tensors["index"].clone(), bytearray(stored.tensors["data"].numpy().tobytes())
    table = stored.tensors["table"].numel()
    _, count, _, _, end_positions, end_codes, _ = index[2].tolist()
    codes = bytearray(_stream(stored, 1, block=2))
    codes[count // 2] = table  # a code past the codebook, not the escape code
    framed = blocks._stored_frame(bytes(codes))
    rebuilt = bytes(data[:end_positions]) + framed + bytes(data[end_codes:])
    shift = len(framed) - (end_codes - end_positions)
    index[2, 5] += shift
    index[2, 6] += shift
    index[3:, 4:] += shift
    broken = StoredPayload({**stored.tensors, "index": index, "data": torch.frombuffer(bytearray(rebuilt), dtype=torch.uint8)})
    assert table < blocks.ESCAPE
    rows = torch.zeros(40, 50, dtype=torch.bfloat16)
    with pytest.raises(FormatError, match="tensor w: the packed block from row 16 uses a code outside its codebook; the vector is corrupt"):
        ENCODINGS["packed"].add_into(entry, broken, 0, 40, rows, 1.0)
    assert torch.equal(rows[:16], ENCODINGS["packed"].decode_rows(entry, stored, 0, 16).to(torch.bfloat16))  # the two blocks before it
