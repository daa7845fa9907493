"""Benchmark the lossy `quantized` encoding against low-rank: size versus error, and next-token KL at equal bytes.

On one bf16 vector (by default grpo − sft of the Qwen2.5-0.5B-shaped bench donors, `rvec_hub.synthetic`;
`--reference/--tuned` for a real pair) it decodes every changed tensor once and measures, tensor by tensor:

- the exact payload of the lossless `packed` encoding (the anchor) and each matrix's singular spectrum,
  from which the low-rank plans `rvec compress` makes (uniform `--rank`, and `--budget` at the bytes of
  each quantized point) get their exact payload and their error (optimal for the rank, from the spectrum);
- the `quantized` encoding at several (bits, keep) settings: exact payload and error, by encoding.

Errors are relative Frobenius errors ‖Δ − Δ̂‖/‖Δ‖ over the whole vector, against the vector itself; plans
are built by `rvec_hub.compress.make_plans`, as `rvec compress` builds them (vectors stay lossless, a
matrix keeps `packed` where that is smaller). Then, as CLI subprocesses, for each `--probe-points` setting:
`rvec compress --method quantized --bits B --keep K --probe BASE` and `rvec compress --budget <its payload>
--probe BASE` (low-rank at equal bytes, lossless where a whole matrix fits), with wall time, peak RSS,
measured error and next-token KL / top-1 agreement on rvec's probe prompts. The probe base is the
synthetic Instruct model (built once) or `--probe-base`. It also times decoding each written vector
through `Vector.decode_rows` on one thread. With `--mergekit`, `mergekit-extract-lora --max-rank 64` runs
on the same pair and its whole-vector error is added to the curve.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_lossy.py                 # 0.5B shapes
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_lossy.py --size tiny     # smoke run
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_lossy.py --label smollm2 \\
        --reference SFT_DIR --tuned GRPO_DIR --probe-base ~/.cache/rvec/models/smollm2-135m-instruct

Figures go to bench/results/lossy.json (lossy-<size or label>.json) and bench/lossy_curve.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from _measure import CommandFailed, cpu_model, log_line, measure, save_size_error_plot, size_error_axes, warm_cache  # noqa: E402

from rvec_hub import Vector  # noqa: E402
from rvec_hub.compress import Survey, Target, _packed_size, make_plans  # noqa: E402
from rvec_hub.encodings import lowrank, packed, quantized  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, TINY, Shapes, write_member  # noqa: E402

SIZES: dict[str, Shapes] = {"tiny": TINY, "0.5b": QWEN25_05B}
SETTINGS = ((1, 0.1), (1, 0.25), (1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0), (3, 1.0), (4, 1.0), (8, 1.0))
RANKS = (8, 16, 32, 64, 128, 256, 512)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _setting(text: str) -> tuple[int, float]:
    bits, _, keep = text.partition(":")
    return int(bits), float(keep or 1.0)


def synthetic_inputs(work: Path, shapes: Shapes, donors: Path | None) -> tuple[Path, Path, Path]:
    """(sft, grpo, instruct) of the synthetic family: `donors` reused when given, the rest built once."""
    root = work / "family"
    paths = {}
    for role in ("sft", "grpo", "instruct"):
        if donors is not None and (donors / role / "model.safetensors").exists():
            paths[role] = donors / role
            continue
        out = root / role
        if not (out / ".complete").exists():
            log_line(f"building the {role} member in {out} (once)")
            shutil.rmtree(out, ignore_errors=True)
            write_member(out, shapes, 0, role)
            (out / ".complete").write_text("complete\n")
        paths[role] = out
    return paths["sft"], paths["grpo"], paths["instruct"]


def survey(vector_dir: Path, settings: list[tuple[int, float]]) -> dict:
    """One decode per tensor: packed sizes, spectra, and the quantized encoding at every setting."""
    vec = Vector.open(vector_dir)
    surveys: dict[str, Survey] = {}
    coded: dict[tuple[int, float], dict[str, tuple[dict, float]]] = {s: {} for s in settings}
    encode_s = {s: 0.0 for s in settings}
    norm_sq, packed_s = 0.0, 0.0
    for entry in vec.manifest.tensors:
        if entry.encoding == "zero":
            continue
        shape, dtype = tuple(entry.shape), _DTYPES[entry.dtype]
        delta = vec.decode(entry.name)
        norm = torch.linalg.vector_norm(delta).item()
        norm_sq += norm**2
        start = time.process_time()
        nnz, packed_shapes = _packed_size(packed.CODEC.encode(delta, dtype=dtype))
        packed_s += time.process_time() - start
        matrix = len(shape) >= 2
        energies = lowrank.spectrum(delta) if matrix else None
        surveys[entry.name] = Survey(entry.name, shape, dtype, nnz, packed_shapes, energies)
        if matrix:
            for s in settings:
                start = time.process_time()
                enc = quantized.CODEC.encode(delta, bits=s[0], keep=s[1])
                encode_s[s] += time.process_time() - start
                coded[s][entry.name] = ({role: (tuple(t.shape), t.dtype) for role, t in enc.stored.items()}, (enc.stats["rel_error"] * norm) ** 2)
        del delta
    return {"surveys": surveys, "coded": coded, "norm_sq": norm_sq, "encode_cpu_s": encode_s, "packed_cpu_s": packed_s}


def _lowrank_point(surveys: dict[str, Survey], target: Target, norm_sq: float) -> dict:
    plans = make_plans(surveys, target)
    err = sum(float(surveys[n].energies[p.options["rank"]:].sum()) for n, p in plans.items() if p.encoding == "lowrank")
    ranks = [p.options["rank"] for p in plans.values() if p.encoding == "lowrank"]
    counts: dict[str, int] = {}
    for p in plans.values():
        counts[p.encoding] = counts.get(p.encoding, 0) + 1
    return {"payload_bytes": sum(p.nbytes for p in plans.values()), "rel_error": math.sqrt(err / norm_sq),
            "mean_rank": sum(ranks) / len(ranks) if ranks else None, "encodings": counts}


def curve(data: dict) -> dict:
    """Size and error of every quantized setting, of uniform ranks, and of `--budget` at each setting's bytes."""
    surveys, norm_sq = data["surveys"], data["norm_sq"]
    lossless = sum(p.nbytes for p in make_plans(surveys, Target("sparse")).values())
    dense = sum(s.dense_bytes for s in surveys.values())
    points = {}
    for (bits, keep), per_tensor in data["coded"].items():
        with_q = {n: dataclasses.replace(s, quantized=per_tensor[n][0] if n in per_tensor else None) for n, s in surveys.items()}
        plans = make_plans(with_q, Target("quantized", bits=bits, keep=keep))
        err = sum(per_tensor[n][1] for n, p in plans.items() if p.encoding == "quantized")
        size = sum(p.nbytes for p in plans.values())
        try:
            budget = _lowrank_point(surveys, Target("auto", budget=size), norm_sq)
        except Exception as exc:  # a size below rank 1 everywhere is reported, not plotted
            budget = {"error": str(exc)}
        points[f"{bits}:{keep:g}"] = {
            "bits": bits, "keep": keep, "payload_bytes": size, "rel_error": math.sqrt(err / norm_sq),
            "quantized_matrices": sum(p.encoding == "quantized" for p in plans.values()),
            "encode_cpu_s": data["encode_cpu_s"][(bits, keep)], "lowrank_budget_at_equal_bytes": budget,
        }
    largest = max(min(lowrank.as_matrix(s.shape)) for s in surveys.values() if s.is_matrix)
    ranks = {r: _lowrank_point(surveys, Target("lowrank", rank=r), norm_sq) for r in RANKS if r <= largest}
    return {"dense_bytes": dense, "lossless_bytes": lossless, "packed_encode_cpu_s": data["packed_cpu_s"], "quantized": points, "ranks": ranks}


