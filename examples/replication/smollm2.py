"""The paper's experiments on a real model: SmolLM2-135M-Instruct (`run.py --preset smollm2` / `smollm2-cpu`).

1. **base**: SmolLM2-135M-Instruct, rebuilt by `rvec model build` from the GGUF on PyPI (bf16, tied embeddings);
2. **SFT donor**: every weight fine-tuned on worked arithmetic (chain of thought, chat template);
3. **GRPO donor**: continued from the SFT donor with TRL's `GRPOTrainer`, reward = a correct final answer;
4. **target**: SmolLM2-135M-Instruct itself, the model the donors started from. It is the model a user holds;
   the question is whether the RL part of the training (GRPO − SFT), without the SFT step, moves it;
5. **vector** v = GRPO − SFT (float32), compressed to ranks 8, 32, 128; a random direction with v's per-tensor
   norms (`control.py`) as the control;
6. **measure** with `rvec eval --chat --cot` (greedy) on 200 held-out questions per set: target; target ± v;
   the random control at ±1; target + α·v (α = 0.5, 1.5); the ranks at α = 1; the donors; on in-domain
   arithmetic (`arith@999`) and cross-domain BBH tasks from BIG-bench. With the `vllm` engine (the default)
   every setting is one `rvec serve` (vectors merged at load time, float32) that answers all task sets; with
   `transformers` the model runs in this process. Each measurement is written to the results file as soon as
   it is done, so a run cut short keeps what it measured, and a second run skips what is there.

Donor training is rvec's own (`rvec_hub.demo_donors`, the code `rvec demo` trains its pair with).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
ARITH = "arith@999"
CROSS = ["bbh:tracking_shuffled_objects_three_objects", "bbh:navigate"]

from rvec_hub.demo_donors import RECIPES, Recipe  # noqa: E402

PRESETS = {
    # For a GPU: a real SFT run and a GRPO run of the length RL papers use at this scale.
    "smollm2": {"recipe": Recipe(sft_steps=400, sft_batch=32, sft_lr=1e-5, grpo_steps=200, grpo_batch=64, grpo_group=8,
                                 grpo_lr=2e-6, max_tokens=128),
                "eval_n": 200, "alphas": [0.5, 1.0, 1.5], "ranks": [8, 32, 128]},
    # Two shared CPU cores: the donor pair of `rvec demo` (the same cache entry), the same measurements.
    "smollm2-cpu": {"recipe": RECIPES["standard"],
                    "eval_n": 200, "alphas": [0.5, 1.0, 1.5], "ranks": [8, 32, 128]},
    # The wiring only: the test donors (one step each) and four questions per set.
    "smollm2-quick": {"recipe": RECIPES["smoke"], "eval_n": 4, "alphas": [0.5, 1.0, 1.5], "ranks": [8],
                      "max_tokens": {"arith": 16, "bbh": 16}},
}
MAX_TOKENS = {"arith": 96, "bbh": 192}


def log(line: str) -> None:
    print(line, flush=True)


def held_out() -> set[str]:
    """Questions of the in-domain evaluation set, which training never sees."""
    from rvec_hub.tasks import load_tasks

    return {t.question for t in load_tasks(ARITH).tasks}


# float32: the RL part of the update is mostly below one bf16 step of the weights it is added to.
SERVE_ARGS = ["--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "32"]


class ConcurrentChat:
    """`rvec eval`'s chat questions, a whole batch in flight at once (vLLM batches them) and cut at the stop strings.

    `OpenAIEngine` sends 8 chat requests at a time; a small model on CPU answers 32 together in little more time.
    The server cuts at the same stop strings `score` cuts at afterwards, so the answers are the same.
    """

    def __init__(self, url: str) -> None:
        from rvec_hub.evaluate import OpenAIEngine

        self.inner = OpenAIEngine(url)

    def complete(self, prompts: list[str], options, stop: list[str]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        def ask(prompt: str) -> str:
            out = self.inner.client.chat.completions.create(
                model=self.inner.model, messages=[{"role": "user", "content": prompt}], max_tokens=options.max_tokens,
                temperature=0, stop=stop,
            )
            return out.choices[0].message.content or ""

        with ThreadPoolExecutor(max(1, len(prompts))) as pool:
            return list(pool.map(ask, prompts))


class Engines:
    """Answers as `model` plus some vectors, the engine started on first use and kept for every setting.

    `vllm`: with `zero_ref`, one `rvec serve --admin-token-file` serving `zero_ref` at α = 0 (the base itself,
    through the same loader and dtype as every other setting), whose vectors each setting swaps live
    (`rvec swap`: the weights are merged again from the base, nothing else restarts); without it (a donor),
    plain vLLM on the model. `transformers`: the model in this process, vectors added in float32.
    """

    def __init__(self, model: Path, engine: str, device: str, work: Path, zero_ref: str | None = None) -> None:
        self.model, self.engine, self.device, self.work, self.zero_ref = model, engine, device, work, zero_ref
        self.stack = ExitStack()
        self.url: str | None = None
        self.local = None
        self.current: tuple = ()

    def use(self, vectors: tuple) -> object:
        """An engine answering with these vectors (each `(ref, alpha)`) added to the model."""
        from rvec_hub.evaluate import Setting, TransformersEngine, served

        if self.engine == "transformers":
            self.local = self.local or TransformersEngine(str(self.model), device=self.device)
            self.local.use(Setting(tuple(vectors)))
            return self.local
        if self.zero_ref is None:
            if vectors:
                raise ValueError("vectors need a zero_ref to start from")
            self.url = self.url or self.stack.enter_context(served(str(self.model), Setting(), serve_args=SERVE_ARGS, timeout=1800))
            return ConcurrentChat(self.url)
        if self.url is None:
            self.url = self.stack.enter_context(self._swap_server())
            self.current = ((self.zero_ref, 0.0),)
        wanted = tuple(vectors) or ((self.zero_ref, 0.0),)
        if wanted != self.current:
            from rvec_serving.spec import VectorSpec
            from rvec_serving.swap import swap

            answer = swap(self.url, [VectorSpec(r, a) for r, a in wanted], self.token)
            log(f"    swapped to {', '.join(f'{Path(r).name}:{a:g}' for r, a in wanted)} in {answer['seconds']['total']:.1f} s")
            self.current = wanted
        return ConcurrentChat(self.url)

    @contextmanager
    def _swap_server(self):
        import secrets
        import sys

        from rvec_hub.procs import background, free_port, wait_http

        self.token = secrets.token_hex(24)
        token_file = self.work / "admin.token"
        token_file.unlink(missing_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(self.token + "\n")
        port = free_port()
        argv = [sys.executable, "-m", "rvec_hub.cli", "serve", "--base", str(self.model), "--vector", f"{self.zero_ref}:0",
                "--port", str(port), "--admin-token-file", str(token_file), "--", *SERVE_ARGS]
        url = f"http://127.0.0.1:{port}/v1"
        try:
            with background(argv, self.work / "serve.log") as proc:
                wait_http(url + "/models", proc, 1800, "rvec serve", self.work / "serve.log")
                yield url
        finally:
            token_file.unlink(missing_ok=True)

    def close(self) -> None:
        self.stack.close()


def run(preset: str, work: Path, results_path: Path, device: str, fresh: bool, engine: str = "vllm") -> None:
    """Train, extract, compress, build the control, then measure; the results file grows as it goes."""
    import torch

    from rvec_hub import Vector, extract
    from rvec_hub.compress import compress
    from rvec_hub.demo_donors import build_donors
    from rvec_hub.models import build_model
    from rvec_hub.models.builder import cache_root

    from control import random_twin

    import signal
    import sys

    # Stopped with SIGTERM (or SIGINT, which a background job ignores): unwind, so the servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = PRESETS[preset]
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out: dict = {"preset": preset, "device": device, "engine": engine, "threads": torch.get_num_threads(), "target": MODEL,
                 "recipe": cfg["recipe"].__dict__, "seconds": {}, "measurements": []}
    if results_path.is_file() and not fresh:
        out = {**out, **{k: v for k, v in json.loads(results_path.read_text()).items() if k in ("seconds", "measurements", "training", "load")}}
    out.setdefault("load", []).append({"start": _loadavg()})

    def save() -> None:
        out["seconds_this_run"] = round(time.monotonic() - started, 1)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(out, indent=2, default=str) + "\n")

    def timed(name: str, fn):
        t0 = time.monotonic()
        result = fn()
        out["seconds"].setdefault(name, round(time.monotonic() - t0, 1))
        log(f"[{name}] {time.monotonic() - t0:.0f} s")
        save()
        return result

    base = timed("build", lambda: build_model(MODEL, quiet=True).path)
    n = cfg["eval_n"]
    budgets = cfg.get("max_tokens", MAX_TOKENS)
    tasksets = None

    def measured(label: str, engines: Engines, vectors: tuple = (), only: str | None = None) -> None:
        """One setting on every task set it still lacks (or on `only`), each set saved as soon as it is scored."""
        from rvec_hub.evaluate import EvalOptions, Setting, score
        from rvec_hub.tasks import load_tasks

        nonlocal tasksets
        tasksets = tasksets or [load_tasks(t).limit(n) for t in [ARITH, *CROSS]]
        todo = [(t, ts) for t, ts in zip([ARITH, *CROSS], tasksets)
                if only in (None, t) and not any((m["task"], m["label"]) == (t, label) for m in out["measurements"])]
        if not todo:
            return
        log(f"  {label}: {', '.join(t for t, _ in todo)}, n={n}")
        t0 = time.monotonic()
        eng = engines.use(vectors)
        ready = round(time.monotonic() - t0, 1)
        log(f"    ready in {ready:.0f} s")
        for task, ts in todo:
            t1 = time.monotonic()
            options = EvalOptions(chat=True, cot=True, max_tokens=budgets["bbh" if task.startswith("bbh:") else "arith"])
            result = score(eng, ts, Setting(tuple(vectors)), options).to_dict()
            result["model"] = label
            out["measurements"].append({"task": task, "label": label, "model": str(engines.model), "engine": engine,
                                        "ready_seconds": ready, "seconds": round(time.monotonic() - t1, 1), "results": [result]})
            log(f"    {task}: {100 * result['accuracy']:.1f}% [{100 * result['ci95'][0]:.1f}, {100 * result['ci95'][1]:.1f}] "
                f"(n={result['n']}) in {time.monotonic() - t1:.0f} s")
            save()
            ready = 0.0

    donors = timed("donors", lambda: build_donors(base, cfg["recipe"], cache_root() / "demo", exclude=held_out(), device=device, log=log))
    out["training"] = donors.record
    vec, control = work / "vector", work / "vector-random"
    if not vec.exists():
        timed("extract", lambda: extract(donors.sft, donors.grpo, vec, dtype=torch.float32, base_model=MODEL, quiet=True))
    if not control.exists():
        def make_control() -> None:
            twin = work / "sft-plus-random"
            shutil.rmtree(twin, ignore_errors=True)
            random_twin(donors.sft, vec, twin)
            extract(donors.sft, twin, control, dtype=torch.float32, name="random-direction", quiet=True)
            shutil.rmtree(twin)

        timed("control", make_control)
    for r in cfg["ranks"]:
        if not (work / f"vector-r{r}").exists():
            timed(f"rank{r}", lambda r=r: compress(Vector.open(vec), work / f"vector-r{r}", method="lowrank", rank=r,
                                                   factor_dtype=torch.float32, device="cpu", quiet=True))
    # Task set by task set (a swap takes seconds), the main comparison first, so that a run cut short has the
    # most telling rows: in-domain for every setting, then the cross-domain sets.
    settings = [("target", ()), ("target + 1·vector", ((str(vec), 1.0),)), ("target - 1·vector", ((str(vec), -1.0),)),
                ("target + 1·vector-random", ((str(control), 1.0),)), ("target - 1·vector-random", ((str(control), -1.0),)),
                *[(f"target + {a:g}·vector", ((str(vec), a),)) for a in cfg["alphas"] if a != 1.0],
                *[(f"target + 1·vector-r{r}", ((str(work / f"vector-r{r}"), 1.0),)) for r in cfg["ranks"]]]
    target = Engines(base, engine, device, work, zero_ref=str(vec))
    try:
        for task in [ARITH, *CROSS]:
            for label, vectors in settings:
                measured(label, target, vectors, only=task)
    finally:
        target.close()
    for label, model in (("donor sft", donors.sft), ("donor grpo", donors.grpo)):
        alone = Engines(model, engine, device, work)
        try:
            measured(label, alone)
        finally:
            alone.close()
    out["load"][-1]["end"] = _loadavg()
    save()
    log(markdown(out))
    log(f"total {time.monotonic() - started:.0f} s; results in {results_path}")


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages, with the time (UTC)."""
    return time.strftime("%H:%M:%S UTC ", time.gmtime()) + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def markdown(out: dict) -> str:
    """Accuracy % [Wilson 95 % CI] (correct/n) per setting (rows) and task set (columns); "not run" where a run stopped."""
    cfg = PRESETS[out["preset"]]
    tasks = [ARITH, *CROSS]
    rows = ["target", "target - 1·vector", *[f"target + {a:g}·vector" for a in cfg["alphas"]],
            *[f"target + 1·vector-r{r}" for r in cfg["ranks"]], "target + 1·vector-random", "target - 1·vector-random",
            "donor sft", "donor grpo"]
    cells: dict[str, dict[str, str]] = {}
    for m in out["measurements"]:
        for r in m["results"]:
            name = m["label"]
            cells.setdefault(name, {})[m["task"]] = (f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
                                                    f" ({r['correct']}/{r['n']})")
    head = "| setting | " + " | ".join(f"{t} % [95% CI] (correct/n)" for t in tasks) + " |\n|---|" + "---|" * len(tasks)
    lines = [f"| {name.replace(' - ', ' − ')} | " + " | ".join(cells.get(name, {}).get(t, "not run") for t in tasks) + " |" for name in rows]
    return head + "\n" + "\n".join(lines)


if __name__ == "__main__":  # the table of a results file: python smollm2.py results/smollm2-cpu-on-cpu.json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
