"""The real vLLM CPU engine on SmolLM2-135M-Instruct (tied embeddings): `--load-format rvec` and LoRA mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rvec_hub import Vector
from rvec_serving.lora import dropped_note, export_adapter
from rvec_serving.spec import OpenedVector

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ALPHA = 1.5
PROMPTS = ["<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n", "The capital of France is"]
ENGINE = {"enforce_eager": True, "max_model_len": 128, "max_num_seqs": 4, "gpu_memory_utilization": 0.1,
          "distributed_executor_backend": "uni"}


def _reference(base: Path, vector: Path, out: Path) -> str:
    """transformers' own base + α·v (float32 sum, cast once to bf16), saved as a checkpoint vLLM can load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    vec = Vector.open(vector)
    with torch.no_grad():
        for name, param in model.named_parameters():  # the tied embedding, which is also the head, once
            if name in vec.entries and vec.entries[name].encoding != "zero":
                param.copy_(param.float().add_(vec.decode(name), alpha=ALPHA).to(torch.bfloat16))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def runs(smollm2_pair, smollm2_vector, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("smollm2-vllm")
    base = str(smollm2_pair["reference"])
    threads = torch.get_num_threads()
    # On a shared, oversubscribed 2-core host, LAPACK's SVD with 2 OpenMP threads runs 30-60x slower than with one.
    torch.set_num_threads(1)
    try:
        adapter = export_adapter(OpenedVector(str(smollm2_vector), Vector.open(smollm2_vector), ALPHA), 16, work / "lora")
    finally:
        torch.set_num_threads(threads)
    runs = [
        {"name": "base", "llm": {"model": base}},
        {"name": "rvec", "llm": {"model": base, "load_format": "rvec",
                                 "model_loader_extra_config": {"vectors": [{"ref": str(smollm2_vector), "alpha": ALPHA}]}}},
        {"name": "reference", "llm": {"model": _reference(smollm2_pair["reference"], smollm2_vector, work / "reference")}},
        {"name": "lora", "llm": {"model": base, "enable_lora": True, "max_lora_rank": 16, "max_loras": 1},
         "adapters": {"arith": str(adapter.path)}},
    ]
    spec = {"prompts": PROMPTS, "max_tokens": 6, "logprobs": 5, "engine": ENGINE, "runs": runs}
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(work / "spec.json"), str(work / "out.json")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads((work / "out.json").read_text())}
    results["_note"] = dropped_note("arith", adapter)
    return results


def _out(runs, name: str, adapter: str = "base") -> list[dict]:
    assert "error" not in runs[name], runs[name].get("error")
    return runs[name]["outputs"][adapter]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x["tokens"] == y["tokens"] and x["logprobs"] == y["logprobs"] for x, y in zip(a, b, strict=True))


def test_rvec_load_format_on_tied_model_equals_transformers_reference(runs) -> None:
    assert _same(_out(runs, "rvec"), _out(runs, "reference"))
    assert not _same(_out(runs, "rvec"), _out(runs, "base")), "the vector must change the model"


def test_lora_mode_serves_real_model_and_reports_what_it_drops(runs) -> None:
    lora, base = _out(runs, "lora", "arith"), _out(runs, "lora")
    assert [o["tokens"] for o in base] == [o["tokens"] for o in _out(runs, "base")]
    assert not _same(lora, base)
    assert "embed_tokens" in runs["_note"]  # vLLM's LoRA takes no embedding delta here; the note says so
