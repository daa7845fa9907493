"""Tensor parallelism on the vLLM CPU engine: `--load-format rvec` at TP=2 answers as TP=1 does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Question: Tom has 3 apples and buys 4 more.", "The quick brown fox", "What is the capital of France?"]


def _probe(tmp_path, name: str, llm: dict, env: dict) -> tuple[dict, str]:
    spec = {"prompts": PROMPTS, "max_tokens": 12, "logprobs": 3,
            "engine": {"enforce_eager": True, "max_model_len": 256, "max_num_seqs": 8, "dtype": "float32"},
            "runs": [{"name": name, "llm": llm}]}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}-out.json")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}-out.json").read_text())[0]
    assert "error" not in result, result["error"]
    return result, proc.stdout + proc.stderr


def test_tensor_parallel_ranks_merge_their_slices_and_answer_as_one_process(family, vector_dir, tmp_path) -> None:
    llm = {"model": str(family["instruct"]), "load_format": "rvec",
           "model_loader_extra_config": {"vectors": [{"ref": str(vector_dir), "alpha": 1.0}]}}
    one, _ = _probe(tmp_path, "tp1", llm, {})
    two, log = _probe(tmp_path, "tp2", {**llm, "tensor_parallel_size": 2, "distributed_executor_backend": "mp"},
                      {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    for a, b in zip(one["outputs"]["base"], two["outputs"]["base"], strict=True):
        assert a["tokens"] == b["tokens"]
        assert max(abs(p - q) for p, q in zip(a["token_logprobs"], b["token_logprobs"])) < 1e-4
    ranks = sorted(int(m) for m in re.findall(r"rvec: tensor-parallel rank (\d) of 2 spent", log))
    assert ranks == [0, 1]
