"""Bad input: one clear line, a non-zero exit, and nothing half-written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rvec_hub import CheckpointError, CompatibilityError, FormatError, IntegrityError, Vector, apply_vectors, extract, open_checkpoint
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.io.atomic import atomic_directory
from rvec_hub.synthetic import TINY, shapes_with, write_member


def _run(*args: str) -> tuple[int, str]:
    """Run the CLI through its real error boundary; return (exit code, stdout+stderr)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))
    return code, buf.getvalue()


def _copy_model(src: Path, dst: Path, mutate=None, config=None) -> Path:
    shutil.copytree(src, dst)
    if mutate is not None:
        f = dst / "model.safetensors"
        tensors = load_file(f)
        mutate(tensors)
        save_file(tensors, f, metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _copy_vector(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        manifest = json.loads((dst / "rvec.json").read_text())
        edit(manifest)
        (dst / "rvec.json").write_text(json.dumps(manifest))
    return dst


def _one_line_error(code: int, output: str) -> str:
    assert code != 0
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# Donors ---------------------------------------------------------------------------------------


def test_extract_refuses_donors_of_different_shapes(family, tmp_path):
    other = write_member(tmp_path / "wide", shapes_with(TINY, intermediate_size=320), 0, "grpo")
    with pytest.raises(CheckpointError) as err:
        extract(family["sft"], other, tmp_path / "vec", quiet=True)
    assert "intermediate_size" in str(err.value)
    assert len(err.value.problems) > 1  # every mismatched tensor is listed, not just the first
    assert not (tmp_path / "vec").exists()


def test_extract_refuses_donors_of_different_architectures(family, tmp_path):
    llama = _copy_model(family["grpo"], tmp_path / "llama", config={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    code, out = _run("extract", "--reference", str(family["sft"]), "--tuned", str(llama), "-o", str(tmp_path / "vec"))
    line = _one_line_error(code, out)
    assert "LlamaForCausalLM" in line and "Qwen2ForCausalLM" in line
    assert not (tmp_path / "vec").exists()


def test_extract_refuses_a_tensor_present_in_one_donor_only(family, tmp_path):
    extra = _copy_model(family["grpo"], tmp_path / "extra", mutate=lambda t: t.update({"lm_head.weight": torch.zeros(512, 128, dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match="lm_head.weight: in the tuned model only"):
        extract(family["sft"], extra, tmp_path / "vec", quiet=True)


def test_extract_refuses_resized_embeddings(family, tmp_path):
    resized = write_member(tmp_path / "resized", shapes_with(TINY, vocab_size=520), 0, "grpo")
    code, out = _run("extract", "--reference", str(family["sft"]), "--tuned", str(resized), "-o", str(tmp_path / "vec"))
    line = _one_line_error(code, out)
    assert "vocab_size" in line and "resized embeddings" in line


def test_extract_refuses_nan_in_a_delta(family, tmp_path):
    def poison(t):
        t["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")

    bad = _copy_model(family["grpo"], tmp_path / "nan", mutate=poison)
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.weight holds NaN or Inf"):
        extract(family["sft"], bad, tmp_path / "vec", quiet=True)
    assert not (tmp_path / "vec").exists()
    assert not list(tmp_path.glob(".vec.rvec-tmp-*"))


def test_extract_refuses_inf_in_a_delta(family, tmp_path):
    def poison(t):
        t["model.norm.weight"][0] = float("inf")

    bad = _copy_model(family["grpo"], tmp_path / "inf", mutate=poison)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        extract(family["sft"], bad, tmp_path / "vec", quiet=True)


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('RVEC_PICKLE_MARKER', '/tmp/rvec-pickle-ran')}",))


def test_pickle_checkpoint_is_refused_and_never_unpickled(family, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("RVEC_PICKLE_MARKER", str(marker))
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(family["grpo"] / "config.json", evil / "config.json")
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    code, out = _run("extract", "--reference", str(family["sft"]), "--tuned", str(evil), "-o", str(tmp_path / "vec"))
    line = _one_line_error(code, out)
    assert "pytorch_model.bin" in line and "never unpickles" in line
    code, out = _run("extract", "--reference", str(family["sft"]), "--tuned", str(evil / "pytorch_model.bin"), "-o", str(tmp_path / "vec"))
    assert "pickle" in _one_line_error(code, out)
    assert not marker.exists()


def test_truncated_safetensors_is_refused(family, tmp_path):
    cut = _copy_model(family["grpo"], tmp_path / "cut")
    f = cut / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        open_checkpoint(cut)


def test_corrupt_safetensors_header_is_refused(family, tmp_path):
    bad = _copy_model(family["grpo"], tmp_path / "bad")
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8
    f.write_bytes(bytes(data))
    code, out = _run("extract", "--reference", str(family["sft"]), "--tuned", str(bad), "-o", str(tmp_path / "vec"))
    assert "safetensors" in _one_line_error(code, out)


# Vectors --------------------------------------------------------------------------------------


def test_payload_whose_sha256_differs_is_refused(vector_dir, tmp_path):
    vec = _copy_vector(vector_dir, tmp_path / "vec")
    f = vec / "vector.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 differs"):
        Vector.open(vec)


def test_manifest_with_unknown_format_version_names_the_upgrade(vector_dir, tmp_path):
    vec = _copy_vector(vector_dir, tmp_path / "vec", lambda m: m.update(format_version=2))
    code, out = _run("info", str(vec))
    line = _one_line_error(code, out)
    assert "format 2" in line and "pip install -U rvec" in line


@pytest.mark.parametrize("path", ["../outside.safetensors", "/etc/passwd", "a/../../b", "sub\\x"])
def test_manifest_file_path_leaving_the_directory_is_refused(vector_dir, tmp_path, path):
    def escape(m):
        m["files"][0]["path"] = path

    vec = _copy_vector(vector_dir, tmp_path / "vec", escape)
    with pytest.raises(FormatError, match="leaves the vector directory"):
        Vector.open(vec)


def test_manifest_symlink_leaving_the_directory_is_refused(vector_dir, tmp_path):
    vec = _copy_vector(vector_dir, tmp_path / "vec")
    (tmp_path / "secret.safetensors").write_bytes((vec / "vector.safetensors").read_bytes())
    (vec / "vector.safetensors").unlink()
    (vec / "vector.safetensors").symlink_to(tmp_path / "secret.safetensors")
    with pytest.raises(FormatError, match="outside the vector directory"):
        Vector.open(vec)


def test_manifest_missing_a_field_is_refused(vector_dir, tmp_path):
    vec = _copy_vector(vector_dir, tmp_path / "vec", lambda m: m.pop("name"))
    code, out = _run("info", str(vec))
    assert "name: missing" in _one_line_error(code, out)


def test_unknown_encoding_names_the_rvec_version_needed(vector_dir, tmp_path):
    def future(m):
        m["tensors"][1]["encoding"] = "hologram"
        m["rvec_version"] = "9.1.0"

    vec = _copy_vector(vector_dir, tmp_path / "vec", future)
    with pytest.raises(FormatError, match=r"hologram.*rvec>=9\.1\.0"):
        Vector.open(vec)


# Bases ----------------------------------------------------------------------------------------


def test_apply_refuses_a_base_that_does_not_match_and_writes_nothing(family, vector_dir, tmp_path):
    other = write_member(tmp_path / "other", shapes_with(TINY, intermediate_size=320, num_hidden_layers=3), 0, "instruct")
    with pytest.raises(CompatibilityError) as err:
        apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(other), tmp_path / "out", quiet=True)
    assert "rvec check" in str(err.value)
    problems = err.value.problems
    assert any("intermediate_size" in p for p in problems) and any("num_hidden_layers" in p for p in problems)
    assert sum("mlp" in p for p in problems) == 6  # every mismatched tensor, not the first
    assert not (tmp_path / "out").exists()


def test_check_cli_lists_every_mismatch_and_exits_one(family, vector_dir, tmp_path):
    llama = _copy_model(family["instruct"], tmp_path / "llama", config={"architectures": ["LlamaForCausalLM"], "hidden_size": 4096})
    code, out = _run("check", str(vector_dir), "--base", str(llama))
    assert code == 1
    assert "LlamaForCausalLM" in out and "hidden 4096" in out and "config hidden_size" in out
    code, out = _run("check", str(vector_dir), "--base", str(llama), "--json")
    report = json.loads(out[out.index("{"):])
    assert code == 1 and report["ok"] is False and len(report["problems"]) >= 2


# Outputs --------------------------------------------------------------------------------------


def test_existing_output_is_refused_unless_forced(family, vector_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, text = _run("apply", str(vector_dir), "--base", str(family["instruct"]), "-o", str(out), "-q")
    assert "already exists" in _one_line_error(code, text)
    assert (out / "keep.txt").read_text() == "mine"
    code, text = _run("apply", str(vector_dir), "--base", str(family["instruct"]), "-o", str(out), "-q", "--force")
    assert code == 0, text
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_interrupted_output_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x" * 100)
            raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_disk_full_write_leaves_no_partial_output(family, vector_dir, tmp_path):
    """A real write failure: the file-size limit makes the kernel refuse the write (EFBIG)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "rvec_hub.cli", "apply", str(vector_dir), "--base", str(family["instruct"]), "-o", str(out), "-q"],
        preexec_fn=limit, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_apply_of_a_tampered_vector_fails_verification_and_writes_nothing(family, vector_dir, tmp_path):
    """apply hashes the payload while it merges; a mismatch still stops the output from appearing."""
    vec = _copy_vector(vector_dir, tmp_path / "vec")
    f = vec / "vector.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    code, out = _run("apply", str(vec), "--base", str(family["instruct"]), "-o", str(tmp_path / "out"), "-q")
    assert "sha256 differs" in _one_line_error(code, out)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.rvec-tmp-*"))
