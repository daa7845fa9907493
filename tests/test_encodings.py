"""The sparse and low-rank encodings, the byte-budget allocation, and readers meeting unknown encodings."""

from __future__ import annotations

import json

import pytest
import torch

from rvec_hub import FormatError, UsageError, Vector, fused
from rvec_hub.arith import add_rows
from rvec_hub.budget import RankCandidate, allocate_ranks, parse_size, uniform_rank
from rvec_hub.encodings import ENCODINGS
from rvec_hub.manifest import TensorEntry

from codec_common import StoredPayload, encode_one


def _round_trip(delta: torch.Tensor, encoding: str, **options) -> tuple[TensorEntry, StoredPayload, dict]:
    entry, stored = encode_one(encoding, delta, **options)
    return entry, stored, entry.stats


def _sparse_delta(rows: int, cols: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=g) * 1e-3
    return (values * (torch.rand(rows, cols, generator=g) < density)).to(torch.bfloat16).float()


@pytest.mark.parametrize("layout", ["bitmask", "gaps"])
@pytest.mark.parametrize("density", [0.25, 0.01])
def test_sparse_round_trips_bit_exactly_by_row_range(layout: str, density: float) -> None:
    delta = _sparse_delta(96, 700, density)
    entry, stored, stats = _round_trip(delta, "sparse", dtype=torch.bfloat16, layout=layout)
    codec = ENCODINGS["sparse"]
    assert torch.equal(codec.decode_rows(entry, stored, 0, 96), delta)
    assert torch.equal(codec.decode_rows(entry, stored, 13, 57), delta[13:57])
    assert torch.equal(codec.decode_rows(entry, stored, 95, 96), delta[95:96])
    assert stats["rel_error"] == 0.0


def test_sparse_picks_bitmask_for_rl_density_and_gaps_for_rare_changes() -> None:
    assert ENCODINGS["sparse"].encode(_sparse_delta(64, 512, 0.23), dtype=torch.bfloat16).params["layout"] == "bitmask"
    assert ENCODINGS["sparse"].encode(_sparse_delta(64, 512, 0.01), dtype=torch.bfloat16).params["layout"] == "gaps"


def test_sparse_bridges_gaps_longer_than_a_byte() -> None:
    delta = torch.zeros(3, 2000)
    delta[0, 0], delta[0, 1999], delta[2, 700], delta[2, 701] = 1.0, -2.0, 3.0, 4.0
    entry, stored, _ = _round_trip(delta, "sparse", dtype=torch.bfloat16, layout="gaps")
    assert torch.equal(ENCODINGS["sparse"].decode_rows(entry, stored, 0, 3), delta)
    assert torch.equal(ENCODINGS["sparse"].decode_rows(entry, stored, 1, 3), delta[1:3])


def test_sparse_decodes_a_vector_by_element_range() -> None:
    delta = _sparse_delta(1, 1000, 0.1).reshape(1000)
    entry, stored, _ = _round_trip(delta, "sparse", dtype=torch.bfloat16)
    assert torch.equal(ENCODINGS["sparse"].decode_rows(entry, stored, 100, 350), delta[100:350])


def test_sparse_of_an_all_zero_tensor_decodes_to_zeros() -> None:
    entry, stored, _ = _round_trip(torch.zeros(4, 9), "sparse", dtype=torch.bfloat16, layout="gaps")
    assert torch.equal(ENCODINGS["sparse"].decode_rows(entry, stored, 0, 4), torch.zeros(4, 9))


def test_lowrank_at_full_rank_reproduces_the_delta() -> None:
    delta = torch.randn(48, 80, generator=torch.Generator().manual_seed(1))
    entry, stored, stats = _round_trip(delta, "lowrank", rank=48, dtype=torch.float32)
    torch.testing.assert_close(ENCODINGS["lowrank"].decode_rows(entry, stored, 0, 48), delta, rtol=1e-4, atol=1e-5)
    assert stats["rel_error"] < 1e-5 and stats["energy"] == pytest.approx(1.0)


