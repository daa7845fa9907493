"""A vector is checked against what it claims: stored shapes, dtypes, sparse indexes, factors, finite values and α."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rvec_hub import CheckpointError, FormatError, UsageError, Vector, apply_vectors, extract, open_checkpoint
from rvec_hub.arith import Survival
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.encodings import ENCODINGS
from rvec_hub.manifest import parse_manifest
from rvec_hub.alpha import split_alpha
from vector_edit import rewrite_vector

UP = "model.layers.0.mlp.up_proj.weight"


def _run(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))
    return code, buf.getvalue()


def _error_line(code: int, output: str) -> str:
    assert code != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _apply_cli(vec: Path, base: Path, out: Path, *extra: str) -> tuple[int, str]:
    return _run("apply", str(vec), "--base", str(base), "-o", str(out), "-q", *extra)


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.rvec-*"))


def _reencode(vector_dir: Path, dst: Path, encoding: str, **options) -> Path:
    """The dense vector with UP re-encoded (its first 8 columns kept, so sparse layouts carry fillers)."""
    encoded = {}

    def payload(t):
        delta = t.pop(UP).float()
        delta[:, 8:] = 0
        encoded.update(ENCODINGS[encoding].encode(delta, dtype=torch.bfloat16, **options).__dict__)
        t.update({f"{UP}.{role}": v.contiguous() for role, v in encoded["stored"].items()})

    def manifest(m):
        entry = next(e for e in m["tensors"] if e["name"] == UP)
        entry.update(encoding=encoding, keys={r: f"{UP}.{r}" for r in encoded["stored"]}, params=encoded["params"])

    return rewrite_vector(vector_dir, dst, payload, manifest)


@pytest.fixture(scope="module")
def sparse_vector(vector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reencode(vector_dir, tmp_path_factory.mktemp("v") / "bitmask", "sparse", layout="bitmask")


@pytest.fixture(scope="module")
def gaps_vector(vector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reencode(vector_dir, tmp_path_factory.mktemp("v") / "gaps", "sparse", layout="gaps")


@pytest.fixture(scope="module")
def lowrank_vector(vector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reencode(vector_dir, tmp_path_factory.mktemp("v") / "r4", "lowrank", rank=4)


# Stored shapes and dtypes ---------------------------------------------------------------------


def test_apply_refuses_a_dense_payload_whose_shape_differs_from_its_manifest(family, vector_dir, tmp_path):
    # One column broadcasts over every column of the base: before the check this merged with exit 0.
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t.update({UP: t[UP][:, :1].contiguous()}))
    out = tmp_path / "out"
    line = _error_line(*_apply_cli(vec, family["instruct"], out))
    assert UP in line and "[256, 1]" in line and "[256, 128]" in line
    _nothing_written(tmp_path, out)


def test_check_refuses_a_payload_whose_shape_differs_from_its_manifest(family, vector_dir, tmp_path):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t.update({UP: t[UP][:128].contiguous()}))
    code, out = _run("check", str(vec), "--base", str(family["instruct"]))
    assert UP in _error_line(code, out) and "compatible" not in out.replace("incompatible", "")
    code, out = _run("check", str(vec), "--json")
    report = json.loads(out[out.index("{"):])
    assert code == 1 and not report["ok"] and any(UP in p and "[128, 128]" in p for p in report["problems"])


def test_a_payload_stored_in_another_dtype_than_its_manifest_is_refused(vector_dir, tmp_path):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t.update({UP: t[UP].float()}))
    with pytest.raises(FormatError, match=rf"{UP}.*dtype float32, expected bfloat16"):
        Vector.open(vec)


def test_every_mismatched_tensor_is_listed_not_only_the_first(vector_dir, tmp_path):
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.bias"]
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t.update({n: t[n].float() for n in names}))
    with pytest.raises(FormatError) as err:
        Vector.open(vec)
    assert "and 2 more" in str(err.value) and all(any(n in p for p in err.value.problems) for n in names)


def test_a_manifest_shape_that_disagrees_with_the_payload_is_refused(vector_dir, tmp_path):
    def grow(m):
        next(e for e in m["tensors"] if e["name"] == UP)["shape"] = [512, 128]

    vec = rewrite_vector(vector_dir, tmp_path / "vec", manifest=grow)
    with pytest.raises(FormatError, match="does not match its manifest"):
        Vector.open(vec)


def test_lowrank_factors_whose_shapes_disagree_are_refused(lowrank_vector, tmp_path):
    key = f"{UP}.A"
    vec = rewrite_vector(lowrank_vector, tmp_path / "vec", lambda t: t.update({key: torch.cat([t[key], t[key][:1]])}))
    with pytest.raises(FormatError, match=rf"{UP}.*stored A .*has shape \[5, 128\], expected \[4, 128\]"):
        Vector.open(vec)


def test_lowrank_rank_that_disagrees_with_the_manifest_is_refused(lowrank_vector, tmp_path):
    def rank(m):
        next(e for e in m["tensors"] if e["name"] == UP)["params"]["rank"] = 3

    with pytest.raises(FormatError, match=r"expected \[\d+, 3\]"):
        Vector.open(rewrite_vector(lowrank_vector, tmp_path / "vec", manifest=rank))


# Sparse indexes ------------------------------------------------------------------------------


def _sparse_entry(vec: Path) -> dict:
    return next(e for e in json.loads((vec / "rvec.json").read_text())["tensors"] if e["name"] == UP)


@pytest.mark.parametrize("fixture", ["sparse_vector", "gaps_vector", "lowrank_vector"])
def test_a_re_encoded_vector_applies_exactly_before_it_is_mutated(family, vector_dir, request, tmp_path, fixture):
    vec = Vector.open(request.getfixturevalue(fixture))
    dense = Vector.open(vector_dir).decode(UP)
    dense[:, 8:] = 0
    assert torch.allclose(vec.decode(UP), dense, atol=1e-2 if fixture == "lowrank_vector" else 0)
    base = open_checkpoint(family["instruct"])
    expected = base.read_rows(UP).float() + vec.decode(UP)
    apply_vectors([(vec, 1.0)], base, tmp_path / "out", out_dtype=torch.float32, quiet=True)
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")[UP], expected)


def test_a_sparse_row_pointer_that_falls_is_refused_while_applying(family, sparse_vector, tmp_path):
    key = _sparse_entry(sparse_vector)["keys"]["rowptr"]

    def fall(t):
        t[key][5], t[key][6] = t[key][6].clone(), t[key][5].clone()

    vec = rewrite_vector(sparse_vector, tmp_path / "vec", fall)
    out = tmp_path / "out"
    assert "row pointer" in _error_line(*_apply_cli(vec, family["instruct"], out))
    _nothing_written(tmp_path, out)


def test_a_sparse_row_pointer_past_the_values_is_refused(family, sparse_vector, tmp_path):
    key = _sparse_entry(sparse_vector)["keys"]["rowptr"]
    vec = rewrite_vector(sparse_vector, tmp_path / "vec", lambda t: t[key].__setitem__(-1, t[key][-1] + 7))
    code, out = _run("check", str(vec))
    assert code == 1 and "row pointer points outside" in out and "Traceback" not in out


def test_a_bitmask_that_disagrees_with_its_counts_is_refused(family, sparse_vector, tmp_path):
    key = _sparse_entry(sparse_vector)["keys"]["mask"]
    vec = rewrite_vector(sparse_vector, tmp_path / "vec", lambda t: t[key].__setitem__((0, 0), t[key][0, 0] ^ 1))
    out = tmp_path / "out"
    assert "bitmask" in _error_line(*_apply_cli(vec, family["instruct"], out))
    _nothing_written(tmp_path, out)


def test_a_gap_index_past_the_row_end_is_refused(family, gaps_vector, tmp_path):
    key = f"{UP}.gaps"
    vec = rewrite_vector(gaps_vector, tmp_path / "vec", lambda t: t[key].__setitem__(0, 200))
    out = tmp_path / "out"
    assert "past column" in _error_line(*_apply_cli(vec, family["instruct"], out))
    _nothing_written(tmp_path, out)


def test_a_zero_gap_repeating_a_position_is_refused(gaps_vector, tmp_path):
    key = f"{UP}.gaps"
    vec = rewrite_vector(gaps_vector, tmp_path / "vec", lambda t: t[key].__setitem__(1, 0))
    with pytest.raises(FormatError, match="gap of 0"):
        Vector.open(vec).decode(UP)


# rvec check VEC on its own -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["vector_dir", "sparse_vector", "gaps_vector", "lowrank_vector"])
def test_check_without_a_base_verifies_a_sound_vector(request, fixture):
    vec = request.getfixturevalue(fixture)
    code, out = _run("check", str(vec), "--json")
    report = json.loads(out[out.index("{"):])
    assert code == 0 and report["ok"] and report["problems"] == [] and report["tensors"] > 0
    code, out = _run("check", str(vec))
    assert code == 0 and "checksums, structure and values verified" in out


def test_check_without_a_base_lists_hash_and_value_problems_together(vector_dir, tmp_path):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t[UP].__setitem__((3, 4), float("nan")))
    readme = vec / "README.md"
    manifest = json.loads((vec / "rvec.json").read_text())
    manifest["files"].append({"path": "README.md", "sha256": "0" * 64, "size": readme.stat().st_size})
    (vec / "rvec.json").write_text(json.dumps(manifest))
    code, out = _run("check", str(vec), "--json")
    report = json.loads(out[out.index("{"):])
    assert code == 1 and not report["ok"]
    assert any("README.md sha256 differs" in p for p in report["problems"])
    assert any(UP in p and "1 NaN or Inf value" in p for p in report["problems"])


def test_check_without_a_base_refuses_precision_options(vector_dir):
    assert "--base" in _error_line(*_run("check", str(vector_dir), "--alpha", "2"))


# Non-finite deltas ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_apply_refuses_a_delta_holding_nan_or_inf_and_names_the_tensor(family, vector_dir, tmp_path, value):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t[UP].__setitem__((7, 9), value))
    out = tmp_path / "out"
    line = _error_line(*_apply_cli(vec, family["instruct"], out))
    assert UP in line and "NaN or Inf" in line
    _nothing_written(tmp_path, out)


def test_compress_refuses_a_delta_holding_nan(vector_dir, tmp_path):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t[UP].__setitem__((0, 0), float("nan")))
    for extra in ([], ["--rank", "4"], ["--energy", "0.5"]):
        out = tmp_path / f"out{len(extra)}"
        line = _error_line(*_run("compress", str(vec), "-o", str(out), "-q", "--device", "cpu", *extra))
        assert UP in line and "NaN or Inf" in line
        _nothing_written(tmp_path, out)


def test_serving_merge_refuses_a_delta_holding_inf(family, vector_dir, tmp_path):
    from rvec_serving.merge import merged_weights
    from rvec_serving.spec import OpenedVector

    vec = Vector.open(rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t[UP].__setitem__((1, 1), float("-inf"))))
    weights = load_file(family["instruct"] / "model.safetensors")
    with pytest.raises(FormatError, match=rf"{UP} holds NaN or Inf"):
        list(merged_weights(weights.items(), [OpenedVector("vec", vec, 1.0)], torch.bfloat16))


def test_extract_refuses_a_donor_difference_that_overflows_the_storage_dtype(family, tmp_path):
    tuned = tmp_path / "tuned"
    shutil.copytree(family["grpo"], tuned)
    tensors = load_file(tuned / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"][0] = 1e5  # fits bf16, not fp16
    save_file(tensors, tuned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.q_proj.bias overflows float16.*--dtype fp32"):
        extract(family["sft"], tuned, tmp_path / "vec", dtype=torch.float16, quiet=True)
    _nothing_written(tmp_path, tmp_path / "vec")


# α --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nan", "inf", "-inf", "1e39"])
def test_apply_refuses_a_non_finite_alpha_from_the_reference(family, vector_dir, tmp_path, spec):
    out = tmp_path / "out"
    line = _error_line(*_run("apply", f"{vector_dir}:{spec}", "--base", str(family["instruct"]), "-o", str(out), "-q"))
    assert "finite" in line
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("value", ["nan", "inf", "1e39"])
def test_apply_refuses_a_non_finite_alpha_flag(family, vector_dir, tmp_path, value):
    out = tmp_path / "out"
    assert "finite" in _error_line(*_apply_cli(vector_dir, family["instruct"], out, "--alpha", value))
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39])
def test_a_manifest_default_alpha_that_is_not_finite_is_refused(vector_dir, tmp_path, value):
    vec = rewrite_vector(vector_dir, tmp_path / "vec", manifest=lambda m: m.update(default_alpha=value))
    code, out = _run("info", str(vec))
    assert "default_alpha" in _error_line(code, out)
    with pytest.raises(FormatError, match="default_alpha"):
        parse_manifest((vec / "rvec.json").read_text())


def test_alpha_that_overflows_the_output_dtype_is_refused_with_the_tensor_name(family, vector_dir, tmp_path):
    out = tmp_path / "out"
    line = _error_line(*_run("apply", f"{vector_dir}:1e30", "--base", str(family["instruct"]), "-o", str(out), "-q", "--out-dtype", "fp16"))
    assert "overflows float16" in line and "model." in line
    _nothing_written(tmp_path, out)
    # A float32 output has no rounding error to tell; a large α·‖v‖ makes apply look at the values.
    big = rewrite_vector(vector_dir, tmp_path / "big", lambda t: t[UP].__setitem__((2, 2), 1e5))
    line = _error_line(*_run("apply", f"{big}:1e34", "--base", str(family["instruct"]), "-o", str(out), "-q", "--out-dtype", "fp32"))
    assert "overflows float32" in line and UP in line
    _nothing_written(tmp_path, out)


def test_serving_refuses_a_non_finite_alpha_in_the_loader_config():
    from rvec_serving.spec import split_extra_config

    for alpha in (float("nan"), float("inf"), 1e39, "1.0", True):
        with pytest.raises(UsageError, match="finite"):
            split_extra_config({"vectors": [{"ref": "vec", "alpha": alpha}]})
    with pytest.raises(UsageError, match="finite"):
        split_extra_config({"vectors": ["vec:nan"]})


def test_a_finite_alpha_suffix_still_parses():
    assert split_alpha("vec:-0.5") == ("vec", -0.5) and split_alpha("acme/x@1.0.0") == ("acme/x@1.0.0", None)
    assert math.isclose(split_alpha("vec:3.4e38")[1], 3.4e38)


def test_survival_refuses_nothing_on_a_finite_merge():
    survival = Survival()
    assert survival.add(torch.ones(4), torch.ones(4, dtype=torch.bfloat16), torch.full((4,), 1e-3), 1.0) is True
    assert survival.add(torch.tensor([float("inf")]), torch.tensor([float("inf")], dtype=torch.bfloat16), torch.ones(1), 1.0) is False


def test_a_delta_whose_float32_norm_overflows_but_whose_values_fit_still_applies(family, vector_dir, tmp_path):
    # 1e38 squared overflows float32; the merged weight itself is finite, so this is no reason to refuse.
    vec = rewrite_vector(vector_dir, tmp_path / "vec", lambda t: t.update({UP: t[UP].float()}), lambda m: next(
        e for e in m["tensors"] if e["name"] == UP).update(dtype="float32"))
    big = rewrite_vector(vec, tmp_path / "big", lambda t: t[UP].__setitem__((0, 0), 1e38))
    out = tmp_path / "out"
    code, text = _apply_cli(big, family["instruct"], out, "--out-dtype", "fp32")
    assert code == 0, text
    merged = load_file(out / "model.safetensors")[UP]
    assert bool(torch.isfinite(merged).all()) and merged[0, 0].item() == pytest.approx(1e38, rel=1e-6)
