"""Benchmark `rvec extract` and `rvec apply` against mergekit's task_arithmetic on Qwen2.5-shaped donors.

For each size, on a synthetic family (SFT, GRPO, Instruct; bf16) it measures, as CLI subprocesses with a
warm page cache, the wall time and peak RSS of:

- `rvec extract` (bf16 storage, the default, and fp32 storage),
- `rvec apply` of each vector to Instruct (extract recorded the vector's digests, so apply does not hash it
  again; one more run with `RVEC_VERIFY=full` reads and hashes the whole vector as `rvec check` does),
- `mergekit-yaml` task_arithmetic with base_model SFT and models GRPO (weight 1) and Instruct (weight 1),
  which is the same enhanced model: Instruct + (GRPO − SFT).

Then it compares every output with the exact result computed in float32 and rounded once.

    bash bench/setup_mergekit.sh
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_apply.py            # 0.5B and 1.5B shapes
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_apply.py --sizes 0.5b --repeat 1

Figures go to bench/results/apply.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import Measurement, cpu_model, donor_family, log_line, measure, warm_cache  # noqa: E402
from _reference import compare_to_reference  # noqa: E402

from rvec_hub.synthetic import QWEN25_05B, QWEN25_15B, TINY, Shapes  # noqa: E402

SIZES: dict[str, Shapes] = {"tiny": TINY, "0.5b": QWEN25_05B, "1.5b": QWEN25_15B}
TARGET_WALL_RATIO = 0.3
TARGET_PEAK_GB = 0.5
MERGEKIT_YAML = """\
merge_method: task_arithmetic
base_model: {sft}
models:
  - model: {grpo}
    parameters:
      weight: 1.0
  - model: {instruct}
    parameters:
      weight: 1.0
parameters:
  normalize: false