@pytest.mark.parametrize(("shape", "rank"), [((512, 256), 32), ((300, 1200), 16), ((1024, 384), 64)])
def test_lowrank_error_is_within_one_percent_of_truncated_svd(shape: tuple[int, int], rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    # A decaying spectrum plus noise, and pure noise: the hard case for a randomized SVD.
    for delta in (torch.randn(*shape, generator=g), torch.randn(shape[0], 40, generator=g) @ torch.randn(40, shape[1], generator=g) * 0.05 + torch.randn(*shape, generator=g) * 0.01):
        s = torch.linalg.svdvals(delta.double())
        optimal = (s[rank:].square().sum() / s.square().sum()).sqrt().item()
        _, _, stats = _round_trip(delta, "lowrank", rank=rank, dtype=torch.float32)
        assert stats["rel_error"] <= optimal * 1.01


def test_lowrank_decodes_row_ranges_of_the_product() -> None:
    delta = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    entry, stored, _ = _round_trip(delta, "lowrank", rank=8, dtype=torch.float32)
    whole = ENCODINGS["lowrank"].decode_rows(entry, stored, 0, 64)
    torch.testing.assert_close(ENCODINGS["lowrank"].decode_rows(entry, stored, 10, 30), whole[10:30])


@pytest.mark.skipif(not fused.available(), reason="the fused add needs the compiled kernels")
def test_lowrank_adds_take_each_payloads_own_factors_chunk_by_chunk() -> None:
    """A thread keeps the last A it read: tensors of the same key in other payloads, and other tensors,
    read their own."""
    codec = ENCODINGS["lowrank"]
    g = torch.Generator().manual_seed(4)
    first = encode_one("lowrank", torch.randn(48, 40, generator=g) * 1e-2, rank=6)
    second = encode_one("lowrank", torch.randn(48, 40, generator=g) * 1e-2, rank=6)
    base = (torch.randn(48, 40, generator=g) * 0.02).to(torch.bfloat16)
    for entry, stored in (first, second, first, second):
        expected = add_rows(base, [(codec.decode_rows(entry, stored, 0, 48), 1.0)], torch.bfloat16)
        rows = base.clone()
        for lo in range(0, 48, 16):
            assert codec.add_into(entry, stored, lo, lo + 16, rows[lo : lo + 16], 1.0)[0] == 0
        assert torch.equal(rows.view(torch.int16), expected.view(torch.int16))


def test_lowrank_refuses_a_rank_larger_than_the_matrix() -> None:
    with pytest.raises(UsageError, match=r"rank 65 does not fit a 64×32 matrix: choose 1 ≤ rank ≤ 32"):
        ENCODINGS["lowrank"].encode(torch.randn(64, 32), rank=65)


def test_lowrank_refuses_a_vector() -> None:
    with pytest.raises(UsageError, match="lowrank needs a matrix"):
        ENCODINGS["lowrank"].encode(torch.randn(64), rank=1)


def _candidates(true_ranks: list[int], size: int = 64) -> dict[str, RankCandidate]:
    out = {}
    for i, r in enumerate(true_ranks):
        g = torch.Generator().manual_seed(i)
        m = torch.randn(size, r, generator=g) @ torch.randn(r, size, generator=g) + 0.01 * torch.randn(size, size, generator=g)
        s2 = torch.linalg.svdvals(m.double()).square()
        out[f"m{i}"] = RankCandidate(bytes_per_rank=2 * size * 2, energies=s2, max_rank=size // 2)
    return out


def test_budget_allocation_never_exceeds_the_budget() -> None:
    cands = _candidates([2, 8, 30])
    for budget in (3 * 256, 5000, 20000, 10**9):
        ranks = allocate_ranks(cands, budget)
        assert sum(cands[n].bytes_per_rank * r for n, r in ranks.items()) <= budget
        assert all(1 <= r <= cands[n].max_rank for n, r in ranks.items())


def test_budget_allocation_beats_uniform_rank_at_equal_bytes() -> None:
    cands = _candidates([2, 4, 24, 28])
    budget = 4 * 256 * 12
    uniform = uniform_rank(cands, budget)
    ranks = allocate_ranks(cands, budget)

    def residual(alloc: dict[str, int]) -> float:
        return sum(float(cands[n].energies[r:].sum()) for n, r in alloc.items())

    assert residual(ranks) < 0.5 * residual({n: uniform for n in cands})
    assert ranks["m0"] < ranks["m3"]


def test_budget_too_small_for_rank_one_says_the_minimum() -> None:
    with pytest.raises(UsageError, match="needs at least 768 bytes"):
        allocate_ranks(_candidates([2, 2, 2]), 700)


@pytest.mark.parametrize(("text", "size"), [("200MB", 200 * 10**6), ("1.5GB", 1_500_000_000), ("512MiB", 512 * 2**20), ("1234", 1234), ("10kb", 10_000)])
def test_parse_size_reads_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_nonsense() -> None:
    with pytest.raises(UsageError, match="write it like 200MB"):
        parse_size("two hundred")


def test_a_vector_names_a_later_rvec_than_0_1_0_which_cannot_read_its_encodings(vector_dir, tmp_path) -> None:
    """rvec 0.1.0 refuses `packed`, which it lacks, naming the writer's recorded version as the one to upgrade
    to: that must be a later version, and the installed package's own."""
    from importlib.metadata import version

    from packaging.version import Version

    from rvec_hub import __version__
    from rvec_hub.compress import compress

    compress(Vector.open(vector_dir), tmp_path / "packed", method="sparse", device="cpu", quiet=True)
    manifest = json.loads((tmp_path / "packed" / "rvec.json").read_text())
    assert any(t["encoding"] == "packed" for t in manifest["tensors"])
    assert manifest["rvec_version"] == __version__ == version("rvec")
    assert Version(manifest["rvec_version"]) > Version("0.1.0")


def test_reader_names_the_rvec_version_an_unknown_encoding_needs(vector_dir, tmp_path) -> None:
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(vector_dir, copy)
    manifest = json.loads((copy / "rvec.json").read_text())
    manifest["rvec_version"] = "9.0.0"
    changed = next(t for t in manifest["tensors"] if t["encoding"] == "dense")
    changed["encoding"] = "vq-codebook"
    (copy / "rvec.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"uses encoding vq-codebook, which rvec .* cannot read.*upgrade to rvec>=9\.0\.0"):
        Vector.open(copy)
