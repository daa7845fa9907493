"""The lossy `quantized` encoding: error bounds, row ranges, corrupt payloads refused, and `rvec compress` with it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rvec_hub import FormatError, UsageError, Vector, apply_vectors, compress, fused, open_checkpoint
from rvec_hub.arith import add_rows
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.encodings import ENCODINGS, blocks, quantized
from rvec_hub.manifest import load_manifest

from codec_common import StoredPayload, block_codes, encode_one, rl_delta, walking, without_kernels

CODEC = ENCODINGS["quantized"]
_encoded = partial(encode_one, "quantized")  # (entry, payload) of one quantized tensor "w"


def _rel(delta: torch.Tensor, approx: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(delta - approx) / torch.linalg.vector_norm(delta)).item()


def test_error_falls_with_bits_and_matches_the_recorded_error() -> None:
    delta = rl_delta(64, 200)
    errors = []
    for bits in (1, 2, 4, 8):
        entry, stored = _encoded(delta, bits=bits, rows_per_block=10)
        decoded = CODEC.decode_rows(entry, stored, 0, 64)
        errors.append(_rel(delta, decoded))
        assert errors[-1] == pytest.approx(entry.stats["rel_error"], rel=1e-4, abs=1e-6)
        # Zeros stay zero and every non-zero is kept: the positions are exact.
        assert torch.equal(decoded != 0, delta != 0)
    assert errors == sorted(errors, reverse=True)
    assert errors[0] < 0.65 and errors[-1] < 0.02  # a sign and a row scale already halve the error of zeroing


def test_keep_drops_the_smallest_entries() -> None:
    delta = rl_delta(32, 100)
    entry, stored = _encoded(delta, bits=8, keep=0.5)
    decoded = CODEC.decode_rows(entry, stored, 0, 32)
    kept = decoded != 0
    assert kept.sum().item() == pytest.approx(0.5 * (delta != 0).sum().item(), rel=0.05)
    assert delta[kept].abs().min() >= delta[(delta != 0) & ~kept].abs().max()
    assert entry.params["density"] == pytest.approx(kept.float().mean().item())


def test_any_row_range_decodes_as_the_same_rows_of_the_whole() -> None:
    delta = rl_delta(30, 70, seed=3)
    entry, stored = _encoded(delta, bits=3, rows_per_block=7)
    whole = CODEC.decode_rows(entry, stored, 0, 30)
    for start, stop in [(0, 7), (5, 9), (13, 30), (29, 30)]:
        assert torch.equal(CODEC.decode_rows(entry, stored, start, stop), whole[start:stop])


def test_compiled_and_torch_scatters_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    if blocks._compiled_kernel() is None:
        pytest.skip("the compiled kernels are not built")
    delta = rl_delta(8, 40)
    entry, stored = _encoded(delta, bits=2, rows_per_block=3)
    fast = CODEC.decode_rows(entry, stored, 0, 8)
    monkeypatch.setattr(blocks, "_compiled_kernel", lambda: None)
    assert torch.equal(CODEC.decode_rows(entry, stored, 0, 8), fast)


@pytest.mark.skipif(not fused.available(), reason="the fused add needs the compiled kernels")
def test_fused_add_passes_over_blocks_without_kept_entries() -> None:
    delta = torch.zeros(8, 16)
    delta[0, 3], delta[1, 5] = 1e-3, -2e-3
    entry, stored = _encoded(delta, bits=2, rows_per_block=2)  # rows 2-8: three blocks without entries
    rows = (torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    expected = add_rows(rows, [(CODEC.decode_rows(entry, stored, 0, 8), 1.0)], torch.bfloat16)
    status, _, _ = CODEC.add_into(entry, stored, 0, 8, rows, 1.0)
    assert status == 0 and torch.equal(rows.view(torch.int16), expected.view(torch.int16))


def _frames(entry, stored: StoredPayload) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A one-block payload's index row, position stream and codes (a byte each, whatever the layout)."""
    import zstandard

    index = stored.tensors["index"][0].tolist()
    data = stored.tensors["data"].numpy().tobytes()
    gaps = np.frombuffer(zstandard.ZstdDecompressor().decompress(data[: index[4]]), dtype=np.uint8).copy()
    codes = np.frombuffer(zstandard.ZstdDecompressor().decompress(data[index[4] : index[5]]), dtype=np.uint8).copy()
    return index, gaps, block_codes(entry, codes, index[1])


def _rebuilt(entry, stored: StoredPayload, gaps: np.ndarray, codes: np.ndarray, packed: np.ndarray | None = None) -> StoredPayload:
    """The one-block payload with other gap and code streams (codes a byte each, or `packed` as stored), its
    index made consistent with them."""
    import zstandard

    if packed is None:
        packed = quantized._packed(codes, quantized.code_slot(entry.params["bits"])) if entry.params.get("codes") == "bitpacked" else codes
    a, b = zstandard.ZstdCompressor().compress(gaps.tobytes()), zstandard.ZstdCompressor().compress(packed.tobytes())
    index = stored.tensors["index"].clone()
    index[0, 1:] = torch.tensor([codes.size, 0, gaps.size, len(a), len(a) + len(b), len(a) + len(b)])
    return StoredPayload({**stored.tensors, "index": index, "data": torch.frombuffer(bytearray(a + b), dtype=torch.uint8)})


