"""Benchmark extract, apply and compress on a real pair, next to mergekit on the same inputs.

The pair is the one `rvec demo` trains from SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings):
an SFT donor and a GRPO donor continued from it, both full fine-tunes saved in float32, and the target,
SmolLM2-135M-Instruct itself in bf16 (built by `rvec model build`). The pair must be in rvec's cache
(`rvec demo --schedule RECIPE` trains it once); the benchmark never trains. As CLI subprocesses with a
warm page cache it measures wall time, CPU time and peak RSS of:

- `rvec extract` of GRPO − SFT: stored in the donors' dtype (float32, the default) and `--dtype bf16`;
- `rvec apply` of each vector to the target, next to `mergekit-yaml` task_arithmetic (base SFT, GRPO and
  the target at weight 1: the same target + (GRPO − SFT)), once computing in bf16 (`dtype: bfloat16`)
  and once in float32 written as bf16 (`dtype: float32`, `out_dtype: bfloat16`); every output checked
  against the exact float32 result rounded once to bf16;
- `rvec compress` of the default vector, lossless and at rank 64, next to `mergekit-extract-lora
  --max-rank 64` on the donors, with the relative error of every matrix both factor against the exact
  float32 delta, and the bytes of those factors apart from what each stores otherwise.

    bash bench/setup_mergekit.sh
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_real.py
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_real.py --recipe smoke --repeat 1   # quick check

Figures go to bench/results/real.json (real-RECIPE.json for another recipe) and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import Measurement, cpu_model, log_line, measure, warm_cache  # noqa: E402
from _reference import compare_to_reference  # noqa: E402
from bench_apply import MERGEKIT_YAML, _dir_bytes, _environment, _summarise  # noqa: E402
from bench_compress import lossless_check, matrix_errors, moved_fraction  # noqa: E402

MODEL = "smollm2-135m-instruct"
# mergekit at its most exact on float32 donors: compute in float32, write bf16 like the target.
MERGEKIT_YAML_FP32 = MERGEKIT_YAML.replace("dtype: bfloat16\n", "dtype: float32\nout_dtype: bfloat16\n")


class PairMissing(RuntimeError):
    """The demo's pair for a recipe is not in rvec's cache."""


def real_pair(recipe: str) -> dict[str, Path]:
    """The target and the demo's donors for `recipe`, found in rvec's cache (never trained here)."""
    from rvec_hub.demo import ARITH
    from rvec_hub.demo_donors import RECIPES, RECORD, _key, build_donors
    from rvec_hub.models.builder import build_model, cache_root
    from rvec_hub.tasks import load_tasks

    target = build_model(MODEL, quiet=True).path
    held_out = {t.question for t in load_tasks(ARITH).tasks}
    root = cache_root() / "demo"
    if not (root / f"donors-{_key(target, RECIPES[recipe], held_out)}" / RECORD).is_file():
        raise PairMissing(f"the {recipe} pair is not in {root}; train it once with `rvec demo --schedule {recipe}`")
    donors = build_donors(target, RECIPES[recipe], root, exclude=held_out, log=log_line)
    return {"sft": donors.sft, "grpo": donors.grpo, "instruct": target}


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return header


def factor_bytes(rvec_out: Path, mergekit_out: Path, factored: set[str]) -> dict:
    """Bytes of the low-rank factors of the matrices both factor, and of everything else each output stores."""
    from rvec_hub.vector import Vector

    vec = Vector.open(rvec_out, verify=False)
    try:
        rvec_factors = rvec_other = 0
        for name, entry in vec.entries.items():
            size = sum(math.prod(vec.shape(k)) * vec.dtype(k).itemsize for k in entry.keys.values())
            if name in factored:
                rvec_factors += size
            else:
                rvec_other += size
    finally:
        vec.close()
    mk_factors = mk_other = 0
    mk_full = []
    for name, info in _header(mergekit_out / "adapter_model.safetensors").items():
        size = info["data_offsets"][1] - info["data_offsets"][0]
        module = name.removeprefix("base_model.model.").split(".lora_")[0] + ".weight"
        if (".lora_A." in name or ".lora_B." in name) and module in factored:
            mk_factors += size
        else:
            mk_other += size
            if size > 1 << 20:
                mk_full.append(f"{name} {info['dtype']} {info['shape']}")
    return {"rvec": {"factors": rvec_factors, "other": rvec_other},
            "mergekit": {"factors": mk_factors, "other": mk_other, "large_full_rank": mk_full}}


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
        log_line(f"  {name}: {m.wall_s:.2f} s, CPU {m.user_s + m.sys_s:.1f} s, peak RSS {m.peak_rss_gb:.2f} GB")

    vec, vec16, lossless, r64 = work / "vec-default", work / "vec-bf16", work / "vec-lossless", work / "vec-r64"
    out, out16, out_mk, out_mk32 = work / "out-rvec", work / "out-rvec-bf16vec", work / "out-mergekit", work / "out-mergekit-fp32"
    lora_mk = work / "mergekit-r64"
    config, config32 = work / "task_arithmetic.yml", work / "task_arithmetic_fp32.yml"
    config.write_text(MERGEKIT_YAML.format(**{k: str(v) for k, v in pair.items()}))
    config32.write_text(MERGEKIT_YAML_FP32.format(**{k: str(v) for k, v in pair.items()}))
    mergekit_yaml = [str(mergekit / "mergekit-yaml")]
    mergekit_flags = ["--lazy-unpickle", "--out-shard-size", "5B"]
    extract = [rvec, "extract", "--reference", str(pair["sft"]), "--tuned", str(pair["grpo"]), "--quiet"]
    for _ in range(repeat):
        timed("rvec extract", [*extract, "-o", str(vec)], vec)
    timed("rvec extract --dtype bf16", [*extract, "--dtype", "bf16", "-o", str(vec16)], vec16)
    for _ in range(repeat):  # interleaved, so load from other work on the machine hits both alike
        timed("rvec apply", [rvec, "apply", str(vec), "--base", str(pair["instruct"]), "-o", str(out), "--quiet"], out)
        timed("mergekit-yaml task_arithmetic (bf16)", [*mergekit_yaml, str(config), str(out_mk), *mergekit_flags], out_mk)
        timed("mergekit-yaml task_arithmetic (fp32)", [*mergekit_yaml, str(config32), str(out_mk32), *mergekit_flags], out_mk32)
    timed("rvec apply (bf16 vector)", [rvec, "apply", str(vec16), "--base", str(pair["instruct"]), "-o", str(out16), "--quiet"], out16)
    timed("rvec compress (lossless)", [rvec, "compress", str(vec), "-o", str(lossless), "--quiet"], lossless)
    for _ in range(repeat):
        timed("rvec compress --rank 64", [rvec, "compress", str(vec), "-o", str(r64), "--method", "lowrank", "--rank", "64", "--device", "cpu", "--quiet"], r64)
        timed("mergekit-extract-lora --max-rank 64", [str(mergekit / "mergekit-extract-lora"), "--model", str(pair["grpo"]), "--base-model", str(pair["sft"]),
                                                      "--out-path", str(lora_mk), "--max-rank", "64", "--quiet"], lora_mk)

    log_line("comparing merged models with the float32 reference")
    agreement = compare_to_reference(pair["instruct"], pair["sft"], [(pair["grpo"], 1.0)], {
        "rvec (default vector, float32)": out, "rvec (bf16 vector)": out16,
        "mergekit (dtype bfloat16)": out_mk, "mergekit (dtype float32, out_dtype bfloat16)": out_mk32})
    log_line("comparing rank-64 factors with the exact delta")
    errors = matrix_errors(pair, r64, lora_mk)
    commands = {name: _summarise(ms) for name, ms in runs.items()}
    wall = {name: c["wall_s"] for name, c in commands.items()}
    return {
        "pair": {k: str(v) for k, v in pair.items()},
        "moved": moved_fraction(pair["sft"], pair["grpo"]),
        "checkpoint_bytes": {k: sum(p.stat().st_size for p in v.glob("*.safetensors")) for k, v in pair.items()},
        "vector_bytes": {"default": _dir_bytes(vec), "bf16": _dir_bytes(vec16), "lossless": _dir_bytes(lossless), "rank64": _dir_bytes(r64),
                         "mergekit_lora_rank64": _dir_bytes(lora_mk)},
        "rank64_bytes": factor_bytes(r64, lora_mk, set(errors["per_matrix"])),
        "commands": commands,
        "ratios": {
            "apply_to_mergekit_bf16_wall": wall["rvec apply"] / wall["mergekit-yaml task_arithmetic (bf16)"],
            "apply_to_mergekit_fp32_wall": wall["rvec apply"] / wall["mergekit-yaml task_arithmetic (fp32)"],
            "compress_rank64_to_mergekit_wall": wall["rvec compress --rank 64"] / wall["mergekit-extract-lora --max-rank 64"],
        },
        "merge_accuracy": {k: v.to_dict() for k, v in agreement.items()},
        "lossless": lossless_check(vec, lossless),
        "rank64_errors": {k: v for k, v in errors.items() if k != "per_matrix"},
        "rank64_per_matrix": errors["per_matrix"],
    }


def markdown(r: dict) -> str:
    """The tables the READMEs take."""
    lines = ["| command | wall (s) | CPU user+sys (s) | peak RSS (GB) |", "| --- | ---: | ---: | ---: |"]
    for name, c in r["commands"].items():
        best = min(c["runs"], key=lambda m: m["wall_s"])
        lines.append(f"| `{name}` | {c['wall_s']:.2f} | {best['user_s'] + best['sys_s']:.1f} | {c['peak_rss_gb']:.2f} |")
    lines += ["", "| merged output | weights differing from exact | > 1 bf16 ULP | largest error | largest error (ULPs) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, a in r["merge_accuracy"].items():
        lines.append(f"| {name} | {a['share_differing']:.3%} | {a['share_beyond_one_ulp']:.3%} | {a['max_abs_error']:.3g} | {a['max_ulps']:.3g} |")
    e, b, f, q = r["rank64_errors"], r["vector_bytes"], r["rank64_bytes"], r["ratios"]
    mean = e.get("mean_rel_error", {})
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    lines += ["", f"GRPO moved {r['moved']['fraction']:.1%} of {r['moved']['weights']:,} weights. Vector: {mb(b['default'])} "
                  f"as extracted (float32), {mb(b['bf16'])} with `--dtype bf16`, {mb(b['lossless'])} lossless "
                  f"({'bit-exact' if r['lossless']['bit_exact'] else 'NOT bit-exact'}). "
                  f"`rvec apply` / mergekit wall: {q['apply_to_mergekit_bf16_wall']:.2f} (bf16 config), "
                  f"{q['apply_to_mergekit_fp32_wall']:.2f} (float32 config).",
              "", f"Rank 64: rvec {mb(b['rank64'])} ({mb(f['rvec']['factors'])} of factors for the {e['matrices']} matrices both factor, "
                  f"{mb(f['rvec']['other'])} for the rest), mergekit's LoRA {mb(b['mergekit_lora_rank64'])} ({mb(f['mergekit']['factors'])} "
                  f"of factors, {mb(f['mergekit']['other'])} stored at full rank). Mean relative error over those matrices: "
                  + (f"rvec {mean['rvec']:.4f}, mergekit {mean['mergekit']:.4f}" if mean else "none in common")
                  + f"; wall rvec / mergekit {q['compress_rank64_to_mergekit_wall']:.2f}."]
    return "\n".join(lines)


def _code_state() -> dict:
    """The commit measured, and the files of rvec_hub changed on top of it (the tree may be shared)."""
    import subprocess

    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "--", "rvec_hub", "serving"], capture_output=True, text=True).stdout.split("\n")
    return {"commit": head, "uncommitted": [line[3:] for line in changed if line.strip()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="standard", help="the demo's donor recipe: standard or smoke")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the compared commands (best wall time is reported)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "real")
    parser.add_argument("--mergekit-venv", type=Path, default=ROOT / ".venv-mergekit")
    parser.add_argument("--out", type=Path, help="default: bench/results/real.json (real-RECIPE.json for other recipes)")
    parser.add_argument("--keep", action="store_true", help="keep vectors and merged outputs")
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
    try:
        pair = real_pair(args.recipe)
    except PairMissing as e:
        parser.error(str(e))
    environment = {**_environment(mergekit / "mergekit-yaml"), "cpu": cpu_model(), "code": _code_state(), "loadavg_at_start": os.getloadavg(), "recipe": args.recipe}
    results = run(pair, args.work, args.repeat, mergekit)
    results["environment"] = {**environment, "loadavg_at_end": os.getloadavg(), "seconds": round(time.perf_counter() - start, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        for path in [*args.work.glob("vec-*"), *args.work.glob("out-*"), *args.work.glob("mergekit-*")]:
            shutil.rmtree(path)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
