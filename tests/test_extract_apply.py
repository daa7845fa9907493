"""extract → apply reproduces task arithmetic computed independently, and the result runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rvec_hub import Vector, apply_vectors, check, extract, open_checkpoint, open_vector, vector_info
from rvec_hub.synthetic import QWEN25_15B, tensor_shapes


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _reference(family: dict[str, Path], alpha: float, delta_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """target + α·(tuned − reference), in float32, cast once to bf16."""
    sft, grpo, inst = (_weights(family[k]) for k in ("sft", "grpo", "instruct"))
    out = {}
    for name, w in inst.items():
        delta = grpo[name].float() - sft[name].float()
        if delta_dtype is not None:
            delta = delta.to(delta_dtype).float()
        out[name] = (w.float() + alpha * delta).to(w.dtype)
    return out


def test_apply_fp32_vector_equals_float32_reference_bit_for_bit(family, vector_fp32, tmp_path):
    apply_vectors([(Vector.open(vector_fp32), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, 1.0)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_apply_bf16_vector_equals_reference_with_bf16_delta(family, vector_dir, tmp_path):
    apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, 1.0, torch.bfloat16)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_alpha_zero_returns_base_bit_for_bit(family, vector_dir, tmp_path):
    apply_vectors([(Vector.open(vector_dir), 0.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, base = _weights(tmp_path / "out"), _weights(family["instruct"])
    for name in base:
        assert torch.equal(got[name], base[name]), name


def test_alpha_minus_one_subtracts(family, vector_fp32, tmp_path):
    apply_vectors([(Vector.open(vector_fp32), -1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, -1.0)
    changed = 0
    for name in want:
        assert torch.equal(got[name], want[name]), name
        changed += not torch.equal(got[name], _weights(family["instruct"])[name])
    assert changed > 0


def test_two_vectors_add_up(family, vector_fp32, tmp_path):
    vec = Vector.open(vector_fp32)
    apply_vectors([(vec, 0.5), (vec, 0.5)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, 1.0)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_out_dtype_fp32_keeps_the_whole_vector(family, vector_fp32, tmp_path):
    result = apply_vectors(
        [(Vector.open(vector_fp32), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", out_dtype=torch.float32, quiet=True
    )
    assert result.retained[0] > 0.999999
    bf16 = apply_vectors([(Vector.open(vector_fp32), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "bf16", quiet=True)
    assert bf16.retained[0] < 0.9  # RL-sized updates lose part of their norm to bf16 rounding
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"


def test_applied_model_loads_and_generates_in_transformers(family, vector_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tok("Question: 3 + 4?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    merged = _weights(tmp_path / "out")
    for name, param in model.state_dict().items():
        if name in merged:
            assert torch.equal(param, merged[name]), name


def test_sharded_output_has_an_index_that_transformers_reads(family, vector_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    result = apply_vectors(
        [(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", max_shard_bytes=200_000, quiet=True
    )
    assert result.shards > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in (tmp_path / "out").glob("model-*.safetensors")}
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_extract_records_zero_tensors_without_payload(vector_dir):
    vec = Vector.open(vector_dir)
    zero = [e for e in vec.entries.values() if e.encoding == "zero"]
    assert zero and all(not e.keys for e in zero)
    assert all(torch.count_nonzero(vec.decode(e.name)) == 0 for e in zero)
    stored = set()
    for f in vector_dir.glob("*.safetensors"):
        stored |= set(load_file(f))
    assert not stored & {e.name for e in zero}


def test_extract_sharded_vector_round_trips(family, tmp_path):
    out = tmp_path / "vec"
    extract(family["sft"], family["grpo"], out, max_shard_bytes=100_000, quiet=True)
    assert (out / "vector.safetensors.index.json").exists()
    sharded, whole = Vector.open(out), Vector.open(out)
    grpo, sft = _weights(family["grpo"]), _weights(family["sft"])
    for name, entry in sharded.entries.items():
        want = (grpo[name].float() - sft[name].float()).to(torch.bfloat16).float()
        assert torch.equal(whole.decode(name), want), name


def test_extract_reports_rounding_error_of_storage_dtype(family, tmp_path):
    fp32 = extract(family["sft"], family["grpo"], tmp_path / "a", dtype=torch.float32, quiet=True)
    bf16 = extract(family["sft"], family["grpo"], tmp_path / "b", quiet=True)
    assert fp32.max_rounding_error == 0.0
    assert bf16.max_rounding_error > 0.0
    assert bf16.manifest.extract["storage_dtype"] == "bfloat16"


def test_manifest_and_card_describe_the_vector(vector_dir):
    info = vector_info(open_vector(vector_dir))
    assert info["format_version"] == 1 and info["base"]["architecture"] == "Qwen2ForCausalLM"
    assert info["base"]["fingerprint"].startswith("sha256:")
    card = (vector_dir / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: rvec", "base_model: tiny/instruct", "base_model_relation: adapter", "- reasoning-vector", "- task-vector"):
        assert line in front
    assert "rvec apply" in card


def test_check_reports_survival_for_a_compatible_base(family, vector_dir):
    report = check(Vector.open(vector_dir), open_checkpoint(family["instruct"]))
    assert report.ok and report.fingerprint_match
    assert 0.0 < report.retained < 1.0 and report.out_dtype == "bfloat16"


def test_synthetic_shapes_match_transformers_qwen2_at_full_size():
    """The 1.5B layout, checked on the meta device: no memory is allocated."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = QWEN25_15B
    config = Qwen2Config(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    want = {n: tuple(p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}
    assert tensor_shapes(s) == want


@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_scaled_apply_matches_reference(family, vector_fp32, tmp_path, alpha):
    apply_vectors([(Vector.open(vector_fp32), alpha)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, alpha)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_open_files_are_closed_quietly_when_the_interpreter_exits(vector_dir: Path) -> None:
    import subprocess
    import sys

    # A script holding the I/O module and an open vector at exit: the module's globals are torn down first.
    script = f"import rvec_hub.io.safetensors_io as io_module\nfrom rvec_hub import Vector\nkept = Vector.open({str(vector_dir)!r})\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_apply_reuses_a_sum_buffer_only_after_the_writer_has_written_it(family, vector_dir, tmp_path, monkeypatch):
    import time

    from rvec_hub import apply as apply_module
    from rvec_hub import arith, fused
    from rvec_hub.io.safetensors_io import ShardWriter

    if not fused.available():
        pytest.skip("the fused kernels are not built")

    class SlowFile:
        """The shard file, written a millisecond late: sums pile up behind the writer."""

        def __init__(self, file) -> None:
            self._file = file

        def write(self, data) -> int:
            time.sleep(0.001)
            return self._file.write(data)

        def __getattr__(self, name: str):
            return getattr(self._file, name)

    open_shard = ShardWriter._open_shard

    def slow_open_shard(self) -> None:
        open_shard(self)
        self._file = SlowFile(self._file)

    buffers: list[int] = []
    take = apply_module._Sums.take

    def recording_take(self, like):
        rows, written = take(self, like)
        buffers.append(rows.untyped_storage().data_ptr())
        return rows, written

    monkeypatch.setattr(arith, "CHUNK_ELEMENTS", 1024)
    monkeypatch.setattr(ShardWriter, "_open_shard", slow_open_shard)
    monkeypatch.setattr(apply_module._Sums, "take", recording_take)
    apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "out", quiet=True)
    got, want = _weights(tmp_path / "out"), _reference(family, 1.0, torch.bfloat16)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert len(buffers) > 100 and len(set(buffers)) <= 16, (len(buffers), len(set(buffers)))
