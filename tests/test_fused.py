"""The fused bf16 adds give bit for bit what the float32 path gives, for every encoding that has one."""

from __future__ import annotations

import math
import re

import pytest
import torch

from rvec_hub import Vector, fused
from rvec_hub.arith import Survival, add_rows
from rvec_hub.compress import compress
from rvec_hub.encodings import ENCODINGS
from rvec_hub.io.checkpoint import open_checkpoint

from vector_edit import rewrite_vector

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused kernels are not built")


@pytest.fixture(scope="module")
def encoded(vector_dir, vector_fp32, tmp_path_factory) -> dict[str, Vector]:
    root = tmp_path_factory.mktemp("fused")
    compress(Vector.open(vector_dir), root / "packed", method="sparse", device="cpu", quiet=True)
    compress(Vector.open(vector_dir), root / "lowrank", method="lowrank", rank=4, factor_dtype=torch.float32, device="cpu", quiet=True)
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
             "quantized": root / "quantized", "sparse-bitmask": root / "sparse-bitmask", "sparse-gaps": root / "sparse-gaps"}
    return {name: Vector.open(path) for name, path in paths.items()}


@pytest.mark.parametrize("encoding", ["dense-bf16", "dense-fp32", "packed", "lowrank", "quantized", "sparse-bitmask", "sparse-gaps"])
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
    for walk in ("vector", "scalar"):
        before = _kernels.vector_walk(walk)
        try:
            rows = torch.full((offset + size,), float("nan"), dtype=torch.bfloat16)[offset:] if separate else base.clone()
            results[walk] = (fused.add_dense(rows, delta, 0.7, base if separate else None), rows)
        finally:
            _kernels.vector_walk(before)
    (status, err_sq, norm_sq), rows = results["vector"]
    assert status == 0 and torch.equal(rows.view(torch.int16), results["scalar"][1].view(torch.int16))
    assert torch.equal(rows.float(), expected.float())
    assert (err_sq, norm_sq) == pytest.approx(results["scalar"][0][1:], rel=1e-4, abs=1e-20)
    delta[size // 2] = float("inf")
    assert fused.add_dense(base.clone(), delta, 0.7)[0] == fused.BAD_VALUE


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
