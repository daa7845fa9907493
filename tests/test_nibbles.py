"""`packed`'s "nibbles" code layout: chosen by size, decoded alike with and without the compiled kernels,
every corruption refused with the tensor named."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from rvec_hub import FormatError, fused
from rvec_hub.arith import add_rows
from rvec_hub.encodings import ENCODINGS, blocks, packed

from codec_common import StoredPayload, encode_one, rl_delta, walking, without_kernels

CODEC = ENCODINGS["packed"]


@pytest.fixture(params=["gathered", "vector", "scalar", "numpy"])
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test with every walk of the compiled kernels this CPU allows, then without the compiled part."""
    if request.param == "numpy":
        without_kernels(monkeypatch)
        yield request.param
        return
    if not fused.available():
        pytest.skip("the compiled kernels are not built")
    with walking(request.param):
        yield request.param


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


def _in_bytes(delta: torch.Tensor, monkeypatch: pytest.MonkeyPatch, **options: object):
    """`delta` encoded with a byte per code, as before nibbles (and where nibbles do not pay)."""
    with monkeypatch.context() as m:
        m.setattr(packed, "_NIBBLES_WITHIN", 0.0)
        return encode_one("packed", delta, **options)


def test_codes_go_in_nibbles_only_where_they_cost_at_most_a_quarter_more(monkeypatch: pytest.MonkeyPatch) -> None:
    delta = rl_delta(64, 300)  # a few dozen values of a few ULPs: about four bits a code
    entry, stored = encode_one("packed", delta, rows_per_block=16)
    old_entry, old_stored = _in_bytes(delta, monkeypatch, rows_per_block=16)
    assert entry.params["codes"] == "nibbles" and "codes" not in old_entry.params

    def code_bytes(stored: StoredPayload) -> int:
        return int((stored.tensors["index"][:, 5] - stored.tensors["index"][:, 4]).sum())

    counts = stored.tensors["index"][:, 1]
    assert code_bytes(stored) >= int(((counts + 1) // 2).sum())  # two codes a byte, and the long ones whole
    assert code_bytes(stored) <= packed._NIBBLES_WITHIN * code_bytes(old_stored)
    few = torch.zeros(64, 300)
    few[::3, ::2] = 2.0**-20  # one value: zstd codes it in far less than half a byte
    assert "codes" not in encode_one("packed", few)[0].params
    assert "codes" not in encode_one("packed", torch.zeros(4, 8))[0].params  # no codes at all


@pytest.mark.parametrize("positions", ["bitmask", "gaps", "every"])
def test_nibble_and_byte_codes_decode_and_add_alike(positions: str, walk: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if positions == "gaps":
        monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)
    delta = rl_delta(40, 97, seed=3)  # rows of 97: blocks and steps end inside rows
    if positions == "every":  # every element non-zero, a few ULPs each, the small ones the most frequent
        g = torch.Generator().manual_seed(4)
        steps = torch.floor(torch.log(torch.rand(40, 97, generator=g)) / np.log(0.8)) + 1
        delta = (steps * 2.0**-16 * torch.where(torch.rand(40, 97, generator=g) < 0.5, -1.0, 1.0)).to(torch.bfloat16).float()
    delta.view(-1)[::41] = (torch.randn(delta.numel(), generator=torch.Generator().manual_seed(5)).view(-1)[::41] * 1e-2).to(torch.bfloat16).float()
    entry, stored = encode_one("packed", delta, rows_per_block=9)
    old_entry, old_stored = _in_bytes(delta, monkeypatch, rows_per_block=9)
    assert entry.params["codes"] == "nibbles" and (positions == "every") == (int(stored.tensors["index"][0, 3]) == 0)
    for start, stop in [(0, 40), (5, 23), (39, 40)]:
        assert _same_bits(CODEC.decode_rows(entry, stored, start, stop), delta[start:stop])
    if walk == "numpy":
        return
    base = (torch.randn(40, 97, generator=torch.Generator().manual_seed(6)) * 0.02).to(torch.bfloat16)
    rows, old_rows = base.clone(), base.clone()
    assert CODEC.add_into(entry, stored, 0, 40, rows, 0.7)[0] == 0
    assert CODEC.add_into(old_entry, old_stored, 0, 40, old_rows, 0.7)[0] == 0
    assert torch.equal(rows.view(torch.int16), old_rows.view(torch.int16))
    assert torch.equal(rows.float(), add_rows(base.clone(), [(delta, 0.7)], torch.bfloat16).float())


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 127, 128, 129, 1000, 100_001])
def test_widening_is_the_same_whichever_walk_and_names_each_corruption(n: int, walk: str) -> None:
    g = np.random.default_rng(n)
    codes = g.integers(0, 256, size=n).astype(np.uint8)
    short = g.random(n) < 0.8
    codes[short] = g.integers(0, 15, size=int(short.sum()))
    data = packed._nibbles(codes)
    assert data.size == packed._nibble_bytes(codes)

    def widened(d: np.ndarray) -> tuple[np.ndarray, int]:
        if walk == "numpy":
            return packed._unnibbled_numpy(d, n)
        from rvec_hub import _kernels

        return _kernels.unnibble_codes(d, n)

    out, status = widened(data)
    assert status == 0 and np.array_equal(out, codes)
    half = (n + 1) // 2
    assert widened(np.append(data, np.uint8(7)))[1] == 4  # a long code left over
    if half:
        assert widened(data[: half - 1])[1] == 1  # fewer bytes than the nibbles need
    if (codes >= 15).any():
        assert widened(data[:-1])[1] == (1 if data.size - 1 < half else 3)  # a 15 with no long code
    if n % 2:
        padded = data.copy()
        padded[n // 2] |= 0x10  # the unused nibble after the last code
        assert widened(padded)[1] == 2


def _with_code_frame(stored: StoredPayload, code_bytes: bytes) -> StoredPayload:
    """A one-block tensor's payload with its code frame replaced by `code_bytes`, stored raw."""
    index = stored.tensors["index"].clone()
    _, _, _, _, end_positions, end_codes, end = index[0].tolist()
    data = stored.tensors["data"].numpy().tobytes()
    framed = blocks._stored_frame(code_bytes)
    rebuilt = data[:end_positions] + framed + data[end_codes:end]
    index[0, 5] = end_positions + len(framed)
    index[0, 6] = len(rebuilt)
    return StoredPayload({**stored.tensors, "index": index, "data": torch.frombuffer(bytearray(rebuilt), dtype=torch.uint8)})


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d, half: d[: half - 1], "holds fewer code bytes than its codes need"),
        (lambda d, half: d[:-1], "names more long codes than it holds"),
        (lambda d, half: np.append(d, np.uint8(3)), "leaves long codes unused"),
        (lambda d, half: np.concatenate([d[: half - 1], [d[half - 1] | 0x10], d[half:]]).astype(np.uint8), "sets a code nibble past its last code"),
        (lambda d, half: np.concatenate([d, d, d]), "declares .* bytes, the index says at most"),
    ],
)
def test_a_corrupt_nibble_frame_is_refused_with_the_tensor_named(corrupt, message, walk: str) -> None:
    delta = rl_delta(8, 51)
    delta.view(-1)[::29] = torch.linspace(0.01, 0.02, delta.view(-1)[::29].numel())  # long codes: values beyond the codebook
    delta = delta.to(torch.bfloat16).float()
    while int(delta.count_nonzero()) % 2 == 0:  # an odd count of codes: the last byte's upper nibble unused
        delta.view(-1)[int(delta.view(-1).nonzero()[-1])] = 0
    entry, stored = encode_one("packed", delta)
    assert entry.params["codes"] == "nibbles"
    import zstandard

    _, count, _, _, end_positions, end_codes, _ = stored.tensors["index"][0].tolist()
    data = np.frombuffer(zstandard.ZstdDecompressor().decompress(stored.tensors["data"].numpy()[end_positions:end_codes].tobytes()), dtype=np.uint8)
    assert data.size > (count + 1) // 2  # some long codes
    assert _same_bits(CODEC.decode_rows(entry, _with_code_frame(stored, data.tobytes()), 0, 8), delta)
    broken = _with_code_frame(stored, corrupt(data, (count + 1) // 2).tobytes())
    with pytest.raises(FormatError, match=f"tensor w: .*packed .*block from row 0 {message}.*; the vector is corrupt"):
        CODEC.decode_rows(entry, broken, 0, 8)
    if walk != "numpy":
        with pytest.raises(FormatError, match=f"tensor w: .*packed .*block from row 0 {message}"):
            CODEC.add_into(entry, broken, 0, 8, torch.zeros(8, 51, dtype=torch.bfloat16), 1.0)


def test_an_unknown_packed_code_layout_is_named() -> None:
    entry, stored = encode_one("packed", rl_delta(6, 50))
    odd = entry.model_copy(update={"params": {**entry.params, "codes": "bitpacked"}})
    assert CODEC.validate(odd, stored) == ["tensor w: packed codes 'bitpacked' is not a code layout rvec knows (\"nibbles\", or absent for a byte each)"]

