"""The paper's three experiments at small scale, on CPU, from nothing.

Pretrain a small Qwen2 model on synthetic text; SFT it on chain-of-thought arithmetic (the SFT donor);
continue with GRPO (TRL, reward = correct final answer) for the GRPO donor; fine-tune the pretrained model
differently for the "instruct" target; extract v = GRPO − SFT with rvec; compress it to ranks 8/32/128; then
measure with `rvec eval` on held-out problems: target − v, target + α·v (α = 0.5, 1, 1.5), the compressed
vectors, on in-domain arithmetic and on a non-math set.

Run (about 25 minutes on 2 cores; `--preset quick` checks the wiring in a few minutes):

    nice -n 15 .venv-replication/bin/python examples/replication/run.py

`.venv-replication` is rvec's environment plus TRL; see README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from data import EVAL_SEED, cot_examples, held_out_questions, pretraining_corpus, rl_prompts, train_tokenizer  # noqa: E402
from grpo import GrpoSchedule, grpo  # noqa: E402
from train import Schedule, new_model, pack, pairs, train  # noqa: E402

FULL = {
    "hidden": 192, "layers": 4, "block": 64,
    "corpus": 40000, "pretrain": Schedule(steps=1000, batch=32, lr=2e-3, seed=1),
    "sft_n": 12000, "sft": Schedule(steps=1200, batch=32, lr=1e-3, seed=2),
    "instruct_n": 12000, "instruct": Schedule(steps=1200, batch=32, lr=1e-3, seed=3),
    "grpo": GrpoSchedule(steps=200, batch=64, group=8, lr=1e-4, seed=4), "rl_n": 4000,
    "eval_n": 200, "alphas": [0.5, 1.0, 1.5], "ranks": [8, 32, 128],
}
QUICK = {
    **FULL, "corpus": 2000, "pretrain": Schedule(steps=30, batch=32, lr=3e-3, seed=1),
    "sft_n": 500, "sft": Schedule(steps=20, batch=32, lr=1e-3, seed=2),
    "instruct_n": 300, "instruct": Schedule(steps=20, batch=16, lr=1e-3, seed=3),
    "grpo": GrpoSchedule(steps=3, batch=16, group=4, seed=4), "rl_n": 100, "eval_n": 8,
}
# The "few million parameters" with longer training: for a GPU, far past 30 minutes on 2 cores.
LARGE = {
    **FULL, "hidden": 256, "layers": 4, "corpus": 60000, "pretrain": Schedule(steps=2000, batch=64, lr=2e-3, seed=1),
    "sft_n": 12000, "sft": Schedule(steps=1000, batch=64, lr=5e-4, seed=2),
    "instruct_n": 6000, "instruct": Schedule(steps=400, batch=64, lr=5e-4, seed=3),
    "grpo": GrpoSchedule(steps=200, batch=128, group=8, lr=3e-5, seed=4), "rl_n": 8000,
}
PRESETS = {"cpu": FULL, "quick": QUICK, "large": LARGE}


def log(line: str) -> None:
    print(line, flush=True)


def stage(name: str, path: Path, timings: dict, fn) -> dict:
    """Run one stage unless its output exists; record its wall time."""
    if path.exists():
        log(f"[{name}] kept {path}")
        return {}
    log(f"[{name}] ...")
    started = time.monotonic()
    info = fn() or {}
    timings[name] = round(time.monotonic() - started, 1)
    log(f"[{name}] done in {timings[name]:.0f}s")
    return info


def measure(base: Path, vectors: list[str], alphas: list[float], n: int, device: str) -> dict:
    """`rvec eval --engine transformers --cot --json` on held-out arith and tracking, asked step by step."""
    specs = [f"arith@{EVAL_SEED}", f"tracking@{EVAL_SEED}"]
    args = ["eval", "--base", str(base), *[a for s in specs for a in ("--tasks", s)], "--limit", str(n), "--cot",
            "--max-tokens", "64", "--engine", "transformers", "--device", device,
            *[a for v in vectors for a in ("--vector", v)], *[a for x in alphas for a in ("--alpha", str(x))], "--json"]
    log("  $ rvec " + " ".join(args))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-m", "rvec_hub.cli", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"rvec eval failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    report = json.loads(done.stdout)
    for r in report["results"]:
        log(f"  {r['tasks']}: {r['model']}: {100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(".bench-work/replication"), help="Where models and vectors go.")
    parser.add_argument("--preset", choices=sorted([*PRESETS, "smollm2", "smollm2-cpu", "smollm2-quick"]), default="cpu",
                        help="cpu: the 2-core, 30-minute run; quick: a few steps of everything; large: ~3M parameters, for a GPU; "
                             "smollm2, smollm2-cpu, smollm2-quick: the real SmolLM2-135M-Instruct (smollm2.py).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the target of this example) or cuda.")
    parser.add_argument("--fresh", action="store_true", help="Remove the work directory first.")
    parser.add_argument("--results", type=Path, help="Where the JSON results go (default: results/PRESET-on-DEVICE.json here).")
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="vllm",
                        help="smollm2 presets: how rvec eval answers (vllm: one `rvec serve` per setting, all task sets; "
                             "transformers: in this process).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.preset.startswith("smollm2"):
        from smollm2 import run as run_smollm2

        work = args.work if args.work != parser.get_default("work") else Path(f".bench-work/replication-{args.preset}")
        run_smollm2(args.preset, work.resolve(), args.results or HERE / "results" / f"{args.preset}-on-{args.device}.json", args.device, args.fresh, args.engine)
        return
    cfg = PRESETS[args.preset]
    results_path = args.results or HERE / "results" / f"{args.preset}-preset-on-{args.device}.json"
    work = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    info: dict[str, dict] = {}
    started = time.monotonic()
    exclude = held_out_questions()
    corpus = pretraining_corpus(cfg["corpus"], seed=0)
    sft_data = cot_examples("arith", cfg["sft_n"], seed=11, exclude=exclude)
    # The target learns both domains from other seeds, in a different run than the SFT donor.
    instruct_data = (cot_examples("arith", cfg["instruct_n"] // 2, seed=12, exclude=exclude)
                     + cot_examples("tracking", cfg["instruct_n"] // 2, seed=13, exclude=exclude))

    def tokenizer_and_init() -> None:
        tok_dir = work / "tokenizer"
        train_tokenizer(tok_dir, corpus[:5000] + [p + c for p, c in sft_data[:2000] + instruct_data[:2000]], vocab_size=1024)
        new_model(tok_dir, work / "init", hidden=cfg["hidden"], layers=cfg["layers"], seed=0)

    stage("init", work / "init", timings, tokenizer_and_init)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work / "init"))
    info["pretrain"] = stage("pretrain", work / "pretrained", timings,
                             lambda: train(work / "init", work / "pretrained", pack(tok, corpus, cfg["block"]), cfg["pretrain"], device=args.device, log=log))
    info["sft"] = stage("sft", work / "sft", timings,
                        lambda: train(work / "pretrained", work / "sft", pairs(tok, sft_data), cfg["sft"], device=args.device, log=log))
    info["instruct"] = stage("instruct", work / "instruct", timings,
                             lambda: train(work / "pretrained", work / "instruct", pairs(tok, instruct_data), cfg["instruct"], device=args.device, log=log))
    prompts = rl_prompts(cfg["rl_n"], seed=14, exclude=exclude)
    info["grpo"] = stage("grpo", work / "grpo", timings,
                         lambda: grpo(work / "sft", work / "grpo", prompts, cfg["grpo"], work=work, device=args.device, log=log))

    vec = work / "vector"

    def extract_vector() -> None:
        from rvec_hub import extract

        extract(work / "sft", work / "grpo", vec, dtype=torch.float32, base_model="instruct", quiet=True)

    stage("extract", vec, timings, extract_vector)
    from rvec_hub import Vector

    changed = sum(t.encoding != "zero" for t in Vector.open(vec).manifest.tensors)
    ranks = cfg["ranks"] if changed else []  # a GRPO run that never saw a reward changes nothing
    for r in ranks:
        def compress_rank(r: int = r) -> None:
            from rvec_hub.compress import compress

            compress(Vector.open(vec), work / f"vector-r{r}", method="lowrank", rank=r, factor_dtype=torch.float32, device="cpu", quiet=True)

        stage(f"rank{r}", work / f"vector-r{r}", timings, compress_rank)

    def evaluations() -> None:
        n = cfg["eval_n"]
        results = {
            "donors": {m: measure(work / m, [], [], n, args.device) for m in ("pretrained", "sft", "grpo")},
            "target": measure(work / "instruct", [f"{vec}:-1", str(vec)], cfg["alphas"], n, args.device),
            "ranks": measure(work / "instruct", [str(work / f"vector-r{r}") for r in ranks], cfg["alphas"], n, args.device) if ranks else {"results": []},
        }
        (work / "eval.json").write_text(json.dumps(results, indent=2))

    stage("eval", work / "eval.json", timings, evaluations)
    results = json.loads((work / "eval.json").read_text())
    total = round(time.monotonic() - started, 1)
    out = {"preset": args.preset, "device": args.device, "threads": args.threads, "seconds_total": total, "seconds": timings,
           "training": info, "eval": results, "params": sum(p.numel() for p in _params(work / "instruct"))}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    log(markdown(results))
    log(f"total {total:.0f}s; results in {results_path}")


def _params(model_dir: Path) -> list[torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return [f.get_tensor(k) for k in f.keys()]


def markdown(results: dict) -> str:
    """The results as Markdown tables: accuracy % [95 % CI] per model and task set."""
    rows = []
    for group in ("donors", "target", "ranks"):
        reports = results[group].items() if group == "donors" else [(None, results[group])]
        for model, report in reports:
            by_model: dict[str, dict[str, str]] = {}
            for r in report["results"]:
                name = r["model"] if model is None else model
                cell = f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
                by_model.setdefault(name, {})[r["tasks"]] = cell
            for name, cells in by_model.items():
                rows.append(f"| {group} | {name} | {cells.get('arith', '')} | {cells.get('tracking', '')} |")
    head = "| group | model | arith (in-domain) % [95% CI] | tracking (cross-domain) % [95% CI] |\n|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
