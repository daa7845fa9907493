"""The fused bf16 adds give bit for bit what the float32 path gives, for every encoding that has one."""

from __future__ import annotations

import math
import re

import pytest
import torch

from rvec_hub import Vector, _kernels, fused
from rvec_hub.arith import Survival, add_rows
from rvec_hub.compress import compress
from rvec_hub.encodings import ENCODINGS
from rvec_hub.io.checkpoint import open_checkpoint

from codec_common import walking
from vector_edit import rewrite_vector

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused kernels are not built")
NO_LOWRANK_KERNEL = "no fused low-rank add here for this rank and walk (AMX: ranks in thirty-twos; without AMX, AVX512-BF16: the gathered walks)"


@pytest.fixture(scope="module")
def encoded(vector_dir, vector_fp32, tmp_path_factory) -> dict[str, Vector]:
    root = tmp_path_factory.mktemp("fused")
    compress(Vector.open(vector_dir), root / "packed", method="sparse", device="cpu", quiet=True)
    compress(Vector.open(vector_dir), root / "lowrank", method="lowrank", rank=4, factor_dtype=torch.float32, device="cpu", quiet=True)
    # bf16 factors of rank 32 over columns in sixteens: added in one pass on AMX or AVX512-BF16 where the CPU has it
    compress(Vector.open(vector_dir), root / "lowrank-bf16", method="lowrank", rank=32, factor_dtype=torch.bfloat16, device="cpu", quiet=True)
    compress(Vector.open(vector_dir), root / "quantized", method="quantized", bits=3, keep=0.5, device="cpu", quiet=True)
    sparse = {}
    for layout in ("bitmask", "gaps"):  # rvec 0.1.0's encoding, still read: both of its layouts
        def payload(t, layout=layout):
            for name in [n for n in t if t[n].dim() == 2]:
                delta = t.pop(name).float()
                delta[:, 8:] = 0  # long runs of zeros: the gap layout bridges them with fillers
                encoded = ENCODINGS["sparse"].encode(delta, dtype=torch.bfloat16, layout=layout)
                sparse[(layout, name)] = encoded
                t.update({f"{name}.{role}": v.contiguous() for role, v in encoded.stored.items()})

        def manifest(m, layout=layout):
            for entry in m["tensors"]:
                if (layout, entry["name"]) in sparse:
                    enc = sparse[(layout, entry["name"])]
                    entry.update(encoding="sparse", keys={r: f"{entry['name']}.{r}" for r in enc.stored}, params=enc.params)

        rewrite_vector(vector_dir, root / f"sparse-{layout}", payload, manifest)
    paths = {"dense-bf16": vector_dir, "dense-fp32": vector_fp32, "packed": root / "packed", "lowrank": root / "lowrank",
             "lowrank-bf16": root / "lowrank-bf16", "quantized": root / "quantized", "sparse-bitmask": root / "sparse-bitmask", "sparse-gaps": root / "sparse-gaps"}
    return {name: Vector.open(path) for name, path in paths.items()}


@pytest.mark.parametrize("encoding", ["dense-bf16", "dense-fp32", "packed", "lowrank", "lowrank-bf16", "quantized", "sparse-bitmask", "sparse-gaps"])
@pytest.mark.parametrize("alpha", [1.0, -1.0, 0.3, 1.7])
def test_fused_add_equals_the_float32_path_bit_for_bit(family, encoded, encoding, alpha):
    vector, base = encoded[encoding], open_checkpoint(family["instruct"])
    fused_kept, general_kept, compared = Survival(), Survival(), 0
    for name, entry in vector.entries.items():
        if entry.encoding == "zero":
            continue
        rows = base.read_rows(name)
        assert fused.applies(vector, name, rows, torch.bfloat16)
        stop = entry.shape[0] if entry.shape else 1
        expected = add_rows(rows, [(vector.decode_rows(name, 0, stop), alpha)], torch.bfloat16, [general_kept])
        fused.add_in_place(rows, vector, name, 0, stop, alpha, fused_kept, name=name, pristine=lambda: base.read_rows(name))
        assert torch.equal(rows.view(torch.int16), expected.view(torch.int16)), name
        compared += 1
    assert compared > 0
    assert math.isclose(fused_kept.retained, general_kept.retained, rel_tol=1e-4)


