"""`rvec demo`: the whole story on a real model, SmolLM2-135M-Instruct.

build the model → train a donor pair from it (SFT, then GRPO) → extract → compress → local Hub → push 1.0.0 →
pull verified → serve the plain and the enhanced model with vLLM → ask both → measure both with 95 % intervals.
The model and the donors are built on the first run and cached. Every server it starts runs in its own
process group and is stopped on the way out, on error too.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import RvecError
from .procs import background, free_port, wait_http

QUESTIONS = (
    "What is 12 + 7?",
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 6 pens. How many pens are in 4 boxes?",
)
REPO_ID = "demo/smollm2-arith-grpo"
MODEL = "smollm2-135m-instruct"
SERVED = "smollm2"
ARITH = "arith@999"  # held out: the donors never train on these questions


@dataclass(frozen=True)
class Schedule:
    """How much the demo trains and measures: a donor recipe and the size of each evaluation set."""

    recipe: str
    arith: int
    bbh: int
    max_tokens: int


SCHEDULES: dict[str, Schedule] = {
    "standard": Schedule(recipe="standard", arith=40, bbh=20, max_tokens=256),
    # One training step of each kind and a handful of questions: the same path in a few minutes, for tests.
    "smoke": Schedule(recipe="smoke", arith=4, bbh=2, max_tokens=32),
}


def _ask(url: str, question: str) -> str:
    """The greedy answer of the served model to one chat question."""
    from openai import OpenAI

    reply = OpenAI(base_url=url, api_key="rvec-demo").chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0.0,
    )
    return reply.choices[0].message.content or ""


def _serve(base: Path, vector: str, port: int) -> list[str]:
    # float32: the RL part of the update is mostly below one bf16 step of the weights it is added to.
    # Eager: on the CPU, torch.compile's warm-up costs each server 1 to 3 minutes, more than a 135M
    # model's answers to every question take without it.
    return [sys.executable, "-m", "rvec_hub.cli", "serve", "--base", str(base), "--vector", vector, "--port", str(port), "--",
            "--served-model-name", SERVED, "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "16",
            "--enforce-eager"]


def vector_share(vector_dir: Path, base: Path) -> dict:
    """How much of the base the vector moves: the share of weights it changes and ‖v‖ / ‖θ‖ over them."""
    import torch

    from .io.checkpoint import open_checkpoint
    from .vector import Vector

    vec, checkpoint = Vector.open(vector_dir), open_checkpoint(str(base))
    changed = total = 0
    v_sq = w_sq = 0.0
    try:
        for name, entry in vec.entries.items():
            if name not in checkpoint.tensors:
                continue
            weight = checkpoint.read_rows(name).float()
            total += weight.numel()
            if entry.encoding == "zero":
                w_sq += float(weight.square().sum())
                continue
            delta = vec.decode(name).float().reshape(weight.shape)
            changed += int(torch.count_nonzero(delta))
            v_sq += float(delta.square().sum())
            w_sq += float(weight.square().sum())
    finally:
        vec.close()
        checkpoint.close()
    return {"parameters": total, "changed": changed, "relative_norm": (v_sq / w_sq) ** 0.5 if w_sq else 0.0}


def _measure(url: str, label: str, tasksets: list, max_tokens: int) -> list:
    from .evaluate import EvalOptions, OpenAIEngine, Setting, score

    engine = OpenAIEngine(url, SERVED)
    options = EvalOptions(chat=True, cot=True, max_tokens=max_tokens)
    return [score(engine, ts, Setting(name=label), options) for ts in tasksets]


def _verdict(plain, enhanced) -> str:
    """What the two intervals allow one to say, and no more."""
    a, b = plain.result, enhanced.result
    if b.low > a.high:
        return "higher with the vector (the intervals do not overlap)"
    if a.low > b.high:
        return "lower with the vector (the intervals do not overlap)"
    return f"no measurable difference at n = {a.n} (the intervals overlap)"


def run_demo(
    workdir: Path, *, base: Path | None = None, schedule: str = "standard", echo: Callable[[str], None] = print, timeout: float = 900.0,
) -> dict:
    """Run the demo in `workdir` (replaced if present) and return what it measured.

    Args:
        workdir: scratch directory for the vector, the Hub storage and logs.
        base: the SmolLM2-135M-Instruct checkpoint (default: built by `rvec model build`, cached).
        schedule: `standard`, or `smoke` (one training step of each kind, a few questions).
        echo: where the readable lines go.
        timeout: seconds each server may take to start.

    Returns:
        A dict with the vector, its sizes, the pushed commit, both models' answers and accuracies.
    """
    from .bbh import demo_tasks
    from .compress import compress
    from .demo_donors import RECIPES, build_donors
    from .extract import extract
    from .hub.pull import pull
    from .hub.push import push
    from .models.builder import build_model, cache_root
    from .tasks import load_tasks
    from .vector import Vector
    from rvec_serving.swap import swap
    from rvec_serving.wire import ADMIN_TOKEN_ENV, VectorSpec

    if schedule not in SCHEDULES:
        raise RvecError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    plan, recipe = SCHEDULES[schedule], RECIPES[SCHEDULES[schedule].recipe]
    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    step = lambda text: echo(f"[{time.monotonic() - started:5.1f}s] {text}")  # noqa: E731

    base = Path(base) if base is not None else build_model(MODEL).path
    step(f"target: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings) at {base}")
    held_out = load_tasks(ARITH)
    step("training the donor pair from it (cached after the first run): " + recipe.describe())
    donors = build_donors(base, recipe, cache_root() / "demo", exclude={t.question for t in held_out.tasks},
                          log=lambda line: echo(f"         {line.strip()}"))
    record = donors.record
    step(("found the donor pair in the cache" if donors.cached else "trained the donor pair")
         + f" ({record['seconds']:.0f} s of training; SFT loss {record['sft']['losses'][0]:.2f} → {record['sft']['losses'][-1]:.2f},"
         + f" GRPO mean reward per step {', '.join(f'{r:.2f}' for r in record['grpo']['rewards'])})")
    vec = extract(donors.sft, donors.grpo, workdir / "vector", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                  description="Reasoning vector GRPO − SFT from SmolLM2-135M-Instruct: " + recipe.describe() + ".", quiet=True)
    dense = sum(f.size for f in vec.manifest.files)
    share = vector_share(vec.path, base)
    step(f"extracted the vector grpo − sft: {vec.changed_tensors} tensors changed, {vec.zero_tensors} unchanged, {dense / 1e6:.1f} MB; "
         f"it moves {share['changed'] / share['parameters']:.1%} of the target's {share['parameters'] / 1e6:.0f} M weights, "
         f"by {share['relative_norm']:.2e} of their norm")
    small = compress(Vector.open(vec.path), workdir / "vector-lossless", method="auto", device="cpu", quiet=True)
    step(f"compressed it losslessly: {small.payload_bytes / 1e6:.1f} MB ({small.payload_bytes / small.dense_bytes:.0%} of dense), bit-exact")

    token, hub_root, hub_port = secrets.token_hex(16), workdir / "hub", free_port()
    endpoint = f"http://127.0.0.1:{hub_port}"
    hub_cmd = [sys.executable, "-m", "rvec_hub.cli", "hub", "serve", "--root", str(hub_root), "--port", str(hub_port)]
    with background(hub_cmd, workdir / "hub.log", {"RVEC_HUB_TOKEN": token, "RVEC_HUB_USER": "demo"}) as hub:
        wait_http(f"{endpoint}/api/models", hub, 60, "the Hub server", workdir / "hub.log")
        step(f"started the local Hub at {endpoint}")
        pushed = push(small.path, REPO_ID, "1.0.0", endpoint=endpoint, token=token, quiet=True)
        step(f"pushed {REPO_ID} version 1.0.0 (commit {pushed.commit[:12]})")
        pulled = pull(f"{REPO_ID}@1.0.0", output=workdir / "pulled", endpoint=endpoint, token=token)
        step(f"pulled {REPO_ID}@1.0.0 → {pulled.path}: commit {pulled.commit[:12]}, every file verified")

    tasksets = [held_out.limit(plan.arith), demo_tasks(n=plan.bbh)]
    step(f"evaluation sets: {plan.arith} held-out arithmetic problems ({ARITH}) and {plan.bbh} BIG-Bench Hard questions "
         f"({tasksets[1].name}), asked step by step")
    answers: dict[str, list[str]] = {}
    scores: dict[str, list] = {}
    swapped: dict = {}
    # One server: it starts on the plain target (α = 0, the base's own weights: + 0·v adds nothing in
    # float32), then a live swap reloads base + 1·vector in place, from the same base files.
    port, log, admin = free_port(), workdir / "serve.log", secrets.token_hex(24)
    url, t0 = f"http://127.0.0.1:{port}/v1", time.monotonic()
    with background(_serve(base, f"{pulled.path}:0", port), log, {ADMIN_TOKEN_ENV: admin}) as server:
        wait_http(f"{url}/models", server, timeout, "rvec serve", log)
        step(f"rvec serve: target + 0·vector (the plain target) on {url} (up in {time.monotonic() - t0:.0f} s)")
        for label, alpha in (("plain", 0.0), ("enhanced", 1.0)):
            if alpha:
                swapped = swap(url, [VectorSpec(str(pulled.path), alpha)], admin)
                step(f"rvec swap: the same server now serves target + {alpha:g}·vector "
                     f"(weights reloaded in {swapped['seconds']['reload']:.1f} s, the vector verified first)")
            answers[label] = [_ask(url, q) for q in QUESTIONS]
            scores[label] = _measure(url, label, tasksets, plan.max_tokens)
            step(f"{label}: asked {len(QUESTIONS)} questions and measured {sum(len(t.tasks) for t in tasksets)} more")
    step("stopped the Hub and the server")

    echo("\nThe vector: GRPO donor − SFT donor, both trained here from SmolLM2-135M-Instruct; "
         f"{dense / 1e6:.0f} MB dense, {small.payload_bytes / 1e6:.0f} MB compressed losslessly.")
    for i, question in enumerate(QUESTIONS):
        echo(f"\nQ: {question}")
        for label in ("plain", "enhanced"):
            echo(f"  {label:>8}: {' '.join(answers[label][i].split())[:160]}")
    echo("\nAccuracy, greedy, step by step (95 % Wilson intervals):")
    for plain, enhanced in zip(scores["plain"], scores["enhanced"]):
        echo(f"  {plain.tasks}: plain {plain.result}, enhanced {enhanced.result}: {_verdict(plain, enhanced)}")

    result = {
        "schedule": schedule, "base": str(base), "donors": {"recipe": record["recipe"], "training_seconds": record["seconds"],
                                                           "cached": donors.cached, "sft_losses": record["sft"]["losses"],
                                                           "grpo_rewards": record["grpo"]["rewards"]},
        "vector": share, "dense_bytes": dense, "lossless_bytes": small.payload_bytes, "commit": pushed.commit,
        "answers": {label: dict(zip(QUESTIONS, texts)) for label, texts in answers.items()},
        "accuracy": {label: [s.to_dict() for s in ss] for label, ss in scores.items()}, "swap": swapped,
        "seconds": time.monotonic() - started,
    }
    (workdir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
