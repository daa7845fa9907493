"""Run vLLM offline on a list of engine configurations and record greedy tokens, logprobs and timings.

Tests and benchmarks compare engines through this one script, so each configuration starts one engine,
one after another, in a single process: `python -m rvec_serving.probe SPEC.json OUT.json`.

SPEC is `{"prompts": [...], "max_tokens": 8, "logprobs": 5, "engine": {...common LLM kwargs...},
"runs": [{"name": ..., "llm": {...LLM kwargs...}, "adapters": {"name": "adapter dir"},
"throughput": {"prompts": 32, "max_tokens": 64}}]}`.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path


def _greedy(llm, prompts: list[str], max_tokens: int, logprobs: int, lora=None) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs, ignore_eos=True)
    outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    result = []
    for out in outputs:
        gen = out.outputs[0]
        # Per position: the chosen token's logprob and the top-k alternatives.
        steps = [{str(t): lp.logprob for t, lp in pos.items()} for pos in gen.logprobs]
        chosen = [pos[t].logprob for t, pos in zip(gen.token_ids, gen.logprobs)]
        result.append({"tokens": list(gen.token_ids), "text": gen.text, "token_logprobs": chosen, "logprobs": steps})
    return result


def _throughput(llm, spec: dict) -> dict:
    from vllm import SamplingParams

    prompts = [f"Question {i}: what is {i} + {i}? Let's think step by step." for i in range(spec["prompts"])]
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    started, cpu = time.perf_counter(), time.process_time()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    # CPU seconds are what a shared host distorts least; wall seconds are what users see.
    return {"tokens": tokens, "seconds": elapsed, "cpu_seconds": cpu, "tokens_per_s": tokens / elapsed, "tokens_per_cpu_s": tokens / cpu}


def run_one(spec: dict, run: dict) -> dict:
    """Start one engine, generate, shut it down; returns outputs per adapter ("base" without one)."""
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    started, cpu = time.perf_counter(), time.process_time()
    llm = LLM(**{**spec.get("engine", {}), **run["llm"]})
    startup, cpu = time.perf_counter() - started, time.process_time() - cpu
    record = {"name": run["name"], "startup_s": startup, "startup_cpu_s": cpu, "outputs": {}}
    args = (spec["prompts"], spec.get("max_tokens", 8), spec.get("logprobs", 5))
    if run.get("base", True):
        record["outputs"]["base"] = _greedy(llm, *args)
    for i, (name, path) in enumerate(run.get("adapters", {}).items(), 1):
        record["outputs"][name] = _greedy(llm, *args, lora=LoRARequest(name, i, str(path)))
    if run.get("throughput"):
        record["throughput"] = _throughput(llm, run["throughput"])
    del llm
    gc.collect()
    return record


def main(argv: list[str]) -> int:
    import os

    # One engine in this process: no engine-core subprocess to spawn and import per configuration.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    spec = json.loads(Path(argv[0]).read_text())
    results = []
    for run in spec["runs"]:
        try:
            results.append(run_one(spec, run))
        except Exception as exc:  # one failing configuration is recorded, the others still run
            results.append({"name": run["name"], "error": f"{type(exc).__name__}: {exc}"})
        Path(argv[1]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