dtype: bfloat16
"""


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_size(label: str, shapes: Shapes, work: Path, repeat: int, mergekit_bin: Path) -> dict:
    """Measure every command for one model size and check its outputs."""
    work.mkdir(parents=True, exist_ok=True)
    donors = donor_family(work, shapes)
    rvec = [str(ROOT / ".venv" / "bin" / "rvec")]
    logs = work / "logs"
    runs: dict[str, list[Measurement]] = {}

    def timed(name: str, argv: list[str], out: Path, env: dict[str, str] | None = None) -> None:
        _fresh(out)
        warm_cache(*donors.values(), *(p for p in work.glob("vec-*") if p != out))
        m = measure(name, argv, log=logs / f"{name}-{len(runs.get(name, []))}.log", env=env)
        runs.setdefault(name, []).append(m)
        log_line(f"  {label} {name}: {m.wall_s:.2f} s, peak RSS {m.peak_rss_gb:.2f} GB")

    vec16, vec32 = work / "vec-bf16", work / "vec-fp32"
    out16, out32, out_mk = work / "out-rvec", work / "out-rvec-fp32vec", work / "out-mergekit"
    config = work / "task_arithmetic.yml"
    config.write_text(MERGEKIT_YAML.format(**{k: str(v) for k, v in donors.items()}))
    extract = [*rvec, "extract", "--reference", str(donors["sft"]), "--tuned", str(donors["grpo"]), "--quiet"]
    for _ in range(repeat):
        timed("rvec extract", [*extract, "-o", str(vec16)], vec16)
    timed("rvec extract --dtype fp32", [*extract, "--dtype", "fp32", "-o", str(vec32)], vec32)
    for _ in range(repeat):  # interleaved, so load from other work on the machine hits both alike
        timed("rvec apply", [*rvec, "apply", str(vec16), "--base", str(donors["instruct"]), "-o", str(out16), "--quiet"], out16)
        timed("mergekit-yaml", [str(mergekit_bin), str(config), str(out_mk), "--lazy-unpickle", "--out-shard-size", "5B"], out_mk)
    # The vector's digests were recorded when extract wrote it; this run reads and hashes it all again.
    timed("rvec apply, RVEC_VERIFY=full", [*rvec, "apply", str(vec16), "--base", str(donors["instruct"]), "-o", str(out16), "--quiet"],
          out16, env={"RVEC_VERIFY": "full"})
    timed("rvec apply (fp32 vector)", [*rvec, "apply", str(vec32), "--base", str(donors["instruct"]), "-o", str(out32), "--quiet"], out32)

    log_line(f"  {label}: comparing outputs with the float32 reference")
    agreement = compare_to_reference(
        donors["instruct"], donors["sft"], [(donors["grpo"], 1.0)],
        {"rvec (bf16 vector)": out16, "rvec (fp32 vector)": out32, "mergekit": out_mk},
    )
    summary = {name: _summarise(ms) for name, ms in runs.items()}
    apply_s, mk_s = summary["rvec apply"]["wall_s"], summary["mergekit-yaml"]["wall_s"]
    apply_gb = summary["rvec apply"]["peak_rss_gb"]
    return {
        "shapes": {k: getattr(shapes, k) for k in shapes.__dataclass_fields__},
        "checkpoint_bytes": sum(p.stat().st_size for p in donors["instruct"].glob("*.safetensors")),
        "vector_bytes": {"bf16": _dir_bytes(vec16), "fp32": _dir_bytes(vec32)},
        "commands": summary,
        "accuracy": {k: v.to_dict() for k, v in agreement.items()},
        "targets": {
            "apply_wall_ratio_to_mergekit": apply_s / mk_s,
            "apply_wall_ratio_met": apply_s / mk_s <= TARGET_WALL_RATIO,
            "apply_peak_rss_met": apply_gb <= TARGET_PEAK_GB,
            "fp32_vector_bit_exact": agreement["rvec (fp32 vector)"].bit_exact,
        },
    }


def _summarise(ms: list[Measurement]) -> dict:
    best = min(ms, key=lambda m: m.wall_s)
    return {
        "wall_s": round(best.wall_s, 3),
        "peak_rss_gb": round(max(m.peak_rss_gb for m in ms), 3),
        "runs": [m.to_dict() for m in ms],
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def markdown(results: dict) -> str:
    """The tables the README takes."""
    lines = [
        "| shapes | command | wall (s) | CPU user+sys (s) | peak RSS (GB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for size, r in results["sizes"].items():
        for name, c in r["commands"].items():
            best = min(c["runs"], key=lambda m: m["wall_s"])
            cpu = best["user_s"] + best["sys_s"]
            lines.append(f"| {size} | `{name}` | {c['wall_s']:.2f} | {cpu:.1f} | {c['peak_rss_gb']:.2f} |")
    lines += ["", "| shapes | output | weights differing | > 1 bf16 ULP | largest error | largest error (ULPs) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for size, r in results["sizes"].items():
        for name, a in r["accuracy"].items():
            lines.append(
                f"| {size} | {name} | {a['share_differing']:.3%} | {a['share_beyond_one_ulp']:.3%} | "
                f"{a['max_abs_error']:.3g} | {a['max_ulps']:.3g} |"
            )
    lines += ["", f"| shapes | `rvec apply` / mergekit wall | target ≤ {TARGET_WALL_RATIO} | peak RSS ≤ {TARGET_PEAK_GB} GB | fp32 vector bit-exact |", "| --- | ---: | --- | --- | --- |"]
    for size, r in results["sizes"].items():
        t = r["targets"]
        ok = lambda b: "met" if b else "missed"  # noqa: E731
        lines.append(
            f"| {size} | {t['apply_wall_ratio_to_mergekit']:.2f} | {ok(t['apply_wall_ratio_met'])} | "
            f"{ok(t['apply_peak_rss_met'])} | {'yes' if t['fp32_vector_bit_exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def _environment(mergekit_bin: Path) -> dict:
    import torch

    from rvec_hub import __version__

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rvec": __version__,
        "mergekit": mergekit_bin.parent.parent.name + " (mergekit 0.1.5)",
        "page_cache": "warm: inputs read once before every measured command",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,1.5b", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--repeat", type=int, default=2, help="runs of extract, apply and mergekit (best wall time is reported)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work")
    parser.add_argument("--mergekit-venv", type=Path, default=ROOT / ".venv-mergekit")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "apply.json")
    parser.add_argument("--keep", action="store_true", help="keep vectors and merged outputs (donors are always kept)")
    parser.add_argument("--table", action="store_true", help="print the tables of the --out file and measure nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    mergekit_bin = args.mergekit_venv / "bin" / "mergekit-yaml"
    if not mergekit_bin.exists():
        parser.error(f"{mergekit_bin} is missing; run `bash bench/setup_mergekit.sh` first")
    results = {"environment": _environment(mergekit_bin), "sizes": {}}
    if args.out.exists():  # sizes measured by an earlier invocation stay unless re-measured
        results["sizes"] = json.loads(args.out.read_text()).get("sizes", {})
    for size in args.sizes.split(","):
        start = time.perf_counter()
        work = args.work / f"qwen25-{size.replace('.', '')}"
        environment = {**results["environment"], "loadavg_at_start": os.getloadavg()}
        results["sizes"][size] = run_size(size, SIZES[size], work, args.repeat, mergekit_bin)
        results["sizes"][size]["environment"] = {**environment, "loadavg_at_end": os.getloadavg()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            for path in work.glob("vec-*"):
                shutil.rmtree(path)
            for path in work.glob("out-*"):
                shutil.rmtree(path)
        log_line(f"{size} done in {time.perf_counter() - start:.0f} s")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
