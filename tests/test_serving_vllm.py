"""The real vLLM CPU engine: `--load-format rvec` against `rvec apply`, LoRA mode, and `rvec serve` over HTTP.

Engines are grouped to keep the suite short: one subprocess runs every offline configuration one after
another (`rvec_serving.probe`), and one `rvec serve` server answers every OpenAI-client test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rvec_hub import Vector, apply_vectors, open_checkpoint
from rvec_hub.peft_export import adapter_deltas, export_peft
from servetest_common import free_port, running_server

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Question: Tom has 3 apples and buys 4 more.", "The quick brown fox", "What is the capital of France?"]
ENGINE = {"enforce_eager": True, "max_model_len": 256, "max_num_seqs": 8, "gpu_memory_utilization": 0.1,
          "distributed_executor_backend": "uni"}
SERVER_ARGS = ["--enforce-eager", "--max-model-len", "256", "--gpu-memory-utilization", "0.1", "--max-num-seqs", "64"]


def _apply(family, pairs, out: Path) -> str:
    apply_vectors([(Vector.open(p), a) for p, a in pairs], open_checkpoint(family["instruct"]), out, quiet=True)
    return str(out)


def _with_deltas(base: Path, deltas: dict[str, torch.Tensor], out: Path) -> str:
    """The base plus `deltas`, saved whole in float32 (tiny models only)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out.mkdir()
    weights = {}
    for shard in base.glob("*.safetensors"):
        weights.update(load_file(str(shard)))
    save_file({k: v.float() + deltas.get(k, 0.0) for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    for path in base.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copyfile(path, out / path.name)
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


def _rvec(family, *pairs) -> dict:
    return {"model": str(family["instruct"]), "load_format": "rvec",
            "model_loader_extra_config": {"vectors": [{"ref": str(p), "alpha": a} for p, a in pairs]}}


@pytest.fixture(scope="module")
def offline(family, vector_dir, other_vector, wide_vector, tmp_path_factory) -> dict[str, dict]:
    """Greedy tokens and logprobs of every offline configuration, by name (one engine each, one process)."""
    work = tmp_path_factory.mktemp("offline")
    v1, v2 = vector_dir, other_vector
    # vLLM's Qwen2 takes no embedding LoRA, so the adapters carry the linear layers only (as `rvec serve --mode lora` exports them).
    export_peft(Vector.open(v1), work / "lora-v1", rank=8, embeddings=False)
    export_peft(Vector.open(v2), work / "lora-v2", rank=8, alpha=2.0, embeddings=False)
    runs = [
        {"name": "base", "llm": {"model": str(family["instruct"]), "load_format": "safetensors"}},
        {"name": "applied", "llm": {"model": _apply(family, [(v1, 1.0)], work / "applied"), "load_format": "safetensors"}},
        {"name": "rvec", "llm": _rvec(family, (v1, 1.0))},
        {"name": "rvec-alpha0", "llm": _rvec(family, (v1, 0.0))},
        {"name": "applied-sum", "llm": {"model": _apply(family, [(v1, 1.0), (v2, 1.0)], work / "applied-sum"), "load_format": "safetensors"}},
        {"name": "rvec-sum", "llm": _rvec(family, (v1, 1.0), (v2, 1.0))},
        {"name": "rvec-incompatible", "llm": _rvec(family, (v1, 1.0), (wide_vector, 1.0))},
        {"name": "lowrank-v1", "llm": {"model": _with_deltas(family["instruct"], adapter_deltas(work / "lora-v1"), work / "lr1"), "dtype": "float32"}},
        {"name": "lowrank-v2", "llm": {"model": _with_deltas(family["instruct"], adapter_deltas(work / "lora-v2"), work / "lr2"), "dtype": "float32"}},
        {"name": "lora", "llm": {"model": str(family["instruct"]), "dtype": "float32", "enable_lora": True, "max_lora_rank": 8, "max_loras": 2},
         "adapters": {"v1": str(work / "lora-v1"), "v2": str(work / "lora-v2")}},
        {"name": "base-fp32", "llm": {"model": str(family["instruct"]), "dtype": "float32"}},
    ]
    spec = {"prompts": PROMPTS, "max_tokens": 8, "logprobs": 5, "engine": ENGINE, "runs": runs}
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(work / "spec.json"), str(work / "out.json")],
                          capture_output=True, text=True, timeout=600)
    (work / "probe.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads((work / "out.json").read_text())}
    results["_log"] = proc.stdout + proc.stderr
    return results


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x["tokens"] == y["tokens"] and x["token_logprobs"] == y["token_logprobs"] for x, y in zip(a, b, strict=True))


