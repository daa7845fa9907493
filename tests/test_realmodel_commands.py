"""Every command on the real SmolLM2-135M-Instruct (Llama, tied embeddings) and its real arithmetic donor pair."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rvec_hub import CompatibilityError, Vector, apply_vectors, extract, open_checkpoint
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.synthetic import TINY, shapes_with, write_family
from rvec_hub.tied import EMBEDDING, HEAD

from hubtest_common import ALICE

ALPHA = 1.5
PROMPT = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"


def _run(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))
    return code, buf.getvalue()


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits[0]


def _reference(base: Path, vector: Path, alpha: float):
    """transformers' own base + α·v: each parameter taken to float32, α·Δ added, cast once back to bf16."""
    from transformers import AutoModelForCausalLM

    # Loaded in bf16 like the merged model (casting a float32 model would also round its RoPE buffers).
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
    vec = Vector.open(vector)
    with torch.no_grad():
        # named_parameters() lists a tied matrix once: the embedding that is also the head.
        for name, param in model.named_parameters():
            entry = vec.entries.get(name)
            if entry is not None and entry.encoding != "zero":
                param.copy_(param.float().add_(vec.decode(name), alpha=alpha).to(torch.bfloat16))
    return model


@pytest.fixture(scope="module")
def merged(smollm2_pair: dict[str, Path], smollm2_vector: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-apply") / "merged"
    apply_vectors([(Vector.open(smollm2_vector), ALPHA)], open_checkpoint(smollm2_pair["reference"]), out, quiet=True)
    return out


def test_real_pair_vector_changes_the_tied_embedding_and_has_no_head(smollm2_vector: Path) -> None:
    vec = Vector.open(smollm2_vector)
    assert HEAD not in vec.entries  # the donors are tied: their head is their embedding
    assert vec.entries[EMBEDDING].encoding != "zero"
    assert sum(e.encoding != "zero" for e in vec.entries.values()) > 200
    assert vec.manifest.base.architecture == "LlamaForCausalLM"


def test_apply_on_tied_base_equals_transformers_reference_logits(merged: Path, smollm2_pair: dict[str, Path], smollm2_vector: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_pair["reference"])
    applied = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).eval()
    reference = _reference(smollm2_pair["reference"], smollm2_vector, ALPHA)
    assert applied.lm_head.weight is applied.model.embed_tokens.weight  # still tied after apply
    assert torch.equal(applied.lm_head.weight, reference.lm_head.weight)
    assert torch.equal(_logits(applied, tokenizer), _logits(reference, tokenizer))
    base = AutoModelForCausalLM.from_pretrained(smollm2_pair["reference"], dtype=torch.bfloat16).eval()
    assert not torch.equal(applied.lm_head.weight, base.lm_head.weight)  # the head moved with the embedding
    assert not torch.equal(_logits(applied, tokenizer), _logits(base, tokenizer))


def test_tied_vector_on_untied_base_moves_the_head_with_the_embedding(tmp_path: Path) -> None:
    tied = write_family(tmp_path / "tied", TINY, seed=3)
    untied = write_family(tmp_path / "untied", shapes_with(TINY, tie_word_embeddings=False), seed=3)
    extract(tied["sft"], tied["grpo"], tmp_path / "vec", dtype=torch.float32, quiet=True)
    apply_vectors([(Vector.open(tmp_path / "vec"), ALPHA)], open_checkpoint(untied["instruct"]), tmp_path / "out", quiet=True)
    vec = Vector.open(tmp_path / "vec")
    delta = vec.decode(EMBEDDING)
    with safe_open(untied["instruct"] / "model.safetensors", "pt") as base, safe_open(tmp_path / "out" / "model.safetensors", "pt") as out:
        for name in (EMBEDDING, HEAD):
            want = (base.get_tensor(name).float() + ALPHA * delta).to(torch.bfloat16)
            assert torch.equal(out.get_tensor(name), want), name