def _byte_codes(entry, stored: StoredPayload):
    """The same one-block tensor as a vector written before bit-packed codes stores it: a byte per code."""
    old = entry.model_copy(update={"params": {k: v for k, v in entry.params.items() if k != "codes"}})
    _, gaps, codes = _frames(entry, stored)
    return old, _rebuilt(old, stored, gaps, codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_codes_are_bit_packed_and_byte_codes_still_read(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)
    delta = rl_delta(6, 50, seed=bits)
    entry, stored = _encoded(delta, bits=bits)
    assert entry.params["codes"] == "bitpacked"
    index, _, codes = _frames(entry, stored)
    import zstandard

    data = stored.tensors["data"].numpy().tobytes()
    stored_codes = len(zstandard.ZstdDecompressor().decompress(data[index[4] : index[5]]))
    assert stored_codes == -(-index[1] * quantized.code_slot(bits) // 8)  # 8, 4, 2 or 1 codes a byte
    assert int(codes.max()) < 1 << bits
    decoded = CODEC.decode_rows(entry, stored, 0, 6)
    old, old_stored = _byte_codes(entry, stored)
    assert CODEC.validate(old, old_stored) == []
    assert torch.equal(CODEC.decode_rows(old, old_stored, 0, 6), decoded)
    if fused.available():
        base = (torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
        rows, old_rows = base.clone(), base.clone()
        assert CODEC.add_into(entry, stored, 0, 6, rows, 1.0)[0] == 0
        assert CODEC.add_into(old, old_stored, 0, 6, old_rows, 1.0)[0] == 0
        assert torch.equal(rows.view(torch.int16), old_rows.view(torch.int16))


@pytest.mark.parametrize("slot", [1, 2, 4])
@pytest.mark.parametrize("walk", ["gathered", "scalar"])
def test_unpacking_long_runs_of_codes_is_the_same_whichever_walk(slot: int, walk: str) -> None:
    if not fused.available():
        pytest.skip("the compiled kernels are not built")
    from rvec_hub import _kernels

    with walking(walk):
        for n in (63, 64, 65, 1000, 100_003):  # the vector loop's sixty-four codes a step, then the bytes after
            codes = np.random.default_rng(n).integers(0, 1 << slot, size=n).astype(np.uint8)
            out, status = _kernels.unpack_codes(quantized._packed(codes, slot), n, slot)
            assert status == 0 and np.array_equal(out, codes)


@pytest.mark.parametrize("compiled", [True, False])
def test_code_bits_past_the_last_code_are_refused(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)
    if not compiled:
        without_kernels(monkeypatch)
    elif not fused.available():
        pytest.skip("the compiled kernels are not built")
    delta = rl_delta(6, 50)
    entries = delta.view(-1).nonzero()
    delta.view(-1)[entries[: (entries.numel() - 2) % 4]] = 0  # two codes in the last byte, its upper half unused
    entry, stored = _encoded(delta, bits=2)
    _, gaps, codes = _frames(entry, stored)
    assert codes.size % 4
    good = quantized._packed(codes, 2)
    assert torch.equal(CODEC.decode_rows(entry, _rebuilt(entry, stored, gaps, codes, good), 0, 6), CODEC.decode_rows(entry, stored, 0, 6))
    bad = good.copy()
    bad[-1] |= 0x80
    with pytest.raises(FormatError, match=f"tensor w: the quantized block from row 0 sets code bits past its {codes.size} codes; the vector is corrupt"):
        CODEC.decode_rows(entry, _rebuilt(entry, stored, gaps, codes, bad), 0, 6)
    with pytest.raises(FormatError, match="tensor w: a quantized frame of the block from row 0 holds .* bytes, the index says"):
        CODEC.decode_rows(entry, _rebuilt(entry, stored, gaps, codes, good[:-1]), 0, 6)


def test_an_unknown_code_layout_is_named() -> None:
    entry, stored = _encoded(rl_delta(6, 50), bits=2)
    odd = entry.model_copy(update={"params": {**entry.params, "codes": "nibbles"}})
    assert CODEC.validate(odd, stored) == ["tensor w: quantized codes 'nibbles' is not a code layout rvec knows (\"bitpacked\", or absent for a byte each)"]


@pytest.mark.parametrize("layout", ["bitpacked", "bytes"])
@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda g, c: (np.r_[g[:-1], np.uint8(255)], c), "past its last element"),
        (lambda g, c: (g, np.r_[c[:-1], np.uint8(4)]), "code outside its codebook"),
        (lambda g, c: (g, c[:-1]), "more entries than codes"),
        (lambda g, c: (g[:-1], c[:-1].copy()), None),  # consistent but shorter: decodes
        (lambda g, c: (g[:-1], c), "counts .* entries, 0 escapes and .* gap bytes"),
    ],
)
def test_corrupt_streams_are_refused_with_the_tensor_named(layout, corrupt, message, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)  # gap positions (tests/test_bitmask.py corrupts bitmasks)
    delta = rl_delta(6, 50)
    entry, stored = _encoded(delta, bits=2)
    if layout == "bytes":
        entry, stored = _byte_codes(entry, stored)
    elif message == "code outside its codebook":
        pytest.skip("a 2-bit field holds no code outside a 4-value codebook")
    _, gaps, codes = _frames(entry, stored)
    broken = _rebuilt(entry, stored, *corrupt(gaps, codes))
    if message is None:
        CODEC.decode_rows(entry, broken, 0, 6)
        return
    with pytest.raises(FormatError, match=f"tensor w: the quantized (block from row 0|index) .*{message}.*; the vector is corrupt"):
        CODEC.decode_rows(entry, broken, 0, 6)


