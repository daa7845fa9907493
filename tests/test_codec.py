"""The `packed` encoding: exact round trips by row range, its decoders, corrupt payloads, and 0.1.0 vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rvec_hub import FormatError, Vector, apply_vectors, compress, open_checkpoint
from rvec_hub.encodings import ENCODINGS, blocks, packed
from rvec_hub.io.safetensors_io import ShardWriter
from rvec_hub.manifest import TensorEntry
from rvec_hub.package import PAYLOAD_METADATA, finalize_vector

from codec_common import StoredPayload, block_codes, encode_one, rl_delta

CODEC = ENCODINGS["packed"]


def _round_trip(delta: torch.Tensor, dtype: torch.dtype = torch.bfloat16, **options) -> tuple[TensorEntry, StoredPayload]:
    return encode_one("packed", delta, dtype, **options)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_packed_round_trips_bit_exactly_by_row_range_across_blocks(dtype: torch.dtype) -> None:
    delta = rl_delta(50, 300, dtype=dtype)
    entry, stored = _round_trip(delta, dtype, rows_per_block=7)
    assert stored.shape("index")[0] == 8
    for start, stop in [(0, 50), (0, 7), (7, 14), (3, 5), (6, 22), (49, 50)]:
        assert _same_bits(CODEC.decode_rows(entry, stored, start, stop), delta[start:stop])


def test_packed_codes_every_element_of_a_mostly_nonzero_tensor_with_either_decoder() -> None:
    g = torch.Generator().manual_seed(5)
    delta = (rl_delta(30, 200) + torch.randn(30, 200, generator=g) * 1e-3).to(torch.bfloat16).float()
    entry, stored = _round_trip(delta, rows_per_block=8)
    assert torch.equal(stored.tensors["index"][:, 3], torch.zeros(4, dtype=torch.long))  # no gap bytes: a code per element
    assert _same_bits(CODEC.decode_rows(entry, stored, 5, 27), delta[5:27])
    import zstandard

    _, count, escapes, _, end_gaps, end_codes, end = stored.tensors["index"][0].tolist()
    data = stored.tensors["data"].numpy().tobytes()
    codes = block_codes(entry, np.frombuffer(zstandard.ZstdDecompressor().decompress(data[end_gaps:end_codes]), dtype=np.uint8), count)
    planes = np.frombuffer(zstandard.ZstdDecompressor().decompress(data[end_codes:end]), dtype=np.uint8)
    escaped = torch.from_numpy(planes.reshape(2, escapes).T.copy()).view(torch.bfloat16).reshape(-1).float()
    out = torch.full((count,), 7.0)
    assert blocks.scatter_torch(np.zeros(0, dtype=np.uint8), codes, stored.tensors["table"].float(), escaped, out) is None
    assert _same_bits(out, delta[:8].reshape(-1))


def test_packed_keeps_values_beyond_its_codebook_and_negative_zero() -> None:
    g = torch.Generator().manual_seed(3)
    delta = (torch.randn(40, 64, generator=g) * 1e-3).to(torch.bfloat16).float()  # thousands of distinct values
    delta[0, :5] = -0.0
    entry, stored = _round_trip(delta)
    assert stored.shape("table")[0] == packed.ESCAPE
    assert _same_bits(CODEC.decode_rows(entry, stored, 0, 40), delta)


def test_packed_bridges_runs_of_zeros_longer_than_a_byte() -> None:
    delta = torch.zeros(3, 2000)
    delta[0, 0], delta[0, 1999], delta[2, 700] = 1e-3, -2e-3, 5e-4
    delta = delta.to(torch.bfloat16).float()
    entry, stored = _round_trip(delta)
    assert _same_bits(CODEC.decode_rows(entry, stored, 0, 3), delta)
    assert _same_bits(CODEC.decode_rows(entry, stored, 1, 3), delta[1:3])


def test_packed_decodes_vectors_by_element_range_scalars_and_zeros() -> None:
    vector = rl_delta(1, 1000).reshape(1000)
    entry, stored = _round_trip(vector)
    assert _same_bits(CODEC.decode_rows(entry, stored, 100, 350), vector[100:350])
    scalar = torch.tensor(3e-4).to(torch.bfloat16).float()
    entry, stored = _round_trip(scalar)
    assert _same_bits(CODEC.decode_rows(entry, stored, 0, 1), scalar)
    entry, stored = _round_trip(torch.zeros(4, 9))
    assert _same_bits(CODEC.decode_rows(entry, stored, 0, 4), torch.zeros(4, 9))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_codebook_holds_the_most_frequent_repeated_values_ties_broken_by_storage_bits(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    frequent = rng.normal(0, 1e-3, 400).astype(np.float32)
    counts = rng.integers(1, 60, frequent.size)
    values = np.repeat(frequent, counts)
    delta = torch.from_numpy(rng.permutation(values)).to(dtype).float().reshape(-1, 1)
    table = CODEC.encode(delta, dtype=dtype, rows_per_block=700).stored["table"]

    bits = delta.to(dtype).view(packed._INT[dtype.itemsize]).reshape(-1)
    uniq, n = torch.unique(bits[bits != 0], return_counts=True)
    tie = (lambda v: v & 0xFFFF) if dtype.itemsize == 2 else (lambda v: v)  # 16-bit values: as unsigned patterns
    ranked = sorted(((-c, tie(v), v) for v, c in zip(uniq.tolist(), n.tolist()) if c >= 2))[: packed.ESCAPE]
    assert table.view(packed._INT[dtype.itemsize]).tolist() == [v for _, _, v in ranked]


def test_a_wide_codebook_keeps_the_frequent_values_through_blocks_of_distinct_ones() -> None:
    # 70 000 distinct float32 values in the first block push the tally past its cap; the values
    # repeated in every block must still be the codebook, most frequent first.
    rng = np.random.default_rng(4)
    repeated = np.float32([3e-4, -5e-4, 7e-4])
    noise = rng.permutation(np.arange(1, 70_001, dtype=np.float32) * np.float32(1e-7))
    first = np.concatenate([noise, np.tile(repeated, 1000)])
    later = np.tile(np.repeat(repeated, [5, 3, 1]), 2000)
    delta = torch.from_numpy(np.concatenate([first, later])).reshape(-1, 1)
    table = CODEC.encode(delta, dtype=torch.float32, rows_per_block=first.size).stored["table"]
    assert table.tolist() == [float(v) for v in repeated]


def test_a_tensor_whose_values_are_all_distinct_writes_an_empty_codebook(tmp_path: Path) -> None:
    delta = torch.tensor([1e-3, -2e-3, 3e-3]).to(torch.bfloat16).float()
    encoded = CODEC.encode(delta, dtype=torch.bfloat16)
    stored = encoded.stored
    assert stored["table"].numel() == 0
    writer = ShardWriter(tmp_path, "vector", 2**30, PAYLOAD_METADATA, [(k, tuple(v.shape), v.dtype) for k, v in stored.items()])
    for key, value in stored.items():
        writer.add(key, value)
    writer.finish()
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "vector.safetensors"))
    entry = TensorEntry(name="w", shape=(3,), dtype="bfloat16", encoding="packed", keys={r: r for r in stored}, params=encoded.params)
    assert _same_bits(CODEC.decode_rows(entry, StoredPayload(back), 0, 3), delta)


def test_packed_is_far_smaller_than_sparse_on_anrl_delta() -> None:
    delta = rl_delta(256, 512)
    packed_bytes = CODEC.encode(delta, dtype=torch.bfloat16).nbytes
    sparse_bytes = ENCODINGS["sparse"].encode(delta, dtype=torch.bfloat16).nbytes
    assert packed_bytes < 0.5 * sparse_bytes


def _block_streams(delta: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """The decompressed gaps and codes of a one-block bf16 tensor, with its codebook and escaped values."""
    import zstandard

    encoded = CODEC.encode(delta, dtype=torch.bfloat16)
    stored = encoded.stored
    _, count, escapes, gap_bytes, end_gaps, end_codes, end = stored["index"][0].tolist()
    data = stored["data"].numpy().tobytes()
    frames = [zstandard.ZstdDecompressor().decompress(data[a:b]) for a, b in [(0, end_gaps), (end_gaps, end_codes), (end_codes, end)]]
    gaps, codes, planes = (np.frombuffer(f, dtype=np.uint8) for f in frames)
    codes = block_codes(TensorEntry(name="w", shape=tuple(delta.shape), dtype="bfloat16", encoding="packed", params=encoded.params), codes, count)
    assert escapes > 0 and len(gaps) == gap_bytes and len(codes) == count
    escaped = torch.from_numpy(planes.reshape(2, escapes).T.copy()).view(torch.bfloat16).reshape(-1).float()
    return gaps, codes, stored["table"].float(), escaped


def test_compiled_and_torch_decoders_agree_and_refuse_the_same_corruptions(monkeypatch: pytest.MonkeyPatch) -> None:
    if blocks._compiled_kernel() is None:
        pytest.skip("the compiled kernels are not built")
    monkeypatch.setattr(blocks, "BITMASK_FROM", 2.0)  # gap positions (tests/test_bitmask.py has the bitmask's)
    delta = rl_delta(16, 64)
    gaps, codes, table, escaped = _block_streams(delta)
    kernel = blocks._compiled_kernel()

    def both(g: np.ndarray, c: np.ndarray, e: torch.Tensor) -> tuple[str | None, str | None, torch.Tensor, torch.Tensor]:
        a, b = torch.full((delta.numel(),), 7.0), torch.full((delta.numel(),), 7.0)  # both fill every element
        fast = blocks._STATUS.get(int(kernel(g, c, table.numpy(), e.numpy(), a.numpy())))
        slow = blocks.scatter_torch(g, c, table, e, b)
        return fast, slow, a, b

    fast, slow, a, b = both(gaps, codes, escaped)
    assert fast is None and slow is None
    assert _same_bits(a, delta.reshape(-1)) and _same_bits(b, delta.reshape(-1))
    past_the_end = gaps.copy()
    past_the_end[-1] = 255
    bad_code = codes.copy()
    bad_code[0] = table.numel()  # neither in the codebook nor the escape code
    for g, c, e in [(past_the_end, codes, escaped), (gaps, codes[:-1], escaped), (gaps[:-1], codes, escaped), (gaps, bad_code, escaped), (gaps, codes, escaped[:-1])]:
        fast, slow, _, _ = both(g, c, e)
        assert fast is not None and fast == slow


def test_decoding_refuses_an_index_that_does_not_cover_the_tensor() -> None:
    entry, stored = _round_trip(rl_delta(20, 30), rows_per_block=5)
    index = stored.tensors["index"].clone()
    index[-1, 0] = 19
    broken = StoredPayload({**stored.tensors, "index": index})
    with pytest.raises(FormatError, match="packed index (covers 19 of 20 rows|counts .* bitmask bytes in rows 15-19)"):
        CODEC.decode_rows(entry, broken, 0, 20)


def test_decoding_refuses_a_frame_that_does_not_decompress() -> None:
    entry, stored = _round_trip(rl_delta(20, 30))
    data = stored.tensors["data"].clone()
    data[:8] = 0
    with pytest.raises(FormatError, match="does not decompress|holds .* bytes"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "data": data}), 0, 20)


def test_a_frame_declaring_more_bytes_than_its_index_is_refused_before_any_allocation() -> None:
    entry, stored = _round_trip(rl_delta(6, 50))
    data = stored.tensors["data"].clone()
    header = bytes(data[:5].tolist())
    assert header[:4] == b"\x28\xb5\x2f\xfd" and header[4] == 0xA0  # the raw bitmask frame: a 4-byte content size
    data[5:9] = torch.tensor(list(((1 << 32) - 1).to_bytes(4, "little")), dtype=torch.uint8)
    with pytest.raises(FormatError, match="tensor w: a packed frame of the block from row 0 declares 4294967295 bytes, the index says 38; the vector is corrupt"):
        CODEC.decode_rows(entry, StoredPayload({**stored.tensors, "data": data}), 0, 6)


def test_validate_names_a_codebook_in_the_wrong_dtype() -> None:
    entry, stored = _round_trip(rl_delta(4, 30))
    wrong = StoredPayload({**stored.tensors, "table": stored.tensors["table"].float()})
    problems = CODEC.validate(entry, wrong)
    assert len(problems) == 1 and "stored table 'table' has dtype float32, expected bfloat16" in problems[0]


def _old_sparse_vector(vector_dir: Path, out: Path) -> Path:
    """The vector as rvec 0.1.0 wrote it after `rvec compress`: every changed tensor in its `sparse` encoding."""
    source = Vector.open(vector_dir)
    encoded = {}
    for t in source.manifest.tensors:
        if t.encoding != "zero":
            encoded[t.name] = ENCODINGS["sparse"].encode(source.decode(t.name), dtype=torch.bfloat16)
    out.mkdir()
    expected = [(f"{n}.{role}", tuple(v.shape), v.dtype) for n, e in encoded.items() for role, v in e.stored.items()]
    writer = ShardWriter(out, "vector", 2**30, PAYLOAD_METADATA, expected)
    for name, e in encoded.items():
        for role, v in e.stored.items():
            writer.add(f"{name}.{role}", v)
    shards = writer.finish()
    tensors = [
        t.model_copy(update={"encoding": "sparse", "keys": {r: f"{t.name}.{r}" for r in encoded[t.name].stored}, "params": encoded[t.name].params})
        if t.name in encoded else t
        for t in source.manifest.tensors
    ]
    fields = source.manifest.model_dump(exclude={"files", "tensors"})
    finalize_vector(out, {**fields, "rvec_version": "0.1.0", "tensors": tensors}, [p for p, _ in shards])
    return out


def test_a_sparse_vector_from_rvec_0_1_0_still_applies_and_recompresses_to_packed(
    vector_dir: Path, family: dict[str, Path], tmp_path: Path
) -> None:
    old = _old_sparse_vector(vector_dir, tmp_path / "old")
    dense = Vector.open(vector_dir)
    assert all(_same_bits(Vector.open(old).decode(n), dense.decode(n)) for n in dense.entries)
    new = compress(Vector.open(old), tmp_path / "new", device="cpu", quiet=True)
    assert {t.encoding for t in new.manifest.tensors} <= {"packed", "dense", "zero"}
    assert all(_same_bits(Vector.open(new.path).decode(n), dense.decode(n)) for n in dense.entries)
    merged = {}
    for name, vec in (("old", old), ("new", new.path)):
        out = apply_vectors([(Vector.open(vec), 1.0)], open_checkpoint(family["instruct"]), tmp_path / f"m-{name}", quiet=True)
        ckpt = open_checkpoint(out.path)
        merged[name] = {n: ckpt.read_rows(n) for n in ckpt.tensors}
    assert all(torch.equal(merged["old"][n], merged["new"][n]) for n in merged["old"])


def test_load_time_merge_of_a_packed_vector_equals_the_dense_vectors(vector_dir: Path, family: dict[str, Path], tmp_path: Path) -> None:
    from rvec_serving.merge import merged_weights
    from rvec_serving.spec import OpenedVector

    packed_dir = compress(Vector.open(vector_dir), tmp_path / "packed", device="cpu", quiet=True).path
    base = open_checkpoint(family["instruct"])
    weights = {name: base.read_rows(name) for name in base.tensors}
    merged = {}
    for label, path in (("dense", vector_dir), ("packed", packed_dir)):
        merged[label] = dict(merged_weights(weights.items(), [OpenedVector(label, Vector.open(path), 0.8)], torch.bfloat16))
    assert merged["dense"].keys() == merged["packed"].keys()
    assert all(torch.equal(merged["dense"][n], merged["packed"][n]) for n in merged["dense"])