def _close(a: list[dict], b: list[dict], tol: float) -> bool:
    return all(
        x["tokens"] == y["tokens"] and max(abs(p - q) for p, q in zip(x["token_logprobs"], y["token_logprobs"])) < tol
        for x, y in zip(a, b, strict=True)
    )


def _out(offline, name: str, adapter: str = "base") -> list[dict]:
    assert "error" not in offline[name], offline[name].get("error")
    return offline[name]["outputs"][adapter]


def test_rvec_load_format_equals_the_checkpoint_rvec_apply_wrote(offline) -> None:
    assert _same(_out(offline, "rvec"), _out(offline, "applied"))
    assert not _same(_out(offline, "rvec"), _out(offline, "base")), "the vector must change the model"


def test_rvec_alpha_zero_equals_the_base(offline) -> None:
    assert _same(_out(offline, "rvec-alpha0"), _out(offline, "base"))


def test_two_vectors_equal_the_checkpoint_of_their_sum(offline) -> None:
    assert _same(_out(offline, "rvec-sum"), _out(offline, "applied-sum"))
    assert not _same(_out(offline, "rvec-sum"), _out(offline, "rvec"))


def test_rvec_load_format_logs_survival_per_vector(offline) -> None:
    assert "of the vector's norm survives in bfloat16" in offline["_log"]


def test_incompatible_vector_stops_the_engine_before_loading(offline) -> None:
    error = offline["rvec-incompatible"]["error"]
    assert "refusing to serve" in error and "wide" in error


def test_lora_mode_selects_the_adapter_per_request(offline) -> None:
    base, v1, v2 = (_out(offline, "lora", a) for a in ("base", "v1", "v2"))
    assert _close(base, _out(offline, "base-fp32"), 1e-4)
    assert not _close(v1, base, 1e-4) and not _close(v1, v2, 1e-4)


def test_each_lora_adapter_equals_base_plus_its_low_rank_part(offline) -> None:
    assert _close(_out(offline, "lora", "v1"), _out(offline, "lowrank-v1"), 2e-3)
    assert _close(_out(offline, "lora", "v2"), _out(offline, "lowrank-v2"), 2e-3)


# ---- rvec serve over HTTP, one server for every client test ----


