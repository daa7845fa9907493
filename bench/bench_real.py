"""Benchmark extract, apply and compress on a real pair, next to mergekit on the same inputs.

The pair is the one `rvec demo` trains from SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings):
an SFT donor and a GRPO donor continued from it, both full fine-tunes saved in float32, and the target,
SmolLM2-135M-Instruct itself in bf16 (built by `rvec model build`). As CLI subprocesses with a warm page
cache it measures wall time and peak RSS of:

- `rvec extract` of GRPO − SFT (bf16 storage, the default, and fp32);
- `rvec apply` of each vector to the target, next to `mergekit-yaml` task_arithmetic (base SFT, GRPO and
  the target at weight 1: the same target + (GRPO − SFT)), every output checked against the exact
  float32 result rounded once to bf16;
- `rvec compress` lossless and at rank 64, next to `mergekit-extract-lora --max-rank 64`, with the
  relative error of every matrix both factor against the exact float32 delta.

    bash bench/setup_mergekit.sh
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_real.py
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_real.py --recipe smoke --repeat 1   # quick check

Figures go to bench/results/real.json (real-RECIPE.json for another recipe) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import Measurement, log_line, measure, warm_cache  # noqa: E402
from _reference import compare_to_reference  # noqa: E402
from bench_apply import MERGEKIT_YAML, _dir_bytes, _environment, _summarise  # noqa: E402
from bench_compress import lossless_check, matrix_errors, moved_fraction  # noqa: E402

MODEL = "smollm2-135m-instruct"


def real_pair(recipe: str) -> dict[str, Path]:
    """The target and the demo's donors for `recipe`, built (or found in rvec's cache) in process."""
    from rvec_hub.demo import ARITH
    from rvec_hub.demo_donors import RECIPES, build_donors
    from rvec_hub.models.builder import build_model, cache_root
    from rvec_hub.tasks import load_tasks

    target = build_model(MODEL).path
    held_out = {t.question for t in load_tasks(ARITH).tasks}
    donors = build_donors(target, RECIPES[recipe], cache_root() / "demo", exclude=held_out, log=log_line)
    return {"sft": donors.sft, "grpo": donors.grpo, "instruct": target}


def run(pair: dict[str, Path], work: Path, repeat: int, mergekit: Path) -> dict:
    """Measure every command on the pair and check its outputs."""
    work.mkdir(parents=True, exist_ok=True)
    rvec = str(ROOT / ".venv" / "bin" / "rvec")
    logs = work / "logs"
    runs: dict[str, list[Measurement]] = {}

    def timed(name: str, argv: list[str], out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        warm_cache(*pair.values(), *(p for p in work.glob("vec-*") if p != out))
        m = measure(name, argv, log=logs / f"{name.replace(' ', '_').replace('/', '_')}-{len(runs.get(name, []))}.log")
        runs.setdefault(name, []).append(m)
        log_line(f"  {name}: {m.wall_s:.2f} s, peak RSS {m.peak_rss_gb:.2f} GB")

    vec16, vec32, lossless, r64 = work / "vec-bf16", work / "vec-fp32", work / "vec-lossless", work / "vec-r64"
    out16, out32, out_mk, lora_mk = work / "out-rvec", work / "out-rvec-fp32vec", work / "out-mergekit", work / "mergekit-r64"
    config = work / "task_arithmetic.yml"
    config.write_text(MERGEKIT_YAML.format(**{k: str(v) for k, v in pair.items()}))
    extract = [rvec, "extract", "--reference", str(pair["sft"]), "--tuned", str(pair["grpo"]), "--quiet"]
    for _ in range(repeat):
        timed("rvec extract", [*extract, "-o", str(vec16)], vec16)
    timed("rvec extract --dtype fp32", [*extract, "--dtype", "fp32", "-o", str(vec32)], vec32)
    for _ in range(repeat):  # interleaved, so load from other work on the machine hits both alike
        timed("rvec apply", [rvec, "apply", str(vec16), "--base", str(pair["instruct"]), "-o", str(out16), "--quiet"], out16)
        timed("mergekit-yaml task_arithmetic", [str(mergekit / "mergekit-yaml"), str(config), str(out_mk), "--lazy-unpickle", "--out-shard-size", "5B"], out_mk)
    timed("rvec apply (fp32 vector)", [rvec, "apply", str(vec32), "--base", str(pair["instruct"]), "-o", str(out32), "--quiet"], out32)
    timed("rvec compress (lossless)", [rvec, "compress", str(vec16), "-o", str(lossless), "--quiet"], lossless)
    for _ in range(repeat):
        timed("rvec compress --rank 64", [rvec, "compress", str(vec16), "-o", str(r64), "--method", "lowrank", "--rank", "64", "--device", "cpu", "--quiet"], r64)
        timed("mergekit-extract-lora --max-rank 64", [str(mergekit / "mergekit-extract-lora"), "--model", str(pair["grpo"]), "--base-model", str(pair["sft"]),
                                                      "--out-path", str(lora_mk), "--max-rank", "64", "--quiet"], lora_mk)

    log_line("comparing merged models with the float32 reference")
    agreement = compare_to_reference(pair["instruct"], pair["sft"], [(pair["grpo"], 1.0)],
                                     {"rvec (bf16 vector)": out16, "rvec (fp32 vector)": out32, "mergekit": out_mk})
    log_line("comparing rank-64 factors with the exact delta")
    errors = matrix_errors(pair, r64, lora_mk)
    return {
        "pair": {k: str(v) for k, v in pair.items()},
        "moved": moved_fraction(pair["sft"], pair["grpo"]),
        "checkpoint_bytes": {k: sum(p.stat().st_size for p in v.glob("*.safetensors")) for k, v in pair.items()},
        "vector_bytes": {"bf16": _dir_bytes(vec16), "fp32": _dir_bytes(vec32), "lossless": _dir_bytes(lossless), "rank64": _dir_bytes(r64),
                         "mergekit_lora_rank64": _dir_bytes(lora_mk)},
        "commands": {name: _summarise(ms) for name, ms in runs.items()},
        "merge_accuracy": {k: v.to_dict() for k, v in agreement.items()},
        "lossless": lossless_check(vec16, lossless),
        "rank64_errors": {k: v for k, v in errors.items() if k != "per_matrix"},
    }


def markdown(r: dict) -> str:
    """The tables the READMEs take."""
    lines = ["| command | wall (s) | CPU user+sys (s) | peak RSS (GB) |", "| --- | ---: | ---: | ---: |"]
    for name, c in r["commands"].items():
        best = min(c["runs"], key=lambda m: m["wall_s"])
        lines.append(f"| `{name}` | {c['wall_s']:.2f} | {best['user_s'] + best['sys_s']:.1f} | {c['peak_rss_gb']:.2f} |")
    lines += ["", "| merged output | weights differing from exact | > 1 bf16 ULP | largest error (ULPs) |", "| --- | ---: | ---: | ---: |"]
    for name, a in r["merge_accuracy"].items():
        lines.append(f"| {name} | {a['share_differing']:.3%} | {a['share_beyond_one_ulp']:.3%} | {a['max_ulps']:.3g} |")
    e, b = r["rank64_errors"], r["vector_bytes"]
    mean = e.get("mean_rel_error", {})
    lines += ["", f"Vector: {b['bf16'] / 1e6:.1f} MB dense bf16, {b['lossless'] / 1e6:.1f} MB lossless "
                  f"({'bit-exact' if r['lossless']['bit_exact'] else 'NOT bit-exact'}), {b['rank64'] / 1e6:.1f} MB at rank 64 "
                  f"(mergekit's LoRA: {b['mergekit_lora_rank64'] / 1e6:.1f} MB). GRPO moved {r['moved']['fraction']:.1%} of "
                  f"{r['moved']['weights']:,} weights. Rank-64 mean relative error over {e['matrices']} matrices: "
                  + (f"rvec {mean['rvec']:.3f}, mergekit {mean['mergekit']:.3f}." if mean else "none in common.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="standard", help="the demo's donor recipe: standard or smoke")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the compared commands (best wall time is reported)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "real")
    parser.add_argument("--mergekit-venv", type=Path, default=ROOT / ".venv-mergekit")
    parser.add_argument("--out", type=Path, help="default: bench/results/real.json (real-RECIPE.json for other recipes)")
    parser.add_argument("--table", action="store_true", help="print the tables of the --out file and measure nothing")
    args = parser.parse_args(argv)
    out = args.out or BENCH / "results" / ("real.json" if args.recipe == "standard" else f"real-{args.recipe}.json")
    if args.table:
        print(markdown(json.loads(out.read_text())))
        return 0
    mergekit = args.mergekit_venv / "bin"
    if not (mergekit / "mergekit-yaml").exists():
        parser.error(f"{mergekit / 'mergekit-yaml'} is missing; run `bash bench/setup_mergekit.sh` first")
    start = time.perf_counter()
    pair = real_pair(args.recipe)
    environment = {**_environment(mergekit / "mergekit-yaml"), "loadavg_at_start": os.getloadavg(), "recipe": args.recipe}
    results = run(pair, args.work, args.repeat, mergekit)
    results["environment"] = {**environment, "loadavg_at_end": os.getloadavg(), "seconds": round(time.perf_counter() - start, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for path in [*args.work.glob("vec-*"), *args.work.glob("out-*"), *args.work.glob("mergekit-*")]:
        shutil.rmtree(path)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
