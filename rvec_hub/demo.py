"""`rvec demo`: the whole story offline, on a tiny embedded donor family.

build donors → extract → compress → local Hub → push 1.0.0 → pull verified → serve with vLLM → ask.
Every server it starts runs in its own process group and is stopped on the way out, on error too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RvecError

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
REPO_ID = "demo/tiny-reasoning"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RvecError(f"{what} exited during start-up (code {proc.returncode}): {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RvecError(f"{what} did not answer {url} within {timeout:.0f} s; its log is {log}")


@contextmanager
def _background(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run a command in its own process group; stop the whole group on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # children the server left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ask(url: str, model: str, question: str) -> tuple[str, float]:
    """The greedy answer and the log-probability of its first token."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="rvec-demo")
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0.0, logprobs=True
    )
    choice = reply.choices[0]
    first = choice.logprobs.content[0].logprob if choice.logprobs and choice.logprobs.content else float("nan")
    return choice.message.content or "", first


def _serve(base: Path, vector: str, name: str, port: int) -> list[str]:
    rvec = [sys.executable, "-m", "rvec_hub.cli"]
    return [*rvec, "serve", "--base", str(base), "--vector", vector, "--port", str(port), "--",
            "--served-model-name", name, "--max-model-len", "512", "--max-num-seqs", "8"]


def run_demo(workdir: Path, *, echo: Callable[[str], None] = print, timeout: float = 300.0) -> dict:
    """Run the demo in `workdir` (replaced if present) and return what it measured.

    Args:
        workdir: scratch directory for models, vectors, the Hub storage and logs.
        echo: where the few readable lines go.
        timeout: seconds each server may take to start.

    Returns:
        A dict with the vector sizes, the pushed commit and both answers.
    """
    from .compress import compress
    from .extract import extract
    from .hub.pull import pull
    from .hub.push import push
    from .synthetic import TINY, write_family
    from .vector import Vector

    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    step = lambda text: echo(f"[{time.monotonic() - started:5.1f}s] {text}")  # noqa: E731

    family = write_family(workdir / "models", TINY, seed=0)
    step(f"built a tiny Qwen2 donor pair (sft, grpo) and target (instruct) in {workdir / 'models'}")
    vec = extract(family["sft"], family["grpo"], workdir / "vector", base_model="demo/tiny-instruct",
                  description="Demo reasoning vector from a tiny synthetic Qwen2 family.", quiet=True)
    dense = sum(f.size for f in vec.manifest.files)
    step(f"extracted the vector grpo − sft: {vec.changed_tensors} tensors changed, {vec.zero_tensors} unchanged, {dense / 1e6:.2f} MB")
    small = compress(Vector.open(vec.path), workdir / "vector-lossless", method="auto", device="cpu", quiet=True)
    step(f"compressed it losslessly: {small.payload_bytes / 1e6:.2f} MB ({small.payload_bytes / small.dense_bytes:.0%} of dense), bit-exact")

    token, hub_root, hub_port = secrets.token_hex(16), workdir / "hub", _free_port()
    endpoint = f"http://127.0.0.1:{hub_port}"
    hub_cmd = [sys.executable, "-m", "rvec_hub.cli", "hub", "serve", "--root", str(hub_root), "--port", str(hub_port)]
    with _background(hub_cmd, workdir / "hub.log", {"RVEC_HUB_TOKEN": token, "RVEC_HUB_USER": "demo"}) as hub:
        _wait_http(f"{endpoint}/api/models", hub, 60, "the Hub server", workdir / "hub.log")
        step(f"started the local Hub at {endpoint}")
        pushed = push(small.path, REPO_ID, "1.0.0", endpoint=endpoint, token=token, quiet=True)
        step(f"pushed {REPO_ID} version 1.0.0 (commit {pushed.commit[:12]})")
        pulled = pull(f"{REPO_ID}@1.0.0", output=workdir / "pulled", endpoint=endpoint, token=token)
        step(f"pulled {REPO_ID}@1.0.0 → {pulled.path}: commit {pulled.commit[:12]}, every file verified")

    answers = {}
    for label, alpha in (("plain target", 0.0), ("with vector", 1.0)):
        port = _free_port()
        log = workdir / f"serve-{int(alpha)}.log"
        argv = _serve(family["instruct"], f"{pulled.path}:{alpha}", "instruct", port)
        t0 = time.monotonic()
        with _background(argv, log) as server:
            _wait_http(f"http://127.0.0.1:{port}/v1/models", server, timeout, "rvec serve", log)
            step(f"rvec serve: instruct + vector at alpha {alpha:g} on http://127.0.0.1:{port}/v1 (up in {time.monotonic() - t0:.0f} s)")
            answers[label] = _ask(f"http://127.0.0.1:{port}/v1", "instruct", QUESTION)
    step("stopped the Hub and both servers")
    echo(f"\nQ: {QUESTION}")
    for label, (text, logprob) in answers.items():
        echo(f"  {label:>12}: {text[:60]!r}  (first-token logprob {logprob:.6f})")
    same = answers["plain target"][0] == answers["with vector"][0]
    echo("The donors are random tiny models, so neither answer reasons; the vector's effect shows in the "
         + ("log-probabilities (the greedy text is the same)." if same else "text and log-probabilities."))
    result = {"dense_bytes": dense, "lossless_bytes": small.payload_bytes, "commit": pushed.commit,
              "answers": {k: {"text": t, "first_token_logprob": lp} for k, (t, lp) in answers.items()},
              "seconds": time.monotonic() - started}
    (workdir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
