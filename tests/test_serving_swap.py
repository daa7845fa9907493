"""Live swap on a real `rvec serve` (vLLM CPU engine): vectors change without a restart, under load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rvec_serving.launch import plan_merged
from rvec_serving.spec import VectorSpec
from rvec_serving.wire import ADMIN_PATH
from servetest_common import free_port, running_server
from vector_edit import rewrite_vector

pytest.importorskip("vllm")

SERVER_ARGS = ["--enforce-eager", "--max-model-len", "256", "--gpu-memory-utilization", "0.1", "--max-num-seqs", "16"]
PROMPT = "The quick brown fox"
TOKEN = "swap-test-token-0123456789"


def _rvec() -> str:
    return str(Path(sys.executable).with_name("rvec"))


@pytest.fixture(scope="module")
def swap_server(family, vector_dir, tmp_path_factory):
    """`rvec serve` with live swap on, serving the tiny vector at alpha 1."""
    work = tmp_path_factory.mktemp("swap")
    (work / "admin.token").write_text(TOKEN + "\n")
    port = free_port()
    cmd = [_rvec(), "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir), "--port", str(port),
           "--admin-token-file", str(work / "admin.token"), "--", *SERVER_ARGS]
    with running_server(cmd, port, work / "server.log") as url:
        yield {"url": url, "root": url.removesuffix("/v1"), "model": "instruct+tiny-reasoning", "work": work}


def _probe(server, max_tokens: int = 6) -> list[float]:
    body = {"model": server["model"], "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1}
    answer = httpx.post(f"{server['url']}/completions", json=body, timeout=120).json()
    return answer["choices"][0]["logprobs"]["token_logprobs"]


def _swap(server, *specs: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    argv = [_rvec(), "swap", "--server", server["root"], "--json"]
    for spec in specs:
        argv += ["--vector", spec]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "RVEC_ADMIN_TOKEN": token})


def test_plain_serve_has_no_admin_endpoint(family, vector_dir) -> None:
    plan = plan_merged(str(family["instruct"]), [VectorSpec(str(vector_dir))])
    assert "--middleware" not in plan.argv


def test_admin_token_shorter_than_16_characters_is_refused_before_start(family, vector_dir, tmp_path) -> None:
    (tmp_path / "short").write_text("abc\n")
    proc = subprocess.run([_rvec(), "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir),
                           "--admin-token-file", str(tmp_path / "short"), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "at least 16 characters" in proc.stderr and "Traceback" not in proc.stderr
    assert "abc" not in proc.stderr + proc.stdout


@pytest.mark.vllm
@pytest.mark.slow
def test_admin_endpoint_refuses_missing_and_wrong_tokens(swap_server) -> None:
    url = swap_server["root"] + ADMIN_PATH
    assert httpx.get(url).status_code == 401
    assert httpx.post(url, json={"vectors": []}, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    answer = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["vectors"][0]["alpha"] == 1.0


@pytest.mark.vllm
@pytest.mark.slow
def test_swap_changes_the_weights_and_swapping_back_restores_them_exactly(swap_server, vector_dir, other_vector) -> None:
    before = _probe(swap_server)
    done = _swap(swap_server, str(other_vector))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["vectors"][0]["ref"] == str(Path(other_vector).resolve())
    other = _probe(swap_server)
    assert other != before
    assert _swap(swap_server, f"{vector_dir}:0.5").returncode == 0
    half = _probe(swap_server)
    assert half not in (before, other)
    assert _swap(swap_server, str(vector_dir)).returncode == 0
    assert _probe(swap_server) == before


@pytest.mark.vllm
@pytest.mark.slow
def test_incompatible_or_corrupt_vector_is_refused_and_the_old_weights_keep_serving(swap_server, vector_dir, wide_vector, tmp_path) -> None:
    before = _probe(swap_server)
    refused = _swap(swap_server, str(wide_vector))
    assert refused.returncode == 1 and "409" in refused.stderr and "previous vectors" in refused.stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(vector_dir, corrupt)
    payload = next(corrupt.glob("*.safetensors"))
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    refused = _swap(swap_server, str(corrupt))
    assert refused.returncode == 1 and "409" in refused.stderr
    poisoned = rewrite_vector(vector_dir, tmp_path / "nan", lambda t: t["model.layers.1.mlp.up_proj.weight"].__setitem__((3, 4), float("nan")))
    refused = _swap(swap_server, str(poisoned))
    assert refused.returncode == 1 and "409" in refused.stderr and "previous vectors" in refused.stderr
    assert "model.layers.1.mlp.up_proj.weight" in refused.stderr
    wrong = _swap(swap_server, str(vector_dir), token="not-the-admin-token-at-all")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "not-the-admin-token" not in wrong.stderr
    assert _probe(swap_server) == before


@pytest.mark.vllm
@pytest.mark.slow
def test_request_in_flight_finishes_on_the_old_weights(swap_server, vector_dir, other_vector) -> None:
    body = {"model": swap_server["model"], "prompt": PROMPT, "max_tokens": 96, "temperature": 0, "logprobs": 1,
            "stream": True, "ignore_eos": True}
    reference = _probe(swap_server, max_tokens=96)
    streamed: list[float] = []
    swapped: list[subprocess.CompletedProcess] = []
    thread = threading.Thread(target=lambda: swapped.append(_swap(swap_server, str(other_vector))))
    with httpx.stream("POST", f"{swap_server['url']}/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            streamed += json.loads(line[6:])["choices"][0]["logprobs"]["token_logprobs"]
            if not thread.is_alive() and not swapped:
                # The swap starts while this request is generating; it must wait for it.
                thread.start()
    thread.join()
    assert swapped[0].returncode == 0, swapped[0].stderr
    assert streamed == reference
    assert _probe(swap_server, max_tokens=96) != reference
    assert _swap(swap_server, str(vector_dir)).returncode == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_three_swaps_under_concurrent_load_fail_no_request(swap_server, vector_dir, other_vector) -> None:
    failures: list[str] = []
    completed = [0]
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    answer = http.post(f"{swap_server['url']}/chat/completions", json={
                        "model": swap_server["model"], "max_tokens": 12, "temperature": 0,
                        "messages": [{"role": "user", "content": "Count to five."}]})
                    if answer.status_code != 200 or not answer.json()["choices"][0]["message"]["content"]:
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    else:
                        completed[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(8)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 240
    try:
        for spec in (str(other_vector), f"{vector_dir}:0.5", str(vector_dir)):
            time.sleep(1.0)
            done = _swap(swap_server, spec)
            assert done.returncode == 0, done.stderr
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not failures, failures[:3]
    assert completed[0] >= 24
