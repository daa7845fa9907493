"""Bitmask positions of `packed` and `quantized` blocks: round trips, the vector and scalar walks against
torch, the fused add against the general path, corrupt streams, and gap-coded vectors still read."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rvec_hub import FormatError, fused

try:
    from rvec_hub import _kernels
except ImportError:  # installed without the compiled part: the tests that need it skip
    _kernels = None
from rvec_hub.arith import add_rows
from rvec_hub.encodings import ENCODINGS, blocks
from rvec_hub.manifest import TensorEntry

from codec_common import StoredPayload, block_codes, encode_one, rl_delta, walking

needs_kernels = pytest.mark.skipif(not fused.available(), reason="the compiled kernels are not built")


@pytest.fixture(params=["gathered", "vector", "scalar"])
def walk(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test three times: every walk this CPU has (a fused add's gathered walks need VBMI2), the AVX-512
    walk without them, then the scalar walk."""
    if not fused.available():
        pytest.skip("the compiled kernels are not built")
    with walking(request.param):
        yield request.param


def _walk_taken(walk: str) -> str:
    """The walk a fused add takes with the walks up to `walk` allowed, on this CPU (Linux's flags)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    has = ["scalar"]
    if platform.machine() == "x86_64" and {"avx512f", "avx512bw", "avx512vl", "avx512dq", "bmi2"} <= flags:
        has.append("vector")
        if {"avx512vbmi", "avx512_vbmi2"} <= flags:
            has.append("gathered")
    allowed = _kernels.WALKS[: _kernels.WALKS.index(walk) + 1]
    return [w for w in has if w in allowed][-1]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


def _streams(entry: TensorEntry, stored: StoredPayload, block: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decompressed position, code (a byte each) and escape streams of one block."""
    import zstandard

    index = stored.tensors["index"].tolist()
    begin = index[block - 1][6] if block else 0
    _, _, _, _, end_positions, end_codes, end = index[block]
    data = stored.tensors["data"].numpy().tobytes()
    frames = [data[a:b] for a, b in [(begin, end_positions), (end_positions, end_codes), (end_codes, end)]]
    positions, codes, planes = (np.frombuffer(zstandard.ZstdDecompressor().decompress(f), dtype=np.uint8).copy() if f else np.zeros(0, np.uint8) for f in frames)
    return positions, block_codes(entry, codes, int(index[block][1])), planes


