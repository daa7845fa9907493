"""The paper's experiments on a real model: SmolLM2-135M-Instruct (`run.py --preset smollm2` / `smollm2-cpu`).

1. **base**: SmolLM2-135M-Instruct, rebuilt by `rvec model build` from the GGUF on PyPI (bf16, tied embeddings);
2. **SFT donor**: every weight fine-tuned on worked arithmetic (chain of thought, chat template);
3. **GRPO donor**: continued from the SFT donor with TRL's `GRPOTrainer`, reward = a correct final answer;
4. **target**: SmolLM2-135M-Instruct itself, the model the donors started from. It is the model a user holds;
   the question is whether the RL part of the training (GRPO − SFT), without the SFT step, moves it;
5. **vector** v = GRPO − SFT (float32), compressed to ranks 8, 32, 128; a random direction with v's per-tensor
   norms (`control.py`) as the control;
6. **measure** with `rvec eval --engine transformers --chat --cot` on 200 held-out questions per set: the
   donors; target − v; target + α·v (α = 0.5, 1, 1.5); the ranks at α = 1; the random control at ±1; on
   in-domain arithmetic (`arith@999`) and cross-domain BBH tasks from BIG-bench. Each measurement is written
   to the results file as soon as it is done, so a run cut short keeps what it measured.

Donor training is rvec's own (`rvec_hub.demo_donors`, the code `rvec demo` trains its pair with).
"""

from __future__ import annotations

import json
import shutil
import time
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


def rvec_eval(base: Path, task: str, vectors: list[str], n: int, device: str, *, with_base: bool, max_tokens: dict[str, int]) -> dict:
    """What `rvec eval --engine transformers --chat --cot --json` reports, for one task set and these settings."""
    from rvec_hub.evaluate import EvalOptions, evaluate, settings_for
    from rvec_hub.tasks import load_tasks

    budget = max_tokens["bbh" if task.startswith("bbh:") else "arith"]
    options = EvalOptions(chat=True, cot=True, max_tokens=budget)
    log(f"  eval {task} (n={n}) on {base.name}: {'base, ' if with_base else ''}{', '.join(Path(v).name for v in vectors)}")
    report = evaluate(str(base), [load_tasks(task).limit(n)], settings_for(vectors, include_base=with_base), options,
                      engine="transformers", device=device).to_dict()
    for r in report["results"]:
        log(f"  {r['tasks']}: {r['model']}: {100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] (n={r['n']})")
    return report


def run(preset: str, work: Path, results_path: Path, device: str, fresh: bool) -> None:
    """Train, extract, compress, build the control, then measure; the results file grows as it goes."""
    import torch

    from rvec_hub import Vector, extract
    from rvec_hub.compress import compress
    from rvec_hub.demo_donors import build_donors
    from rvec_hub.models import build_model
    from rvec_hub.models.builder import cache_root

    from control import random_twin

    cfg = PRESETS[preset]
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out: dict = {"preset": preset, "device": device, "threads": torch.get_num_threads(), "target": MODEL,
                 "recipe": cfg["recipe"].__dict__, "seconds": {}, "measurements": []}
    if results_path.is_file() and not fresh:
        out = {**out, **{k: v for k, v in json.loads(results_path.read_text()).items() if k in ("seconds", "measurements", "training")}}

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

    def measured(label: str, model: Path, vectors: list[str], task: str, with_base: bool) -> None:
        if any((m["task"], m["label"]) == (task, label) for m in out["measurements"]):
            return
        t0 = time.monotonic()
        report = rvec_eval(model, task, vectors, n, device, with_base=with_base, max_tokens=cfg.get("max_tokens", MAX_TOKENS))
        out["measurements"].append({"task": task, "label": label, "model": str(model), "seconds": round(time.monotonic() - t0, 1),
                                    "results": report["results"]})
        save()

    # The target alone needs no donors: measured first, so that it runs while another process trains them.
    measured("target", base, [], ARITH, True)
    donors = timed("donors", lambda: build_donors(base, cfg["recipe"], cache_root() / "demo", exclude=held_out(), device=device, log=log))
    out["training"] = donors.record
    vec, control = work / "vector", work / "vector-random"
    if not vec.exists():
        timed("extract", lambda: extract(donors.sft, donors.grpo, vec, dtype=torch.float32, base_model=MODEL, quiet=True))
    groups = [
        ("target ± v", base, [f"{vec}:1", f"{vec}:-1"]),
        ("target + α·v", base, [f"{vec}:{a}" for a in cfg["alphas"] if a != 1.0]),
        ("random control", base, [f"{control}:1", f"{control}:-1"]),
        ("ranks", base, [f"{work / f'vector-r{r}'}:1" for r in cfg["ranks"]]),
        ("donor sft", donors.sft, []),
        ("donor grpo", donors.grpo, []),
    ]
    # Task set by task set, the main comparison first, so that a run cut short has the most telling rows.
    for task in [ARITH, *CROSS]:
        measured("target", base, [], task, True)
        for label, model, vectors in groups:
            if label == "ranks":
                for r in cfg["ranks"]:
                    if not (work / f"vector-r{r}").exists():
                        timed(f"rank{r}", lambda r=r: compress(Vector.open(vec), work / f"vector-r{r}", method="lowrank", rank=r,
                                                               factor_dtype=torch.float32, device="cpu", quiet=True))
            if label == "random control" and not control.exists():
                def make_control() -> None:
                    twin = work / "sft-plus-random"
                    shutil.rmtree(twin, ignore_errors=True)
                    random_twin(donors.sft, vec, twin)
                    extract(donors.sft, twin, control, dtype=torch.float32, name="random-direction", quiet=True)
                    shutil.rmtree(twin)

                timed("control", make_control)
            measured(label, model, vectors, task, label.startswith("donor"))
    log(markdown(out))
    log(f"total {time.monotonic() - started:.0f} s; results in {results_path}")


def markdown(out: dict) -> str:
    """Accuracy % [Wilson 95 % CI] per setting (rows) and task set (columns); "not run" where a run stopped."""
    cfg = PRESETS[out["preset"]]
    tasks = [ARITH, *CROSS]
    rows = ["target", "target - 1·vector", *[f"target + {a:g}·vector" for a in cfg["alphas"]],
            *[f"target + 1·vector-r{r}" for r in cfg["ranks"]], "target + 1·vector-random", "target - 1·vector-random",
            "donor sft", "donor grpo"]
    cells: dict[str, dict[str, str]] = {}
    for m in out["measurements"]:
        for r in m["results"]:
            name = m["label"] if m["label"].startswith("donor") else r["model"].replace("base", "target")
            cells.setdefault(name, {})[m["task"]] = f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
    head = "| setting | " + " | ".join(f"{t} % [95% CI]" for t in tasks) + " |\n|---|" + "---|" * len(tasks)
    lines = [f"| {name.replace(' - ', ' − ')} | " + " | ".join(cells.get(name, {}).get(t, "not run") for t in tasks) + " |" for name in rows]
    return head + "\n" + "\n".join(lines)


if __name__ == "__main__":  # the table of a results file: python smollm2.py results/smollm2-cpu-on-cpu.json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
