"""Benchmark `rvec compress` against `mergekit-extract-lora` on Qwen2.5-0.5B-shaped donors.

On the synthetic family (GRPO = SFT + a rank-8 update and N(0, 1.5e-5) noise, added in float32 to the
bf16 weights and rounded back) it measures, as CLI subprocesses with a warm page cache, the wall time and
peak RSS of:

- `rvec extract` (the dense bf16 vector compress starts from),
- `rvec compress` lossless (`--method auto`: sparse where it pays),
- `rvec compress --method lowrank --rank 64 --device cpu`,
- `mergekit-extract-lora --max-rank 64` on the same SFT/GRPO pair;

then the relative Frobenius error ‖Δ − Δ̂‖/‖Δ‖ of each matrix both low-rank outputs cover, against the
exact delta GRPO − SFT in float32, and a size-versus-error curve: for ranks 8-512 and byte budgets the
exact payload size of the plan and its error (optimal for the rank, from each matrix's singular values),
plus measured points from real `compress` runs. The fraction of weights the GRPO update moves is reported.

    bash bench/setup_mergekit.sh
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_compress.py             # 0.5B shapes
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_compress.py --size tiny  # smoke run

Figures go to bench/results/compress.json (compress-tiny.json) and bench/compress_curve.png.
"""

from __future__ import annotations

import argparse
import json
import math
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

import torch  # noqa: E402
from _measure import Measurement, donor_family, log_line, measure, save_size_error_plot, size_error_axes, warm_cache  # noqa: E402
from safetensors import safe_open  # noqa: E402

from rvec_hub import Vector, open_checkpoint  # noqa: E402
from rvec_hub.compress import Target, _survey, make_plans  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, TINY, Shapes  # noqa: E402

SIZES: dict[str, Shapes] = {"tiny": TINY, "0.5b": QWEN25_05B}
RANKS = (8, 16, 32, 64, 128, 256, 512)
BUDGET_SHARES = (0.02, 0.05, 0.1, 0.2, 0.3)  # of the dense bf16 vector
TARGET_WALL_RATIO = 0.25
TARGET_ERROR_MARGIN = 0.01


def moved_fraction(sft: Path, grpo: Path) -> dict:
    """Share of weights the GRPO update changes at all (bit-level), over every float tensor."""
    a, b = open_checkpoint(sft), open_checkpoint(grpo)
    moved = total = 0
    for name, info in a.tensors.items():
        if info.dtype.is_floating_point:
            moved += int((a.read_rows(name) != b.read_rows(name)).sum())
            total += math.prod(info.shape) if info.shape else 1
    return {"weights": total, "moved": moved, "fraction": moved / total}


def true_delta(sft, grpo, name: str) -> torch.Tensor:
    return grpo.read_rows(name).float() - sft.read_rows(name).float()


def mergekit_factors(out: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """(B, A, scale) of every module mergekit factored, keyed by the weight name it approximates."""
    config = json.loads((out / "adapter_config.json").read_text())
    factors = {}
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            a = f.get_tensor(key).float()
            b = f.get_tensor(key.replace(".lora_A.", ".lora_B.")).float()
            short = module.rsplit(".", 1)[-1]
            rank = config.get("rank_pattern", {}).get(short, config["r"])
            alpha = config.get("alpha_pattern", {}).get(short, config["lora_alpha"])
            factors[module + ".weight"] = (b, a, alpha / rank)
    return factors


def matrix_errors(donors: dict[str, Path], rvec_out: Path, mergekit_out: Path) -> dict:
    """Relative Frobenius error per matrix both outputs factor, against the exact float32 delta."""
    sft, grpo = open_checkpoint(donors["sft"]), open_checkpoint(donors["grpo"])
    vec = Vector.open(rvec_out)
    mk = mergekit_factors(mergekit_out)
    rows = {}
    for name, (b, a, scale) in mk.items():
        entry = vec.entries.get(name)
        if entry is None or entry.encoding != "lowrank":
            continue
        delta = true_delta(sft, grpo, name)
        norm = torch.linalg.vector_norm(delta).item()
        if not norm:
            continue
        rows[name] = {
            "rvec": torch.linalg.vector_norm(delta - vec.decode(name)).item() / norm,
            "mergekit": torch.linalg.vector_norm(delta - scale * (b @ a)).item() / norm,
        }
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("rvec", "mergekit")} if rows else {}
    return {"matrices": len(rows), "mean_rel_error": mean, "mergekit_covers": len(mk), "per_matrix": rows}