def _with_escapes(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """An RL-like delta with values beyond any codebook and a few negative zeros."""
    delta = rl_delta(rows, cols, seed)
    g = torch.Generator().manual_seed(seed + 1)
    spots = torch.randperm(rows * cols, generator=g)[: max(3, rows * cols // 50)]
    delta.view(-1)[spots] = (torch.randn(spots.numel(), generator=g) * 1e-2).to(torch.bfloat16).float()
    delta.view(-1)[spots[:2]] = -0.0
    return delta


@pytest.mark.parametrize("shape", [(50, 300), (15, 63), (7, 5), (1, 1000), (33, 16)])
def test_dense_enough_deltas_store_bitmask_positions_and_round_trip_by_row_range(walk: str, shape: tuple[int, int]) -> None:
    delta = _with_escapes(*shape)
    entry, stored = encode_one("packed", delta, rows_per_block=4)
    assert entry.params["positions"] == "bitmask"
    assert stored.tensors["index"][0, 3] == -(-min(4, shape[0]) * shape[1] // 8)  # one bit per element
    codec = ENCODINGS["packed"]
    rows = shape[0]
    for start, stop in [(0, rows), (0, 1), (rows // 2, rows), (rows - 1, rows)]:
        assert _same_bits(codec.decode_rows(entry, stored, start, stop), delta[start:stop])


def test_sparse_deltas_keep_gap_positions() -> None:
    delta = torch.zeros(40, 64)
    delta[::3, ::7] = 2.0**-10  # 1 element in 21: below one in 16
    entry, stored = encode_one("packed", delta)
    assert "positions" not in entry.params
    assert _same_bits(ENCODINGS["packed"].decode_rows(entry, stored, 0, 40), delta)
    assert blocks.position_coding(63, 1000) == "bitmask" and blocks.position_coding(62, 1000) == "gaps"
    assert blocks.position_coding(651, 1000) == "every"


@pytest.mark.parametrize("encoding", ["packed", "quantized"])
def test_a_vector_with_gap_positions_still_decodes_and_adds(walk: str, encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    delta = rl_delta(20, 96)
    options = {"bits": 3} if encoding == "quantized" else {}
    monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)  # the layout before bitmasks: gaps at any density
    gap_entry, gap_stored = encode_one(encoding, delta, rows_per_block=6, **options)
    monkeypatch.undo()
    entry, stored = encode_one(encoding, delta, rows_per_block=6, **options)
    assert "positions" not in gap_entry.params and entry.params["positions"] == "bitmask"
    codec = ENCODINGS[encoding]
    assert stored.tensors["data"].numel() != gap_stored.tensors["data"].numel()
    assert _same_bits(codec.decode_rows(gap_entry, gap_stored, 0, 20), codec.decode_rows(entry, stored, 0, 20))
    base = (torch.randn(20, 96, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    a, b = base.clone(), base.clone()
    assert codec.add_into(gap_entry, gap_stored, 0, 20, a, 1.0)[0] == 0
    assert codec.add_into(entry, stored, 0, 20, b, 1.0)[0] == 0
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))


# bf16 values (bytes looked up), float32 ones with escapes, a codebook of 16 values with row scales, one of 256
_VALUES = {"packed": ("packed", {}), "packed float32": ("packed", {"dtype": torch.float32}), "quantized": ("quantized", {"bits": 4}),
           "quantized 8 bits": ("quantized", {"bits": 8})}


@pytest.mark.parametrize("values", list(_VALUES))
@pytest.mark.parametrize("shape", [(40, 96), (30, 37), (64, 5), (3, 2000)])
@pytest.mark.parametrize("alpha", [1.0, -0.5])
def test_the_fused_bitmask_add_equals_the_general_path(walk: str, values: str, shape: tuple[int, int], alpha: float) -> None:
    delta = _with_escapes(*shape, seed=2)
    encoding, options = _VALUES[values]
    if "dtype" in options:
        delta = delta * (1 + 2**-10)  # values bf16 cannot hold
    entry, stored = encode_one(encoding, delta, rows_per_block=7, **options)
    if "dtype" in options:
        assert bool((stored.tensors["table"].view(torch.int32) & 0xFFFF).any())
    assert entry.params["positions"] == "bitmask"
    codec = ENCODINGS[encoding]
    base = (torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    base.view(-1)[::11] = -0.0
    expected = add_rows(base.clone(), [(codec.decode_rows(entry, stored, 0, shape[0]), alpha)], torch.bfloat16)
    for start, stop in [(0, shape[0]), (1, shape[0] - 1)]:  # whole blocks, and blocks cut by the range
        rows = base[start:stop].clone()
        status, err_sq, norm_sq = codec.add_into(entry, stored, start, stop, rows, alpha)
        assert status == 0
        if stop - start == shape[0]:  # every block added whole: the walk the CPU and the setting allow
            assert _kernels.last_walk() == _walk_taken(walk)
        # Equal values: a base -0.0 the vector leaves alone stays -0.0, where the general path's sum gives +0.0.
        assert torch.equal(rows.float(), expected[start:stop].float())
    decoded = codec.decode_rows(entry, stored, 0, shape[0])
    rows = base.clone()
    _, err_sq, norm_sq = codec.add_into(entry, stored, 0, shape[0], rows, alpha)
    exact = base.float() + alpha * decoded
    touched = decoded != 0
    assert norm_sq == pytest.approx(float((alpha * decoded).square().sum()), rel=1e-4)
    assert err_sq == pytest.approx(float((rows.float() - exact)[touched].square().sum()), rel=1e-3, abs=1e-12)


def test_the_fused_bitmask_add_names_a_sum_out_of_range(walk: str) -> None:
    delta = rl_delta(8, 64)
    entry, stored = encode_one("packed", delta)
    rows = torch.full((8, 64), 3e38, dtype=torch.bfloat16)
    status, _, _ = ENCODINGS["packed"].add_into(entry, stored, 0, 8, rows, 1e38 / float(delta.abs().max()))
    assert status == fused.BAD_VALUE


def _corruptions(positions: np.ndarray, codes: np.ndarray, escaped: torch.Tensor, elements: int) -> list[tuple[str, np.ndarray, np.ndarray, torch.Tensor]]:
    first_zero = int(np.flatnonzero(np.unpackbits(positions, bitorder="little")[:elements] == 0)[0])
    first_one = int(np.flatnonzero(np.unpackbits(positions, bitorder="little"))[0])
    extra, missing, padded = positions.copy(), positions.copy(), positions.copy()
    extra[first_zero // 8] |= 1 << (first_zero % 8)
    missing[first_one // 8] &= ~(1 << (first_one % 8)) & 0xFF
    padded[-1] |= 0x80  # a bit past the block's last element
    bad_code = codes.copy()
    bad_code[0] = 254
    return [
        ("has more entries than codes", extra, codes, escaped),
        ("leaves codes unused", missing, codes, escaped),
        ("places an entry past its last element", padded, codes, escaped),
        ("does not fit its elements", positions[:-1], codes, escaped),
        ("has more entries than codes", positions, codes[:-1], escaped),
        ("uses a code outside its codebook", positions, bad_code, escaped),
        ("more escaped codes than escaped values", positions, codes, escaped[:-1]),
        ("leaves escaped values unused", positions, codes, torch.cat([escaped, escaped[:1]])),
    ]


def test_the_vector_scalar_and_torch_walks_decode_alike_and_refuse_the_same_corruptions(walk: str) -> None:
    delta = _with_escapes(15, 63)  # 945 elements: the bitmask's last byte holds one element
    entry, stored = encode_one("packed", delta)
    positions, codes, planes = _streams(entry, stored)
    escapes = int(stored.tensors["index"][0, 2])
    escaped = torch.from_numpy(planes.reshape(2, escapes).T.copy()).view(torch.bfloat16).reshape(-1).float()
    table = stored.tensors["table"].float()
    assert table.numel() < 254 and escapes > 1
    kernel = blocks._compiled_kernel()

    def both(p: np.ndarray, c: np.ndarray, e: torch.Tensor) -> tuple[str | None, str | None, torch.Tensor, torch.Tensor]:
        a, b = torch.full((delta.numel(),), 7.0), torch.full((delta.numel(),), 7.0)  # both fill every element
        fast = blocks._STATUS.get(int(kernel(p, c, table.numpy(), e.numpy(), a.numpy(), None, 63, True)))
        slow = blocks.scatter_torch(p, c, table, e, b, bitmask=True)
        return fast, slow, a, b

    fast, slow, a, b = both(positions, codes, escaped)
    assert fast is None and slow is None
    assert _same_bits(a, delta.reshape(-1)) and _same_bits(b, delta.reshape(-1))
    for problem, p, c, e in _corruptions(positions, codes, escaped, delta.numel()):
        fast, slow, _, _ = both(p, c, e)
        assert fast == slow and problem in fast
        rows = torch.zeros(15, 63, dtype=torch.bfloat16)
        status, _, _ = fused.add_coded(rows, p, c, table.numpy(), e.numpy(), 1.0, bitmask=True)
        assert blocks._STATUS[status] == fast


def test_a_corruption_deep_in_a_long_block_is_named_whichever_walk_adds_it(walk: str) -> None:
    delta = _with_escapes(64, 300, seed=7)  # 19 200 elements: the gathered walk's rounds, then its last partial step
    entry, stored = encode_one("packed", delta, rows_per_block=64)
    positions, codes, planes = _streams(entry, stored)
    escapes = int(stored.tensors["index"][0, 2])
    escaped = torch.from_numpy(planes.reshape(2, escapes).T.copy()).view(torch.bfloat16).reshape(-1).float()
    table = stored.tensors["table"].float()
    assert table.numel() < 254
    base = (torch.randn(64, 300, generator=torch.Generator().manual_seed(8)) * 0.02).to(torch.bfloat16)
    rows = base.clone()
    assert fused.add_coded(rows, positions, codes, table, escaped, 1.0, bitmask=True)[0] == 0
    expected = add_rows(base.clone(), [(ENCODINGS["packed"].decode_rows(entry, stored, 0, 64), 1.0)], torch.bfloat16)
    assert torch.equal(rows.float(), expected.float())
    for at in (codes.size // 2, codes.size - 1):  # in a later round, and in the last partial step
        bad = codes.copy()
        bad[at] = 254
        assert blocks._STATUS[fused.add_coded(base.clone(), positions, bad, table, escaped, 1.0, bitmask=True)[0]] == "uses a code outside its codebook"
    assert fused.add_coded(base.clone(), positions, codes, table, escaped[:-1], 1.0, bitmask=True)[0] == 4  # an escape code with no value left
    assert fused.add_coded(base.clone(), positions, codes[:-1], table, escaped, 1.0, bitmask=True)[0] == 2  # more entries than codes


@pytest.mark.parametrize("bits", [2, 4, 8])  # codebooks of 4 and 16 values in one register, and one of 256
@pytest.mark.parametrize("cols", [320, 300])  # rows of whole steps of thirty-two elements, and rows that are not
def test_a_quantized_block_adds_as_the_general_path_and_names_its_corruptions_whichever_walk(walk: str, bits: int, cols: int) -> None:
    delta = rl_delta(40, cols, seed=5) * torch.linspace(0.5, 4.0, 40).reshape(40, 1)  # each row its own scale
    delta[7] = 0.0  # a row the vector leaves alone
    entry, stored = encode_one("quantized", delta, bits=bits, rows_per_block=40)
    assert entry.params["positions"] == "bitmask"
    positions, codes, _ = _streams(entry, stored)
    table = stored.tensors["table"].float().numpy()
    scales = stored.tensors["scales"].float().numpy()
    base = (torch.randn(40, cols, generator=torch.Generator().manual_seed(6)) * 0.02).to(torch.bfloat16)
    base.view(-1)[::13] = -0.0  # kept where the vector has no entry
    expected = add_rows(base.clone(), [(ENCODINGS["quantized"].decode_rows(entry, stored, 0, 40), -0.75)], torch.bfloat16)
    for separate in (False, True):
        rows = torch.full_like(base, 3.0) if separate else base.clone()
        status, err_sq, norm_sq = fused.add_coded(rows, positions, codes, table, None, -0.75, scales, True, base if separate else None)
        assert status == 0 and norm_sq > 0
        assert _same_bits(rows, expected)
    for at in (0, codes.size // 2, codes.size - 1) if table.size <= 200 else ():  # the first step, a middle one, the last
        bad = codes.copy()
        bad[at] = 200
        assert blocks._STATUS[fused.add_coded(base.clone(), positions, bad, table, None, 1.0, scales, True)[0]] == "uses a code outside its codebook"
    assert fused.add_coded(base.clone(), positions, codes[:-1], table, None, 1.0, scales, True)[0] == 2  # more entries than codes
    assert fused.add_coded(base.clone(), positions, np.r_[codes, codes[:1]], table, None, 1.0, scales, True)[0] == 5  # codes left over


def test_a_bitmask_index_of_the_wrong_size_and_an_unknown_position_coding_are_refused() -> None:
    entry, stored = encode_one("packed", rl_delta(20, 30), rows_per_block=5)
    index = stored.tensors["index"].clone()
    index[1, 3] += 1
    with pytest.raises(FormatError, match="bitmask bytes in rows 5-10"):
        ENCODINGS["packed"].decode_rows(entry, StoredPayload({**stored.tensors, "index": index}), 0, 20)
    for encoding, options in [("packed", {}), ("quantized", {"bits": 2})]:
        entry, stored = encode_one(encoding, rl_delta(20, 30), **options)
        odd = entry.model_copy(update={"params": {**entry.params, "positions": "runs"}})
        assert any("positions 'runs' is not a position coding" in p for p in ENCODINGS[encoding].validate(odd, stored))


@pytest.mark.parametrize("bits", [3, 8])  # a codebook in one register, and one of 256 values
@pytest.mark.parametrize("cols", [5, 20, 48])  # rows narrower than a vector step, rows that start inside one, and aligned rows
def test_quantized_bitmask_rows_take_their_own_scales_as_torch_does(walk: str, cols: int, bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    delta = rl_delta(64, cols, seed=3) * torch.arange(1, 65).reshape(64, 1)  # each row its own scale
    entry, stored = encode_one("quantized", delta, bits=bits, rows_per_block=9)
    assert entry.params["positions"] == "bitmask"
    codec = ENCODINGS["quantized"]
    compiled = codec.decode_rows(entry, stored, 0, 64)
    monkeypatch.setattr(blocks, "_compiled_kernel", lambda: None)
    assert _same_bits(compiled, codec.decode_rows(entry, stored, 0, 64))
    assert len(set(stored.tensors["scales"].tolist())) > 32


@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 17) + 5])
def test_a_stream_zstd_barely_shrinks_is_a_frame_of_raw_blocks_any_zstd_decoder_reads(size: int) -> None:
    import zstandard

    noise = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    frame = blocks.frame(noise)
    if not size:
        assert frame == b""
        return
    assert len(frame) < size + 32  # raw blocks: 3 bytes a block, a 9-byte header
    assert zstandard.ZstdDecompressor().decompress(frame, max_output_size=size) == noise.tobytes()
    assert zstandard.frame_content_size(frame) == size
    runs = np.zeros(size, dtype=np.uint8)
    assert len(blocks.frame(runs)) < max(32, size // 10)  # what zstd shrinks stays compressed


def test_a_bitmask_with_a_quarter_of_its_bits_set_is_stored_raw_and_decodes() -> None:
    delta = rl_delta(64, 1024)  # about a quarter of the weights move
    entry, stored = encode_one("packed", delta)
    end_positions = int(stored.tensors["index"][0, 4])
    assert end_positions < 64 * 1024 // 8 + 64  # the bitmask frame is raw: its bytes and a few of header
    assert _same_bits(ENCODINGS["packed"].decode_rows(entry, stored, 0, 64), delta)


@pytest.mark.parametrize(  # quantized never codes every element
    ("coding", "encoding"), [("bitmask", "packed"), ("gaps", "packed"), ("every", "packed"), ("bitmask", "quantized"), ("gaps", "quantized")]
)
def test_adding_from_separate_base_rows_writes_what_adding_in_place_does(walk: str, coding: str, encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    delta = _with_escapes(30, 40, seed=5)
    if coding == "every":
        delta = (delta + torch.randn(30, 40, generator=torch.Generator().manual_seed(6)) * 1e-3).to(torch.bfloat16).float()
    if coding == "gaps":
        monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)
    options = {"bits": 4} if encoding == "quantized" else {}
    entry, stored = encode_one(encoding, delta, rows_per_block=7, **options)
    assert ("positions" in entry.params) == (coding == "bitmask")
    codec = ENCODINGS[encoding]
    base = (torch.randn(30, 40, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    base.view(-1)[::13] = -0.0
    for start, stop in [(0, 30), (3, 25)]:  # whole blocks, and blocks the range cuts
        in_place = base[start:stop].clone()
        expected = codec.add_into(entry, stored, start, stop, in_place, 0.75)
        rows = torch.full((stop - start, 40), float("nan"), dtype=torch.bfloat16)  # every weight gets written
        pristine = base[start:stop].clone()
        got = codec.add_into(entry, stored, start, stop, rows, 0.75, base=pristine)
        assert torch.equal(rows.view(torch.int16), in_place.view(torch.int16)) and got == expected
        assert torch.equal(pristine.view(torch.int16), base[start:stop].view(torch.int16))  # the base is only read


@needs_kernels
@pytest.mark.parametrize("fuses", [True, False])
def test_a_vector_adds_from_base_rows_in_one_pass_or_after_copying_them(family, vector_dir, fuses: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from rvec_hub import Vector, open_checkpoint

    vector, base = Vector.open(vector_dir), open_checkpoint(family["instruct"])
    name = next(n for n, e in vector.entries.items() if e.encoding == "dense" and len(e.shape) == 2)
    assert ENCODINGS["dense"].adds_from_base
    if not fuses:  # an encoding whose add_into only adds in place: the vector copies the base rows first
        monkeypatch.setitem(ENCODINGS, "dense", dataclasses.replace(ENCODINGS["dense"], adds_from_base=False))
    pristine = base.read_rows(name)
    in_place = pristine.clone()
    expected = vector.add_into(name, 0, pristine.shape[0], in_place, 1.0)
    rows = torch.full_like(pristine, float("nan"))
    assert vector.add_into(name, 0, pristine.shape[0], rows, 1.0, base=pristine) == expected
    assert torch.equal(rows.view(torch.int16), in_place.view(torch.int16))
    assert not torch.equal(in_place.view(torch.int16), pristine.view(torch.int16))


def test_blocks_beyond_the_kept_value_buffer_decode_and_add_as_the_general_path(walk: str) -> None:
    """The vector walk keeps its buffer of looked-up values per thread up to 16 MB: a block of more codes
    (here 4.5 M) takes a buffer of its own, and the small block after it the kept one again."""
    g = torch.Generator().manual_seed(5)
    rows, cols = 2200, 4096
    delta = (torch.randint(-3, 4, (rows, cols), generator=g).float() * 1e-4).to(torch.bfloat16).float()
    delta[torch.rand(rows, cols, generator=g) < 0.45] = 0.0
    entry, stored = encode_one("packed", delta, rows_per_block=rows - 3)
    assert entry.params["positions"] == "bitmask"
    assert int(torch.count_nonzero(delta[: rows - 3])) > (16 << 20) // 4
    codec = ENCODINGS["packed"]
    base = (torch.randn(rows, cols, generator=g) * 0.02).to(torch.bfloat16)
    assert int(torch.count_nonzero(base)) == base.numel()  # no zero whose sign the general path's sum could flip
    added = base.clone()
    assert codec.add_into(entry, stored, 0, rows, added, 1.0)[0] == 0
    expected = add_rows(base.clone(), [(delta, 1.0)], torch.bfloat16)
    assert torch.equal(added.view(torch.int16), expected.view(torch.int16))
    assert _same_bits(codec.decode_rows(entry, stored, 0, rows), delta)