def test_corrupt_index_scales_and_codebook_are_refused() -> None:
    delta = rl_delta(20, 30)
    entry, stored = _encoded(delta, bits=2, rows_per_block=5)
    index = stored.tensors["index"].clone()
    index[-1, 0] = 19
    with pytest.raises(FormatError, match="tensor w: the quantized index (covers 19 of 20 rows|counts .* bitmask bytes in rows 15-19)"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "index": index}), 0, 20)
    escaped = stored.tensors["index"].clone()
    escaped[0, 2] = 1
    with pytest.raises(FormatError, match="tensor w: the quantized block from row 0 lists escaped values"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "index": escaped}), 0, 20)
    scales = stored.tensors["scales"].clone()
    scales[3] = float("nan")
    with pytest.raises(FormatError, match="tensor w: the quantized row scale of row 3 is NaN or Inf; the vector is corrupt"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "scales": scales}), 0, 20)
    table = stored.tensors["table"].clone()
    table[0] = float("inf")
    with pytest.raises(FormatError, match="tensor w: the quantized codebook holds NaN or Inf"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "table": table}), 0, 20)
    data = stored.tensors["data"].clone()
    data[:8] = 0
    with pytest.raises(FormatError, match="tensor w: a quantized frame of the block from row 0 (does not decompress|holds .* bytes)"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "data": data}), 0, 20)


def test_validate_names_bad_bits_and_stored_shapes() -> None:
    entry, stored = _encoded(rl_delta(4, 30), bits=2)
    assert "quantized bits 9" in CODEC.validate(entry.model_copy(update={"params": {**entry.params, "bits": 9}}), stored)[0]
    short = StoredPayload({**stored.tensors, "table": stored.tensors["table"][:3], "scales": stored.tensors["scales"].float()})
    problems = CODEC.validate(entry, short)
    assert len(problems) == 2 and "stored table 'table' has shape [3], expected [4]" in problems[0] and "expected bfloat16" in problems[1]


def test_compress_quantized_applies_as_its_decoded_deltas(vector_fp32: Path, family: dict[str, Path], tmp_path: Path) -> None:
    code = run_cli(cli, ["compress", str(vector_fp32), "-o", str(tmp_path / "q"), "--method", "quantized", "--bits", "2", "--keep", "0.8", "-q"])
    assert code == 0
    manifest = load_manifest(tmp_path / "q")
    coded = [t for t in manifest.tensors if t.encoding == "quantized"]
    assert coded and all(t.params["bits"] == 2 and len(t.shape) == 2 for t in coded)
    assert manifest.compression["bits"] == 2 and manifest.compression["keep"] == 0.8 and not manifest.compression["lossless"]
    assert 0 < manifest.compression["rel_error"] < 1
    dense = compress(Vector.open(tmp_path / "q"), tmp_path / "d", method="dense", quiet=True, device="cpu").path
    merged = []
    for vec, out in [(tmp_path / "q", tmp_path / "m1"), (dense, tmp_path / "m2")]:
        apply_vectors([(Vector.open(vec), 1.0)], open_checkpoint(family["instruct"]), out, out_dtype=torch.float32, quiet=True, device="cpu")
        ckpt = open_checkpoint(out)
        merged.append({n: ckpt.read_rows(n) for n in ckpt.tensors})
    assert all(torch.equal(merged[0][n], merged[1][n]) for n in merged[1])


def test_cli_quantized_options_are_checked_in_one_line(vector_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in [
        (["--method", "quantized"], "--method quantized needs --bits"),
        (["--bits", "2"], "--bits applies to --method quantized"),
        (["--method", "quantized", "--bits", "9"], "bits 9 must be from 1 to 8"),
        (["--method", "quantized", "--bits", "2", "--keep", "0"], "keep 0.0 is outside (0, 1]"),
    ]:
        code = run_cli(cli, ["compress", str(vector_dir), "-o", str(tmp_path / "x"), "-q", *argv])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="not --rank"):
        compress(Vector.open(vector_dir), tmp_path / "x", method="quantized", bits=2, rank=4, quiet=True)