def lossless_check(dense: Path, lossless: Path) -> dict:
    """Whether every tensor of the lossless output decodes bit-identically to the dense vector."""
    a, b = Vector.open(dense), Vector.open(lossless)
    differing = [n for n in a.entries if not torch.equal(a.decode(n), b.decode(n))]
    return {"bit_exact": not differing, "differing_tensors": differing[:5]}


def curve(vector_dir: Path, measured: dict[int, Path]) -> dict:
    """Size and error of uniform ranks and byte budgets, from one survey of spectra and sparsity."""
    vec = Vector.open(vector_dir)
    start = time.perf_counter()
    surveys = _survey(vec, Target("auto", energy=1.0), "cpu", quiet=True)
    survey_s = time.perf_counter() - start
    norm_sq = sum(float(s.energies.sum()) for s in surveys.values() if s.energies is not None)
    norm_sq += sum(vec.decode(s.name).double().square().sum().item() for s in surveys.values() if s.energies is None)
    dense = sum(s.dense_bytes for s in surveys.values())

    def point(target: Target) -> dict:
        plans = make_plans(surveys, target)
        err = 0.0
        for name, plan in plans.items():
            if plan.encoding == "lowrank":
                err += float(surveys[name].energies[plan.options["rank"]:].sum())
        ranks = [p.options["rank"] for p in plans.values() if p.encoding == "lowrank"]
        return {
            "payload_bytes": sum(p.nbytes for p in plans.values()),
            "rel_error": math.sqrt(err / norm_sq),
            "lowrank_matrices": len(ranks),
            "mean_rank": sum(ranks) / len(ranks) if ranks else None,
        }

    ranks = {r: point(Target("lowrank", rank=r)) for r in RANKS if r <= max(min(s.shape) for s in surveys.values() if s.is_matrix)}
    budgets = {}
    for share in BUDGET_SHARES:
        try:
            budgets[share] = {"budget_bytes": int(share * dense), **point(Target("lowrank", budget=int(share * dense)))}
        except Exception as exc:  # a budget below rank 1 everywhere is reported, not plotted
            budgets[share] = {"budget_bytes": int(share * dense), "error": str(exc)}
    largest = max(min(s.shape) for s in surveys.values() if s.is_matrix)
    uniform_at_budget = {}
    for share, b in budgets.items():
        if "error" in b:
            continue
        # the largest uniform rank that costs no more than the budget's plan: the same comparison
        rank = 0
        while rank < largest and point_bytes(surveys, rank + 1) <= b["payload_bytes"]:
            rank += 1
        if rank:
            uniform_at_budget[share] = {"rank": rank, **point(Target("lowrank", rank=rank))}
    real = {}
    for r, path in measured.items():
        m = Vector.open(path).manifest.compression
        real[r] = {"payload_bytes": m["payload_bytes"], "rel_error": m["rel_error"]}
    return {"survey_s": survey_s, "dense_bytes": dense, "ranks": ranks, "budgets": budgets, "uniform_at_budget": uniform_at_budget, "measured": real}


def point_bytes(surveys, rank: int) -> int:
    return sum(p.nbytes for p in make_plans(surveys, Target("lowrank", rank=rank)).values())