@pytest.mark.parametrize("encoding", ["lowrank", "lowrank-bf16"])  # float32 factors; bf16 ones, in one pass where the CPU can
@pytest.mark.parametrize("walk", ["scalar", "gathered"])  # "scalar": no fused low-rank add, the product added a chunk at a time
def test_a_low_rank_add_over_many_chunks_in_one_call_equals_the_float32_path(family, encoded, encoding, walk, monkeypatch):
    from rvec_hub import arith

    monkeypatch.setattr(arith, "CHUNK_ELEMENTS", 1024)  # a few rows a chunk: every range below spans several
    vector, base = encoded[encoding], open_checkpoint(family["instruct"])
    spanned = 0
    for name, entry in vector.entries.items():
        if entry.encoding != "lowrank":
            continue
        assert vector.adds_block_by_block(name)
        start, stop = 3, entry.shape[0] - 2
        pristine = base.read_rows(name, start, stop)
        kept, general_kept = Survival(), Survival()
        expected = add_rows(pristine, [(vector.decode_rows(name, start, stop), 0.7)], torch.bfloat16, [general_kept])
        rows = torch.full_like(pristine, float("nan"))
        with walking(walk):
            fused.add_in_place(rows, vector, name, start, stop, 0.7, kept, name=name, pristine=lambda: pristine, base=pristine)
        assert torch.equal(rows.view(torch.int16), expected.view(torch.int16)), name
        assert math.isclose(kept.retained, general_kept.retained, rel_tol=1e-4)
        spanned += len(arith.row_chunks(tuple(pristine.shape))) > 1
    assert spanned > 0