def test_vllm_weights_iterator_gives_untied_head_the_tied_embedding_delta(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rvec_serving.merge import merged_weights
    from rvec_serving.spec import OpenedVector

    tied = write_family(tmp_path / "tied", TINY, seed=5)
    untied = write_family(tmp_path / "untied", shapes_with(TINY, tie_word_embeddings=False), seed=5)
    extract(tied["sft"], tied["grpo"], tmp_path / "vec", dtype=torch.float32, quiet=True)
    vec = Vector.open(tmp_path / "vec")
    base = load_file(str(untied["instruct"] / "model.safetensors"))
    merged = dict(merged_weights(base.items(), [OpenedVector("vec", vec, ALPHA)], torch.bfloat16))
    for name in (EMBEDDING, HEAD):
        assert torch.equal(merged[name], (base[name].float() + ALPHA * vec.decode(EMBEDDING)).to(torch.bfloat16)), name


def test_apply_refuses_separate_head_delta_on_tied_base(tmp_path: Path) -> None:
    untied = write_family(tmp_path / "untied", shapes_with(TINY, tie_word_embeddings=False), seed=4)
    tied = write_family(tmp_path / "tied", TINY, seed=4)
    extract(untied["sft"], untied["grpo"], tmp_path / "vec", quiet=True)
    with pytest.raises(CompatibilityError) as err:
        apply_vectors([(Vector.open(tmp_path / "vec"), 1.0)], open_checkpoint(tied["instruct"]), tmp_path / "out", quiet=True)
    assert any("ties it to model.embed_tokens.weight" in p for p in err.value.problems)
    assert not (tmp_path / "out").exists()
    code, out = _run("check", str(tmp_path / "vec"), "--base", str(tied["instruct"]))
    assert code == 1 and "untied copy of the base" in out


def test_cli_extract_info_check_compress_apply_on_real_pair(smollm2_pair: dict[str, Path], smollm2_vector: Path, tmp_path: Path) -> None:
    ref, tuned = str(smollm2_pair["reference"]), str(smollm2_pair["tuned"])
    vec, lossless, merged = tmp_path / "vec-bf16", tmp_path / "vec-lossless", tmp_path / "merged"
    code, out = _run("extract", "--reference", ref, "--tuned", tuned, "-o", str(vec), "-q")
    assert code == 0, out
    code, out = _run("info", str(vec), "--json")
    assert code == 0 and json.loads(out)["base"]["architecture"] == "LlamaForCausalLM", out
    code, out = _run("check", str(smollm2_vector), "--base", ref, "--json")
    assert code == 0 and json.loads(out)["ok"] is True, out
    code, out = _run("compress", str(vec), "-o", str(lossless), "-q", "--json")
    assert code == 0 and json.loads(out)["compression"]["lossless"] is True, out
    code, out = _run("apply", f"{lossless}:{ALPHA}", "--base", ref, "-o", str(merged), "-q")
    assert code == 0, out
    delta = Vector.open(vec).decode(EMBEDDING)
    want = (open_checkpoint(ref).read_rows(EMBEDDING).float() + ALPHA * delta).to(torch.bfloat16)
    assert torch.equal(open_checkpoint(merged).read_rows(EMBEDDING), want)


def test_push_and_pull_real_vector_round_trip(smollm2_vector: Path, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", ALICE)
    code, out = _run("push", str(smollm2_vector), "alice/smollm2-arith", "--version", "1.0.0", "--endpoint", url, "-q")
    assert code == 0, out
    code, out = _run("pull", "alice/smollm2-arith@1.0.0", "-o", str(tmp_path / "pulled"), "--endpoint", url)
    assert code == 0, out
    for payload in sorted(smollm2_vector.glob("*.safetensors")):
        assert _sha(tmp_path / "pulled" / payload.name) == _sha(payload)


def test_eval_runs_real_model_with_its_vector(smollm2_pair: dict[str, Path], smollm2_vector: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "sums.jsonl"
    tasks.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n" for a, b in [(12, 7)]))
    code, out = _run("eval", "--base", str(smollm2_pair["reference"]), "--vector", f"{smollm2_vector}:1", "--tasks", str(tasks),
                     "--engine", "transformers", "--device", "cpu", "--chat", "--max-tokens", "8", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [r["vectors"] for r in report["results"]] == [[], [{"ref": str(smollm2_vector), "alpha": 1.0}]]
    assert all(r["n"] == 1 for r in report["results"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