def plot(results: dict, path: Path) -> None:
    c = results["curve"]
    fig, ax = size_error_axes((7, 4.2))
    xs = [v["payload_bytes"] / 1e6 for v in c["ranks"].values()]
    ax.plot(xs, [v["rel_error"] for v in c["ranks"].values()], "o-", label="uniform rank (8…512)")
    for r, v in c["ranks"].items():
        ax.annotate(f"r{r}", (v["payload_bytes"] / 1e6, v["rel_error"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ok = [v for v in c["budgets"].values() if "error" not in v]
    ax.plot([v["payload_bytes"] / 1e6 for v in ok], [v["rel_error"] for v in ok], "s-", label="--budget (greedy over singular values)")
    ax.plot([v["payload_bytes"] / 1e6 for v in c["measured"].values()], [v["rel_error"] for v in c["measured"].values()], "k^", label="measured rvec compress --rank")
    mk = results.get("mergekit")
    if mk:
        ax.plot([mk["payload_bytes"] / 1e6], [results["accuracy"]["mean_rel_error"]["mergekit"]], "rx", ms=9, label="mergekit-extract-lora r64 (mean over matrices)")
    lossless = results["commands_summary"].get("lossless_payload_bytes")
    if lossless:
        ax.plot([lossless / 1e6], [0.0], "g*", ms=11, label="sparse (lossless)")
    save_size_error_plot(fig, ax, path, c["dense_bytes"], f"rvec compress on {results['size']} donors (GRPO moves {results['moved']['fraction']:.1%} of weights)")


def _dir_payload(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def run(size: str, work: Path, mergekit_bin: Path, repeat: int) -> dict:
    shapes = SIZES[size]
    work.mkdir(parents=True, exist_ok=True)
    donors = donor_family(work, shapes, ("sft", "grpo"))
    rvec = str(ROOT / ".venv" / "bin" / "rvec")
    logs = work / "logs"
    runs: dict[str, list[Measurement]] = {}
    vec, lossless, r64, mk = work / "vec-bf16", work / "vec-lossless", work / "vec-r64", work / "mergekit-r64"

    def timed(name: str, argv: list[str], out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        warm_cache(*donors.values(), *(p for p in work.glob("vec-*") if p != out))
        m = measure(name, argv, log=logs / f"{name.replace(' ', '_')}-{len(runs.get(name, []))}.log")
        runs.setdefault(name, []).append(m)
        log_line(f"  {size} {name}: {m.wall_s:.2f} s, peak RSS {m.peak_rss_gb:.2f} GB")

    log_line("measuring the share of weights GRPO moves")
    moved = moved_fraction(donors["sft"], donors["grpo"])
    log_line(f"  {moved['fraction']:.2%} of {moved['weights']:,} weights differ")
    timed("rvec extract", [rvec, "extract", "--reference", str(donors["sft"]), "--tuned", str(donors["grpo"]), "-o", str(vec), "--quiet"], vec)
    timed("rvec compress (lossless)", [rvec, "compress", str(vec), "-o", str(lossless), "--quiet"], lossless)
    for _ in range(repeat):  # interleaved, so load from other work on the machine hits both alike
        timed("rvec compress --rank 64", [rvec, "compress", str(vec), "-o", str(r64), "--method", "lowrank", "--rank", "64", "--device", "cpu", "--quiet"], r64)
        timed("mergekit-extract-lora --max-rank 64", [str(mergekit_bin), "--model", str(donors["grpo"]), "--base-model", str(donors["sft"]), "--out-path", str(mk), "--max-rank", "64", "--quiet"], mk)
    summary = {name: _summarise(ms) for name, ms in runs.items()}
    log_line("comparing errors with the exact delta")
    accuracy = matrix_errors(donors, r64, mk)
    log_line(f"  mean relative error over {accuracy['matrices']} matrices: {accuracy['mean_rel_error']}")
    exact = lossless_check(vec, lossless)
    measured = {64: r64}
    largest = min(shapes.hidden_size, shapes.intermediate_size)
    for r in (x for x in (8,) if x <= largest):
        out = work / f"vec-r{r}"
        timed(f"rvec compress --rank {r}", [rvec, "compress", str(vec), "-o", str(out), "--method", "lowrank", "--rank", str(r), "--device", "cpu", "--quiet"], out)
        measured[r] = out
    log_line("size-versus-error curve (one survey of every matrix's spectrum)")
    summary = {name: _summarise(ms) for name, ms in runs.items()}
    the_curve = curve(vec, measured)
    rvec_s = summary["rvec compress --rank 64"]["wall_s"]
    mk_s = summary["mergekit-extract-lora --max-rank 64"]["wall_s"]
    errors = accuracy["mean_rel_error"]
    lossless_bytes, dense_bytes = _dir_payload(lossless), _dir_payload(vec)
    return {
        "size": size,
        "shapes": {k: getattr(shapes, k) for k in shapes.__dataclass_fields__},
        "moved": moved,
        "commands": summary,
        "commands_summary": {
            "dense_payload_bytes": dense_bytes,
            "lossless_payload_bytes": lossless_bytes,
            "lossless_ratio_to_dense": lossless_bytes / dense_bytes,
            "rank64_payload_bytes": _dir_payload(r64),
        },
        "lossless": exact,
        "mergekit": {"payload_bytes": sum(p.stat().st_size for p in mk.rglob("*.safetensors"))},
        "accuracy": {k: v for k, v in accuracy.items() if k != "per_matrix"},
        "per_matrix_errors": accuracy["per_matrix"],
        "curve": the_curve,
        "targets": {
            "rank64_wall_ratio_to_mergekit": rvec_s / mk_s,
            "rank64_wall_ratio_met": rvec_s / mk_s <= TARGET_WALL_RATIO,
            "rank64_error_within_mergekit_plus_1pct": bool(errors) and errors["rvec"] <= errors["mergekit"] + TARGET_ERROR_MARGIN,
            "sparse_bit_exact": exact["bit_exact"],
        },
    }


def _summarise(ms: list[Measurement]) -> dict:
    best = min(ms, key=lambda m: m.wall_s)
    return {"wall_s": round(best.wall_s, 3), "peak_rss_gb": round(max(m.peak_rss_gb for m in ms), 3), "runs": [m.to_dict() for m in ms]}


def markdown(r: dict) -> str:
    """The tables the README takes."""
    lines = ["| command | wall (s) | peak RSS (GB) |", "| --- | ---: | ---: |"]
    lines += [f"| `{n}` | {c['wall_s']:.2f} | {c['peak_rss_gb']:.2f} |" for n, c in r["commands"].items()]
    s, a, t = r["commands_summary"], r["accuracy"], r["targets"]
    lines += [
        "",
        f"GRPO moves {r['moved']['fraction']:.2%} of the {r['moved']['weights']:,} weights. "
        f"Dense bf16 vector {s['dense_payload_bytes'] / 1e6:.1f} MB; sparse lossless {s['lossless_payload_bytes'] / 1e6:.1f} MB "
        f"({s['lossless_ratio_to_dense']:.1%}, bit-exact: {r['lossless']['bit_exact']}); rank 64 {s['rank64_payload_bytes'] / 1e6:.1f} MB; "
        f"mergekit r64 {r['mergekit']['payload_bytes'] / 1e6:.1f} MB.",
        "",
        f"Mean relative Frobenius error over the {a['matrices']} matrices both factor: rvec {a['mean_rel_error'].get('rvec', float('nan')):.4f}, "
        f"mergekit {a['mean_rel_error'].get('mergekit', float('nan')):.4f}. Wall ratio rvec/mergekit at rank 64: "
        f"{t['rank64_wall_ratio_to_mergekit']:.2f} (target ≤ {TARGET_WALL_RATIO}: {'met' if t['rank64_wall_ratio_met'] else 'missed'}).",
        "",
        "| target | payload (MB) | rel. error | mean rank |",
        "| --- | ---: | ---: | ---: |",
    ]
    c = r["curve"]
    for k, v in c["ranks"].items():
        lines.append(f"| rank {k} | {v['payload_bytes'] / 1e6:.1f} | {v['rel_error']:.4f} | {v['mean_rank'] or 0:.0f} |")
    for k, v in c["budgets"].items():
        if "error" not in v:
            lines.append(f"| budget {float(k):.0%} of dense | {v['payload_bytes'] / 1e6:.1f} | {v['rel_error']:.4f} | {v['mean_rank'] or 0:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", choices=list(SIZES))
    parser.add_argument("--repeat", type=int, default=1, help="runs of the rank-64 pair (best wall time is reported)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work")
    parser.add_argument("--mergekit-venv", type=Path, default=ROOT / ".venv-mergekit")
    args = parser.parse_args(argv)
    mergekit_bin = args.mergekit_venv / "bin" / "mergekit-extract-lora"
    if not mergekit_bin.exists():
        parser.error(f"{mergekit_bin} is missing; run `bash bench/setup_mergekit.sh` first")
    import torch as _torch

    from rvec_hub import __version__

    start = time.perf_counter()
    results = run(args.size, args.work / f"compress-{args.size.replace('.', '')}", mergekit_bin, args.repeat)
    results["environment"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "torch_threads": _torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": _torch.__version__,
        "rvec": __version__,
        "mergekit": "0.1.5 (.venv-mergekit)",
        "page_cache": "warm: inputs read once before every measured command",
        "total_s": time.perf_counter() - start,
    }
    name = "compress" if args.size == "0.5b" else f"compress-{args.size}"
    out = BENCH / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, BENCH / ("compress_curve.png" if args.size == "0.5b" else f"compress_curve-{args.size}.png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