def decode_cpu_s(path: Path) -> float:
    """CPU seconds to decode every tensor of a vector through `Vector.decode_rows`, one torch thread, warm cache."""
    vec = Vector.open(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vec.decode_rows(next(iter(vec.entries)), 0, 1)  # compile the kernels before timing
        start = time.process_time()
        for name, entry in vec.entries.items():
            if entry.encoding != "zero":
                vec.decode_rows(name, 0, entry.shape[0] if entry.shape else 1)
        return time.process_time() - start
    finally:
        torch.set_num_threads(threads)


def measured_pair(vec: Path, base: Path, setting: tuple[int, float], work: Path) -> dict:
    """`rvec compress` quantized at `setting`, then `--budget` at its payload, both with `--probe BASE`."""
    rvec = str(ROOT / ".venv" / "bin" / "rvec")
    bits, keep = setting
    tag = f"b{bits}k{keep:g}"
    out = {}
    q_dir, l_dir = work / f"vec-q-{tag}", work / f"vec-budget-{tag}"
    for label, directory, extra in [
        (f"quantized --bits {bits} --keep {keep:g}", q_dir, ["--method", "quantized", "--bits", str(bits), "--keep", str(keep)]),
        ("--budget (equal bytes)", l_dir, None),
    ]:
        if extra is None:  # the low-rank budget: the quantized vector's payload, headers included
            budget = out["quantized"]["payload_bytes"]
            extra = ["--budget", str(budget)]
        shutil.rmtree(directory, ignore_errors=True)
        warm_cache(vec, base)
        argv = [rvec, "compress", str(vec), "-o", str(directory), "--device", "cpu", "--probe", str(base), "--quiet", *extra]
        m = measure(label, argv, log=work / "logs" / f"{tag}-{directory.name}.log")
        manifest = json.loads((directory / "rvec.json").read_text())
        c = manifest["compression"]
        files = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
        key = "quantized" if directory == q_dir else "lowrank_budget"
        out[key] = {
            "command": " ".join(argv[1:]), "wall_s": round(m.wall_s, 2), "peak_rss_gb": round(m.peak_rss_gb, 3),
            "payload_bytes": c["payload_bytes"], "file_bytes": files, "rel_error": c["rel_error"], "encodings": c["encodings"],
            "mean_rank": c.get("mean_rank"), "probe": manifest["probe"], "decode_cpu_s": decode_cpu_s(directory),
        }
        log_line(f"  {label}: {c['payload_bytes'] / 1e6:.1f} MB, rel. error {c['rel_error']:.4f}, KL {manifest['probe']['kl_mean']:.3g}, {m.wall_s:.0f} s")
    return out


def mergekit_point(sft: Path, grpo: Path, vec: Path, work: Path, mergekit_bin: Path, rank: int) -> dict:
    """`mergekit-extract-lora` on the pair: its payload and whole-vector error against the rvec vector."""
    sys.path.insert(0, str(BENCH))
    from bench_compress import mergekit_factors

    out = work / f"mergekit-r{rank}"
    shutil.rmtree(out, ignore_errors=True)
    warm_cache(sft, grpo)
    m = measure(f"mergekit-extract-lora --max-rank {rank}", [str(mergekit_bin), "--model", str(grpo), "--base-model", str(sft),
                "--out-path", str(out), "--max-rank", str(rank), "--quiet"], log=work / "logs" / f"mergekit-r{rank}.log")
    factors = mergekit_factors(out)
    v = Vector.open(vec)
    whole = _other_tensors(out)
    err = total = 0.0
    for name, entry in v.entries.items():
        if entry.encoding == "zero":
            continue
        delta = v.decode(name)
        total += delta.double().square().sum().item()
        if name in factors:
            b, a, scale = factors[name]
            err += (delta - scale * (b @ a)).double().square().sum().item()
        elif name not in whole:  # neither factored nor stored whole: mergekit leaves it unchanged
            err += delta.double().square().sum().item()
    return {"rank": rank, "wall_s": round(m.wall_s, 2), "payload_bytes": sum(p.stat().st_size for p in out.rglob("*.safetensors")),
            "rel_error": math.sqrt(err / total)}


def _other_tensors(out: Path) -> set[str]:
    """Weights mergekit stores whole (embeddings, norms) beside its factors, by model weight name."""
    from safetensors import safe_open

    names = set()
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if ".lora_" not in key:
                names.add(key.removeprefix("base_model.model."))
    return names


def plot(r: dict, path: Path) -> None:
    c = r["curve"]
    fig, ax = size_error_axes((7.2, 4.4))
    q = sorted(c["quantized"].values(), key=lambda v: v["payload_bytes"])
    ax.plot([v["payload_bytes"] / 1e6 for v in q], [v["rel_error"] for v in q], "o", color="C3", label="quantized (bits:keep)")
    for v in q:
        ax.annotate(f"{v['bits']}:{v['keep']:g}", (v["payload_bytes"] / 1e6, v["rel_error"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ranks = c["ranks"]
    ax.plot([v["payload_bytes"] / 1e6 for v in ranks.values()], [v["rel_error"] for v in ranks.values()], "o-", color="C0", label="low-rank, uniform rank")
    for k, v in ranks.items():
        ax.annotate(f"r{k}", (v["payload_bytes"] / 1e6, v["rel_error"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    b = [v["lowrank_budget_at_equal_bytes"] for v in q if "error" not in v["lowrank_budget_at_equal_bytes"]]
    ax.plot([v["payload_bytes"] / 1e6 for v in b], [v["rel_error"] for v in b], "s--", color="C1", label="--budget at each quantized size")
    for m in r.get("measured", {}).values():
        ax.plot([m["quantized"]["payload_bytes"] / 1e6], [m["quantized"]["rel_error"]], "k^", ms=7)
        ax.plot([m["lowrank_budget"]["payload_bytes"] / 1e6], [m["lowrank_budget"]["rel_error"]], "kv", ms=7)
    if r.get("measured"):
        ax.plot([], [], "k^", label="measured rvec compress (quantized)")
        ax.plot([], [], "kv", label="measured rvec compress --budget")
    mk = r.get("mergekit")
    if mk:
        ax.plot([mk["payload_bytes"] / 1e6], [mk["rel_error"]], "rx", ms=9, label=f"mergekit-extract-lora r{mk['rank']}")
    ax.plot([c["lossless_bytes"] / 1e6], [0.0], "g*", ms=11, label="packed (lossless)")
    save_size_error_plot(fig, ax, path, c["dense_bytes"], f"quantized against low-rank on {r['label']} ({r['density']:.1%} of weights moved)")


def markdown(r: dict) -> str:
    c = r["curve"]
    lines = [
        f"Vector: {r['label']}, dense bf16 {c['dense_bytes'] / 1e6:.1f} MB, {r['density']:.1%} of weights moved; "
        f"lossless `packed` {c['lossless_bytes'] / 1e6:.1f} MB.",
        "",
        "| quantized bits:keep | payload (MB) | share of dense | rel. error | `--budget` at the same bytes: rel. error (mean rank) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for k, v in sorted(c["quantized"].items(), key=lambda kv: kv[1]["payload_bytes"]):
        b = v["lowrank_budget_at_equal_bytes"]
        low = f"{b['rel_error']:.4f} ({b['mean_rank'] or 0:.0f})" if "error" not in b else "below rank 1"
        lines.append(f"| {k} | {v['payload_bytes'] / 1e6:.1f} | {v['payload_bytes'] / c['dense_bytes']:.1%} | {v['rel_error']:.4f} | {low} |")
    lines += ["", "| uniform rank | payload (MB) | rel. error |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['payload_bytes'] / 1e6:.1f} | {v['rel_error']:.4f} |" for k, v in c["ranks"].items()]
    if r.get("measured"):
        lines += ["", "| command | payload (MB) | rel. error | KL mean | KL max | top-1 agreement | wall (s) | peak RSS (GB) | decode CPU (s) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in r["measured"].values():
            for v in (m["quantized"], m["lowrank_budget"]):
                p = v["probe"]
                lines.append(f"| `rvec compress VEC {v['command'].split('--quiet ')[-1]}` | {v['payload_bytes'] / 1e6:.1f} | {v['rel_error']:.4f} | "
                             f"{p['kl_mean']:.3g} | {p['kl_max']:.3g} | {p['top1_agreement']:.1%} | {v['wall_s']:.0f} | {v['peak_rss_gb']:.2f} | {v['decode_cpu_s']:.2f} |")
    if r.get("mergekit"):
        mk = r["mergekit"]
        lines += ["", f"mergekit-extract-lora r{mk['rank']}: {mk['payload_bytes'] / 1e6:.1f} MB, whole-vector rel. error {mk['rel_error']:.4f}, {mk['wall_s']:.0f} s."]
    return "\n".join(lines)


def _busy() -> list[str]:
    """The busiest processes on the machine: what else was running."""
    out = subprocess.run(["ps", "-eo", "pcpu,rss,args", "--sort=-pcpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    return [" ".join(line.split())[:160] for line in out[1:9]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", choices=list(SIZES), help="synthetic donors (without --reference/--tuned)")
    parser.add_argument("--donors", type=Path, help="a synthetic family directory (sft/, grpo/, instruct/) to reuse")
    parser.add_argument("--reference", type=Path, help="a real reference donor (with --tuned, --probe-base and --label)")
    parser.add_argument("--tuned", type=Path)
    parser.add_argument("--probe-base", type=Path, help="base model for --probe (default: the synthetic instruct model)")
    parser.add_argument("--label", help="name of the run in results and the figure")
    parser.add_argument("--settings", default=",".join(f"{b}:{k:g}" for b, k in SETTINGS), help="bits:keep settings of the curve")
    parser.add_argument("--probe-points", default="1:0.25,2:1", help="bits:keep settings measured as commands with --probe")
    parser.add_argument("--mergekit", action="store_true", help="also run mergekit-extract-lora --max-rank 64 (.venv-mergekit)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work")
    args = parser.parse_args(argv)
    label = args.label or args.size
    work = args.work / f"lossy-{label.replace('.', '')}"
    work.mkdir(parents=True, exist_ok=True)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "loadavg_at_start": os.getloadavg(), "busy_at_start": _busy()}
    start = time.perf_counter()
    if args.reference:
        if not (args.tuned and args.probe_base):
            parser.error("--reference needs --tuned and --probe-base")
        sft, grpo, base = args.reference, args.tuned, args.probe_base
    else:
        sft, grpo, base = synthetic_inputs(work, SIZES[args.size], args.donors)
        base = args.probe_base or base
    vec = work / "vec-bf16"
    if not (vec / "rvec.json").exists():
        log_line(f"extracting {vec}")
        subprocess.run([str(ROOT / ".venv" / "bin" / "rvec"), "extract", "--reference", str(sft), "--tuned", str(grpo), "-o", str(vec), "--dtype", "bf16", "--quiet", "--force"], check=True)
    settings = [_setting(s) for s in args.settings.split(",")]
    log_line(f"surveying {vec}: packed sizes, spectra, quantized at {len(settings)} settings")
    t = time.perf_counter()
    data = survey(vec, settings)
    survey_s = time.perf_counter() - t
    moved = sum(s.nnz for s in data["surveys"].values())
    weights = sum(math.prod(e.shape) if e.shape else 1 for e in Vector.open(vec).manifest.tensors)
    results = {"label": label, "vector": str(vec.relative_to(ROOT)) if vec.is_relative_to(ROOT) else str(vec), "probe_base": str(base),
               "density": moved / weights, "survey_s": survey_s, "curve": curve(data)}
    log_line(markdown(results))
    name = "lossy" if label == "0.5b" else f"lossy-{label}"
    out = BENCH / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every step, so a run stopped late keeps what it measured
        out.write_text(json.dumps({**results, "environment": env}, indent=2, default=str) + "\n")

    save()
    results["measured"] = {}
    for point in (_setting(s) for s in args.probe_points.split(",") if s):
        log_line(f"measuring quantized {point} against --budget at equal bytes, with --probe {base}")
        results["measured"][f"{point[0]}:{point[1]:g}"] = measured_pair(vec, base, point, work)
        save()
    if args.mergekit:
        mergekit_bin = ROOT / ".venv-mergekit" / "bin" / "mergekit-extract-lora"
        log_line("mergekit-extract-lora --max-rank 64")
        try:
            results["mergekit"] = mergekit_point(sft, grpo, vec, work, mergekit_bin, 64)
        except CommandFailed as exc:
            results["mergekit_failed"] = str(exc).splitlines()[0]
    env.update({
        "loadavg_at_end": os.getloadavg(), "busy_at_end": _busy(), "cpus": os.cpu_count(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "total_s": time.perf_counter() - start,
    })
    save()
    plot(results, BENCH / ("lossy_curve.png" if label == "0.5b" else f"lossy_curve-{label}.png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