@pytest.fixture(scope="module")
def server(family, vector_dir, tmp_path_factory):
    """`rvec serve --base instruct --vector tiny-reasoning` on 127.0.0.1, ready to answer."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    rvec = str(Path(sys.executable).with_name("rvec"))
    cmd = [rvec, "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir), "--port", str(port), "--", *SERVER_ARGS]
    with running_server(cmd, port, log) as url:
        yield {"url": url, "model": "instruct+tiny-reasoning", "log": log}


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"], api_key="unused")


def test_serve_prints_url_and_model_name(server) -> None:
    text = server["log"].read_text()
    assert f"serving {server['model']} at {server['url']}" in text
    assert "of the vector's norm survives" in text


def test_models_endpoint_lists_the_served_name(client, server) -> None:
    assert [m.id for m in client.models.list().data] == [server["model"]]


def test_completions_equal_the_applied_checkpoint(client, server, offline) -> None:
    expected = _out(offline, "applied")
    for prompt, want in zip(PROMPTS, expected):
        got = client.completions.create(model=server["model"], prompt=prompt, max_tokens=8, temperature=0, logprobs=1,
                                        extra_body={"ignore_eos": True})
        choice = got.choices[0]
        assert choice.text == want["text"]
        assert choice.logprobs.token_logprobs == pytest.approx(want["token_logprobs"], abs=1e-6)


def test_chat_and_streaming_chat_agree(client, server) -> None:
    messages = [{"role": "user", "content": "What is 6 times 5?"}]
    whole = client.chat.completions.create(model=server["model"], messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(model=server["model"], messages=messages, max_tokens=8, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert whole.choices[0].message.content and "".join(pieces) == whole.choices[0].message.content
    assert whole.usage.completion_tokens == 8


def test_streaming_completions_yield_the_same_text(client, server) -> None:
    whole = client.completions.create(model=server["model"], prompt=PROMPTS[1], max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    stream = client.completions.create(model=server["model"], prompt=PROMPTS[1], max_tokens=8, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text


def test_64_concurrent_chat_requests_all_complete_correctly(client, server) -> None:
    from openai import AsyncOpenAI

    questions = [f"What is {i} plus {i}?" for i in range(4)]
    expected = {
        q: client.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": q}], max_tokens=6,
                                          temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content
        for q in questions
    }

    async def burst() -> list[tuple[str, str]]:
        aclient = AsyncOpenAI(base_url=server["url"], api_key="unused", timeout=120)

        async def one(q: str) -> tuple[str, str]:
            r = await aclient.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": q}],
                                                      max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
            return q, r.choices[0].message.content

        try:
            return await asyncio.gather(*(one(questions[i % 4]) for i in range(64)))
        finally:
            await aclient.close()

    answers = asyncio.run(burst())
    assert len(answers) == 64
    assert all(text == expected[q] for q, text in answers)


def test_eval_scores_a_server_already_running_through_its_endpoint(server) -> None:
    from rvec_hub.evaluate import EvalOptions, evaluate, settings_for
    from rvec_hub.tasks import generate

    report = evaluate(None, [generate("tracking", 3)], settings_for([]), EvalOptions(max_tokens=4), endpoint=server["url"])
    (score,) = report.scores
    assert score.setting.label == server["model"] and server["model"].endswith("+tiny-reasoning")
    assert score.result.n == 3 and len(score.completions) == 3 and report.base == server["url"]


def test_serve_refuses_incompatible_vector_within_seconds(family, wide_vector) -> None:
    rvec = str(Path(sys.executable).with_name("rvec"))
    started = time.monotonic()
    proc = subprocess.run([rvec, "serve", "--base", str(family["instruct"]), "--vector", str(wide_vector)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "refusing to serve" in proc.stderr and "hidden_size" in proc.stderr
    assert time.monotonic() - started < 30


def test_plain_vllm_serve_with_rvec_load_format_refuses_incompatible_vector(family, wide_vector) -> None:
    extra = json.dumps({"vectors": [{"ref": str(wide_vector), "alpha": 1.0}]})
    cmd = [sys.executable, "-m", "rvec_serving.vllm_cli", "serve", str(family["instruct"]), "--load-format", "rvec",
           "--model-loader-extra-config", extra, "--port", str(free_port()), *SERVER_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "refusing to serve" in proc.stdout + proc.stderr and "hidden_size" in proc.stdout + proc.stderr


def test_plain_vllm_serve_with_rvec_load_format_equals_the_applied_checkpoint(family, vector_dir, offline, tmp_path) -> None:
    from openai import OpenAI

    port = free_port()
    extra = json.dumps({"vectors": [{"ref": str(vector_dir), "alpha": 1.0}]})
    cmd = [sys.executable, "-m", "rvec_serving.vllm_cli", "serve", str(family["instruct"]), "--load-format", "rvec",
           "--model-loader-extra-config", extra, "--port", str(port), "--served-model-name", "plain", *SERVER_ARGS]
    with running_server(cmd, port, tmp_path / "vllm.log") as url:
        got = OpenAI(base_url=url, api_key="unused").completions.create(
            model="plain", prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=1, extra_body={"ignore_eos": True})
    want = _out(offline, "applied")[0]
    assert got.choices[0].text == want["text"]
    assert got.choices[0].logprobs.token_logprobs == pytest.approx(want["token_logprobs"], abs=1e-6)


def test_serve_lora_mode_offers_base_and_each_vector_per_request(family, vector_dir, other_vector, offline, tmp_path, monkeypatch) -> None:
    from openai import OpenAI

    monkeypatch.setenv("RVEC_CACHE", str(tmp_path / "cache"))
    port = free_port()
    rvec = str(Path(sys.executable).with_name("rvec"))
    cmd = [rvec, "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir), "--vector", f"{other_vector}:2",
           "--mode", "lora", "--rank", "8", "--port", str(port), "--", "--dtype", "float32", *SERVER_ARGS]
    log = tmp_path / "lora.log"
    with running_server(cmd, port, log) as url:
        client = OpenAI(base_url=url, api_key="unused")
        served = {m.id for m in client.models.list().data}
        got = {
            name: client.completions.create(model=name, prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=1,
                                            extra_body={"ignore_eos": True}).choices[0]
            for name in ("instruct", "tiny-reasoning", "other@2")
        }
    assert {"instruct", "tiny-reasoning", "other@2"} <= served
    assert "LoRA drops" in log.read_text()
    for name, offline_name in (("instruct", "base-fp32"), ("tiny-reasoning", "lowrank-v1"), ("other@2", "lowrank-v2")):
        want = _out(offline, offline_name)[0]
        assert got[name].text == want["text"], name
        assert got[name].logprobs.token_logprobs == pytest.approx(want["token_logprobs"], abs=2e-3), name