@pytest.mark.parametrize("size", [1, 15, 16, 47, 4099])  # shorter than a vector step, a step, steps and a tail
@pytest.mark.parametrize("offset", [0, 1])  # rows aligned for streaming stores, and rows that are not
@pytest.mark.parametrize("separate", [False, True])  # added in place, or from separate base rows
def test_the_vector_dense_loop_adds_as_the_scalar_loop_and_the_float32_path(size, offset, separate):
    from rvec_hub import _kernels

    g = torch.Generator().manual_seed(size)
    base = (torch.randn(offset + size, generator=g) * 0.02).to(torch.bfloat16)[offset:]
    delta = (torch.randn(size, generator=g) * 1e-3).to(torch.bfloat16)
    delta[::5] = 0.0
    base[::7] = -0.0
    expected = add_rows(base.clone(), [(delta.float(), 0.7)], torch.bfloat16)
    results = {}
    for walk in _kernels.WALKS:  # "gathered" converts with AVX512-BF16 where the CPU has it
        with walking(walk):
            rows = torch.full((offset + size,), float("nan"), dtype=torch.bfloat16)[offset:] if separate else base.clone()
            results[walk] = (fused.add_dense(rows, delta, 0.7, base if separate else None), rows)
    for walk in ("vector", "gathered"):
        (status, err_sq, norm_sq), rows = results[walk]
        assert status == 0 and torch.equal(rows.view(torch.int16), results["scalar"][1].view(torch.int16)), walk
        assert torch.equal(rows.float(), expected.float())
        assert (err_sq, norm_sq) == pytest.approx(results["scalar"][0][1:], rel=1e-4, abs=1e-20)
    delta[size // 2] = float("inf")
    assert fused.add_dense(base.clone(), delta, 0.7)[0] == fused.BAD_VALUE


def _tiny_and_cancelling(n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Base weights and a delta (bf16, scaled by `scale`) whose sums at alpha 1 are, by turns, below bf16's
    normal range (which a float32-to-bf16 conversion instruction flushes to zero, and torch's cast does not),
    exactly zero, and ordinary."""
    g = torch.Generator().manual_seed(n)
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    delta = (torch.randn(n, generator=g) * scale).bfloat16()
    base[0::3] = (torch.randn(len(base[0::3]), generator=g) * 3e-39).bfloat16()  # bf16 subnormals
    delta[0::3] = (torch.randn(len(delta[0::3]), generator=g) * 2e-39).bfloat16()
    base[1::9] = -delta[1::9]  # cancelled
    return base, delta


@pytest.mark.parametrize("walk", _kernels.WALKS)
def test_the_dense_add_keeps_sums_below_the_normal_range_and_sums_that_cancel(walk):
    base, delta = _tiny_and_cancelling(4099, 1e-3)
    assert bool((base.float() + delta.float() == 0).any()) and bool(((base.float() + delta.float()).abs() < 1.1754944e-38).sum() > 100)
    expected = add_rows(base.clone(), [(delta.float(), 1.0)], torch.bfloat16)
    with walking(walk):
        rows = base.clone()
        status, _, _ = fused.add_dense(rows, delta, 1.0)
    assert status == 0
    assert torch.equal(rows.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("walk", ["vector", "gathered"])
def test_the_fused_low_rank_add_keeps_sums_below_the_normal_range_and_sums_that_cancel(walk):
    """Rows of zero products over bf16 subnormal base weights, rows whose base cancels the product, ordinary
    rows: every weight as torch's bf16 matmul added by torch."""
    rows, cols, rank = 48, 112, 32
    b, a, pairs = _factors(rows, cols, rank)
    b[::3] = 0.0
    product = b @ a
    base = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(5)) * 0.02).bfloat16()
    base[::3] = (torch.randn(cols, generator=torch.Generator().manual_seed(6)) * 3e-39).bfloat16()
    base[1::3, ::2] = -product[1::3, ::2]
    expected = add_rows(base.clone(), [(product.float(), 1.0)], torch.bfloat16)
    assert bool((expected == 0).sum() > 100) and bool((expected.float().abs() < 1.1754944e-38).sum() > 300)
    with walking(walk):
        out = base.clone()
        added = fused.add_lowrank(out, b, pairs, 1.0)
    if added is None:
        pytest.skip(NO_LOWRANK_KERNEL)
    assert added[0] == 0
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


def _factors(rows: int, cols: int, rank: int, scale: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B (rows × rank), A (rank × cols) in bf16, and A in the pair layout the fused low-rank add takes."""
    g = torch.Generator().manual_seed(rows * 7 + cols * 3 + rank)
    b = (torch.randn(rows, rank, generator=g) * scale).bfloat16()
    a = (torch.randn(rank, cols, generator=g) * scale).bfloat16()
    return b, a, a.view(rank // 2, 2, cols).transpose(1, 2).contiguous()


@pytest.mark.parametrize(("rows", "cols", "rank"), [(16, 64, 32), (37, 80, 64), (5, 16, 96), (130, 896, 64), (20, 48, 256), (13, 112, 6), (7, 16, 2)])
@pytest.mark.parametrize("separate", [False, True])  # added in place, or from separate base rows
@pytest.mark.parametrize("offset", [0, 1])  # rows aligned for streaming stores, and rows that are not
@pytest.mark.parametrize("alpha", [1.0, -0.7])
@pytest.mark.parametrize("walk", ["vector", "gathered"])  # AMX's sums rounded by shifts, or converted (AVX512-BF16)
def test_the_fused_low_rank_add_is_the_bf16_product_added(rows, cols, rank, separate, offset, alpha, walk):
    """Tiles of rows and columns (AMX: sixteen by sixty-four; AVX512-BF16: six by sixty-four, in blocks of
    rows), with row and column tails and ranks AMX declines: every weight as torch's bf16 matmul (float32 sums
    rounded once) added by the dense kernel, and the same sums."""
    b, a, pairs = _factors(rows, cols, rank)
    base = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)) * 0.02).bfloat16()
    held = torch.empty(rows * cols + offset, dtype=torch.bfloat16)
    out = held[offset:].view(rows, cols)
    out.copy_(base)
    with walking(walk):
        fused_sums = fused.add_lowrank(out, b, pairs, alpha, base.clone() if separate else None)
    if fused_sums is None:
        pytest.skip(NO_LOWRANK_KERNEL)
    expected = base.clone()
    dense_sums = fused.add_dense(expected, b @ a, alpha)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))
    assert fused_sums[0] == dense_sums[0] == 0
    assert fused_sums[1:] == pytest.approx(dense_sums[1:], rel=1e-5)


@pytest.mark.parametrize(("rank", "cols"), [(2, 1), (6, 112), (64, 896), (32, 17)])
def test_ranks_are_paired_as_the_transposed_view_lays_them_out(rank, cols):
    a = torch.randn(rank, cols, generator=torch.Generator().manual_seed(rank + cols)).bfloat16()
    expected = a.view(rank // 2, 2, cols).transpose(1, 2).contiguous()
    assert torch.equal(fused.pair_ranks(a).view(torch.int16), expected.view(torch.int16))
    assert torch.equal(_kernels.pair_ranks(a).view(torch.int16), expected.view(torch.int16))
    with pytest.raises(ValueError, match="odd rank"):
        _kernels.pair_ranks(torch.zeros(rank + 1, cols, dtype=torch.bfloat16))


def test_the_fused_low_rank_add_declines_what_it_cannot_add_and_refuses_an_overflow():
    base = torch.zeros(16, 40, dtype=torch.bfloat16)
    _, _, pairs = _factors(16, 40, 32)
    assert fused.add_lowrank(base, torch.zeros(16, 32, dtype=torch.bfloat16), pairs, 1.0) is None  # 40 columns: not in sixteens
    odd = torch.zeros(16, 5, dtype=torch.bfloat16)  # rank 5: no whole pairs of ranks
    assert fused.add_lowrank(torch.zeros(16, 64, dtype=torch.bfloat16), odd, torch.zeros(2, 64, 2, dtype=torch.bfloat16), 1.0) is None
    b, _, pairs = _factors(16, 64, 32)
    with walking("scalar"):
        assert fused.add_lowrank(torch.zeros(16, 64, dtype=torch.bfloat16), b, pairs, 1.0) is None  # the scalar setting
    big_b, big_pairs = b.abs() * 1e20, pairs.abs() * 1e20  # products near 1e37: their sums leave float32 and bf16
    general = torch.full((16, 64), 3e38, dtype=torch.bfloat16)
    assert fused.add_dense(general, big_b @ big_pairs.transpose(1, 2).reshape(32, 64), 1.0)[0] == fused.BAD_VALUE
    added = fused.add_lowrank(torch.full((16, 64), 3e38, dtype=torch.bfloat16), big_b, big_pairs, 1.0)
    if added is not None:
        assert added[0] == fused.BAD_VALUE


@pytest.mark.parametrize("encoding", ["packed", "quantized"])
def test_a_row_range_cutting_coded_blocks_adds_only_its_rows(family, encoded, encoding):
    vector, base = encoded[encoding], open_checkpoint(family["instruct"])
    name = next(n for n, e in vector.entries.items() if e.encoding == encoding and len(e.shape) == 2 and e.shape[0] >= 8)
    rows = base.read_rows(name, 3, 7)
    expected = add_rows(rows, [(vector.decode_rows(name, 3, 7), 1.0)], torch.bfloat16)
    fused.add_in_place(rows, vector, name, 3, 7, 1.0, None, name=name, pristine=lambda: base.read_rows(name, 3, 7))
    assert torch.equal(rows.view(torch.int16), expected.view(torch.int16))


def test_an_overflowing_fused_sum_is_refused_as_the_float32_path_refuses_it(family, encoded):
    vector, base = encoded["packed"], open_checkpoint(family["instruct"])
    name = next(n for n, e in vector.entries.items() if e.encoding == "packed")
    rows = base.read_rows(name)
    stop = vector.entries[name].shape[0]
    with pytest.raises(Exception) as general:
        add_rows(rows, [(vector.decode_rows(name, 0, stop), 1e40)], torch.bfloat16, name=name)
    with pytest.raises(type(general.value), match=re.escape(str(general.value)[:40])):
        fused.add_in_place(rows, vector, name, 0, stop, 1e40, None, name=name, pristine=lambda: base.read_rows(name))


def test_a_packed_block_whose_gaps_run_past_its_rows_is_refused_by_the_fused_kernel():
    import numpy as np

    rows = torch.zeros(2, 4, dtype=torch.bfloat16)
    status, _, _ = fused.add_coded(rows, np.array([3, 9], dtype=np.uint8), np.zeros(2, dtype=np.uint8), np.ones(1, dtype=np.float32), np.zeros(0, dtype=np.float32), 1.0)
    assert status == 1  # "places an entry past its last element", as packed names it
    assert torch.equal(rows, torch.zeros(2, 4, dtype=torch.bfloat16).index_put_((torch.tensor([0]), torch.tensor([2])), torch.tensor(1.0, dtype=torch.bfloat16)))


@pytest.mark.parametrize(("out_dtype", "loads"), [("bf16", True), ("fp32", False)])
def test_apply_loads_the_kernels_only_when_a_fused_add_will_run_and_never_numba(family, vector_dir, tmp_path, out_dtype, loads):
    import subprocess
    import sys

    script = (
        "import sys; from rvec_hub.apply import apply_vectors; from rvec_hub import Vector; from rvec_hub.check import dtype_from_name;"
        "from rvec_hub.io.checkpoint import open_checkpoint;"
        f"apply_vectors([(Vector.open({str(vector_dir)!r}), 1.0)], open_checkpoint({str(family['instruct'])!r}), {str(tmp_path / 'out')!r},"
        f" out_dtype=dtype_from_name({out_dtype!r}), device='cpu', quiet=True); print('rvec_hub._kernels' in sys.modules, 'numba' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(loads), "False"]


def test_apply_without_the_compiled_kernels_writes_the_same_weights(family, vector_dir, tmp_path):
    """An installation built without a C compiler (setup.py's extension is optional) adds through torch."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    def apply(out, hide: bool) -> dict:
        script = (
            ("import sys; sys.modules['rvec_hub._ckernels'] = None;" if hide else "")
            + "from rvec_hub.apply import apply_vectors; from rvec_hub import Vector, fused; from rvec_hub.io.checkpoint import open_checkpoint;"
            f"apply_vectors([(Vector.open({str(vector_dir)!r}), 1.0)], open_checkpoint({str(family['instruct'])!r}), {str(out)!r}, device='cpu', quiet=True);"
            "print(fused.available())"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert done.stdout.split() == [str(not hide)]
        return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}

    general, fused_out = apply(tmp_path / "general", True), apply(tmp_path / "fused", False)
    assert general.keys() == fused_out.keys()
    assert all(torch.equal(general[k].view(torch.int16), fused_out[k].view(torch.int16)) for k in general)


def test_populate_faults_pages_in_without_changing_them() -> None:
    if not fused.available():
        pytest.skip("the compiled kernels are not built")
    kept = torch.arange(3_000_001, dtype=torch.float32)[1:]  # not page-aligned: the pages around it are populated too
    assert _kernels.populate(kept) in (0, 22)  # 22 (EINVAL): a kernel before Linux 5.14, which callers ignore
    assert torch.equal(kept, torch.arange(1, 3_000_001, dtype=torch.float32))
    fresh = torch.empty(4_000_000, dtype=torch.bfloat16)
    fused.populate(fresh)
    fresh.fill_(1.0)
    assert bool((fresh == 1.0).all())
    assert _kernels.populate(torch.empty(0)) == 0
