"""Benchmark serving with vectors merged at load time (`--load-format rvec`) on the vLLM CPU engine.

On a synthetic Qwen2.5-0.5B-shaped family (bf16) it starts one fresh engine per configuration, in its own
process (`python -m rvec_serving.probe`), and records:

- start-up time (engine construction), and its weight-loading part as vLLM logs it ("Loading weights took"),
  plus rvec's own preparation (opening, sha256-verifying and checking the vectors) logged by the loader;
- generation throughput, greedy, fixed prompts and lengths (weights are merged, so it should equal the base's);

for plain `--load-format safetensors` on the base, and `--load-format rvec` with a dense, a sparse (lossless)
and a low-rank vector. It also measures the offline route, `rvec apply` then serve the written checkpoint,
and the extra disk that route needs.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_serve.py
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_serve.py --repeat 2 --rank 64

Figures go to bench/results/serve.json and markdown tables on stdout. Work files: .bench-work/serve/.
Each configuration reports the best of its engine starts (and their median): on a shared host slow outliers
are other load. The configurations start in an order that turns each round, so none always follows another.
The engines run first, before this process loads any weights itself (see `main`). Then the weight loading
alone: in this process, round after round into the same parameters (`loading_only`), and once in each of a
few new processes into parameters not yet touched, as an engine start loads (`fresh_loads`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import cpu_model, evict_cache, log_line, warm_cache  # noqa: E402

from rvec_hub.synthetic import QWEN25_05B, write_family  # noqa: E402

TARGET_LOAD_OVERHEAD = 0.20
TARGET_LOAD_S = 1.0  # weight loading of the 0.5B bench vector, every encoding
ENGINE = {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 16, "gpu_memory_utilization": 0.3,
          "distributed_executor_backend": "uni"}
_LOAD_RE = re.compile(r"Loading weights took ([0-9.]+) seconds")
_CHECK_RE = re.compile(r"rvec: .* \(checked, kernels loaded, in ([0-9.]+) s\)")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _older_than_encoders(vector: Path) -> bool:
    """Whether a cached vector was written before the last change to rvec's encoders."""
    manifest = vector / "rvec.json"
    newest = max(p.stat().st_mtime for p in (ROOT / "rvec_hub" / "encodings").glob("*.py"))
    return manifest.exists() and manifest.stat().st_mtime < newest


def _rvec(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("rvec")), *args, "-q"], check=True)


def prepare(work: Path, rank: int) -> dict[str, Path]:
    """Family, the dense vector, its sparse and low-rank compressions, and the applied checkpoint (cached)."""
    family = work / "family"
    if not (family / "instruct").exists():
        log_line("writing the Qwen2.5-0.5B-shaped family")
        write_family(family, QWEN25_05B, seed=0)
    paths = {"base": family / "instruct", "dense": work / "vec-dense", "sparse": work / "vec-sparse",
             "lowrank": work / f"vec-lowrank-r{rank}", "quantized": work / "vec-quantized", "applied": work / "applied"}
    timings = {}
    for kind in ("sparse", "lowrank", "quantized"):  # written by the encoders of an older checkout
        if _older_than_encoders(paths[kind]):
            import shutil

            shutil.rmtree(paths[kind])
    if not paths["dense"].exists():
        _rvec("extract", "--reference", str(family / "sft"), "--tuned", str(family / "grpo"), "-o", str(paths["dense"]))
    if not paths["sparse"].exists():
        _rvec("compress", str(paths["dense"]), "-o", str(paths["sparse"]), "--method", "sparse", "--device", "cpu")
    if not paths["lowrank"].exists():
        _rvec("compress", str(paths["dense"]), "-o", str(paths["lowrank"]), "--method", "lowrank", "--rank", str(rank), "--device", "cpu")
    if not paths["quantized"].exists():
        _rvec("compress", str(paths["dense"]), "-o", str(paths["quantized"]), "--method", "quantized", "--bits", "2", "--device", "cpu")
    if paths["applied"].exists():
        import shutil

        shutil.rmtree(paths["applied"])
    warm_cache(paths["base"], paths["dense"])
    started = time.perf_counter()
    _rvec("apply", str(paths["dense"]), "--base", str(paths["base"]), "-o", str(paths["applied"]))
    timings["apply_s"] = time.perf_counter() - started
    return paths, timings


def run_engine(work: Path, name: str, llm: dict, throughput: dict) -> dict:
    """One fresh engine in its own process: start-up, weight loading, throughput."""
    spec = {"prompts": ["Question: Tom has 3 apples and buys 4 more. How many?"], "max_tokens": 16, "logprobs": 1,
            "engine": ENGINE, "runs": [{"name": name, "llm": llm, "throughput": throughput}]}
    spec_path, out_path, log_path = work / f"{name}.spec.json", work / f"{name}.out.json", work / "logs" / f"{name}.log"
    log_path.parent.mkdir(exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(spec_path), str(out_path)],
                          capture_output=True, text=True, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    wall = time.perf_counter() - started
    log = proc.stdout + proc.stderr
    log_path.write_text(log)
    result = json.loads(out_path.read_text())[0]
    if "error" in result or proc.returncode:
        raise RuntimeError(f"{name}: {result.get('error')}; see {log_path}")
    load = _LOAD_RE.search(log)
    check = _CHECK_RE.search(log)
    return {
        "startup_s": result["startup_s"],
        "startup_cpu_s": result["startup_cpu_s"],
        "tokens_per_cpu_s": result["throughput"]["tokens_per_cpu_s"],
        "load_weights_s": float(load.group(1)) if load else None,
        "rvec_prepare_s": float(check.group(1)) if check else 0.0,
        "tokens_per_s": result["throughput"]["tokens_per_s"],
        "process_wall_s": wall,
        # The host is shared: the 1-minute load average before and after says how contended a run was.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "first_tokens": result["outputs"]["base"][0]["tokens"],
    }


def loading_only(base: Path, vectors: dict[str, Path | None], repeat: int, threads: list[int]) -> dict[str, dict]:
    """Weight loading alone, in this process, as the loader does it: vLLM's safetensors iterator copied into
    preallocated bf16 parameters, bare or wrapped by rvec's merge, payloads hashed on a thread meanwhile
    (`open_specs(verify="background")`, waited for at the end). Best of `repeat` wall and CPU times per
    torch thread count (vLLM CPU loads weights with a thread per core it may use, here two, and serves with
    one), so a contended host disturbs it less than a whole engine start; the repetitions run round by
    round, every vector and mode once a round, so a slow spell of the host falls on each alike (every run's
    wall time is kept, `wall_all_s`). The wall time splits into opening and checking the vectors, reading
    the base, adding the vectors (decode, add and cast: one fused pass for one vector into bf16), and
    waiting for the hash.

    Each vector is measured twice: as a server start finds a vector rvec wrote or verified before (its
    digests recorded, `rvec_hub.digests`, so nothing is hashed), and with `RVEC_VERIFY=full`, which
    hashes every payload byte as a first open after download does ("hashed"). With one thread, a third
    time with the vector's files dropped from the page cache before each run, the base's kept
    ("vector not cached"): what a start pays to read the vector from disk."""
    import torch

    from rvec_hub.io.checkpoint import open_checkpoint
    from rvec_serving.spec import VectorSpec, open_specs

    ckpt = open_checkpoint(base)
    files = sorted(str(p) for p in base.glob("*.safetensors"))
    params = {n: torch.empty(i.shape, dtype=torch.bfloat16) for n, i in ckpt.tensors.items()}
    from rvec_hub.vector import Vector

    for vec in vectors.values():
        if vec:
            Vector.open(vec).close()  # records the digests, as extract, compress and pull do
    modes = [(name, vec, full, cold) for name, vec in vectors.items() for full, cold in (((False, False), (True, False), (False, True)) if vec else ((False, False),))]
    out = {}
    for count in threads:
        torch.set_num_threads(count)
        counted = [mode for mode in modes if count == 1 or not mode[3]]
        runs: dict[tuple, list[dict]] = {mode: [] for mode in counted}
        warm = [mode for mode in counted if not mode[2] and not mode[3]]
        for turn in range(repeat):  # round by round, every mode once a round: a slow spell of the host touches each alike
            # The warm loads first, in an order that turns each round (none always follows the same one),
            # then the hashed, then those reading the vector from disk, whose page-cache churn would
            # otherwise fall on the load after them.
            order = warm[turn % len(warm):] + warm[: turn % len(warm)] + [m for m in counted if m[2]] + [m for m in counted if m[3]]
            for name, vec, full, cold in order:
                runs[(name, vec, full, cold)].append(_load_once(files, params, base, vec, full, cold))
        for (name, vec, full, cold), done in runs.items():
            best = min(done, key=lambda r: r["wall_s"])
            label = f"{name}{', hashed' if full else ''}{', vector not cached' if cold else ''} ({count} thread{'s' if count > 1 else ''})"
            out[label] = {**best, "cpu_s": min(r["cpu_s"] for r in done), "threads": count, "hashed": full, "vector_cached": not cold,
                          "wall_all_s": [round(r["wall_s"], 3) for r in done]}
            if vec and count == 1 and not full and not cold:
                out[label]["merge_split_s"] = _merge_split(files, open_specs([VectorSpec(str(vec), 1.0)], verify="background"), params)
            log_line(f"loading only, {label}: {best['wall_s']:.2f} s wall (merge {best['merge_s']:.2f}), {out[label]['cpu_s']:.2f} s CPU")
        base_row = out[f"safetensors (base) ({count} thread{'s' if count > 1 else ''})"]
        for row in out.values():
            if row["threads"] == count:
                row["wall_vs_base"] = row["wall_s"] / base_row["wall_s"] - 1
                row["cpu_vs_base"] = row["cpu_s"] / base_row["cpu_s"] - 1
    os.environ.pop("RVEC_VERIFY", None)
    return out


def _load_once(files: list[str], params: dict, base: Path, vec: Path | None, full: bool, cold: bool) -> dict:
    """One load of the base's weights into `params`, with the vector merged (None: the base alone)."""
    from rvec_hub.arith import Survival
    from rvec_serving.spec import VectorSpec, open_specs

    if full:
        os.environ["RVEC_VERIFY"] = "full"
    else:
        os.environ.pop("RVEC_VERIFY", None)
    warm_cache(base, *([vec] if vec else []))
    if cold:
        evict_cache(vec)
    started, cpu = time.perf_counter(), time.process_time()
    opened = open_specs([VectorSpec(str(vec), 1.0)], verify="background") if vec else []
    prepared = time.perf_counter()
    kept, seconds = [Survival() for _ in opened], [0.0]
    for key, tensor in _weights(files, opened, kept, seconds):
        params[key].copy_(tensor)
    merging = seconds[0]
    loaded = time.perf_counter()
    for item in opened:
        item.vector.wait_verified()
    done = time.perf_counter()
    return {"wall_s": done - started, "cpu_s": time.process_time() - cpu, "prepare_s": prepared - started,
            "merge_s": merging, "read_and_copy_s": loaded - prepared - merging, "hash_wait_s": done - loaded}


def _weights(files: list[str], opened: list, kept: list, seconds: list[float]):
    """vLLM's safetensors iterator over `files`, wrapped as the CPU loader wraps it (`lazily_merged_weights`:
    a parameter copied from a touched tensor gets the vector added in place), the merging timed into `seconds`."""
    import torch
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    from rvec_serving.sharded import lazily_merged_weights

    weights = safetensors_weights_iterator(files, False)
    return lazily_merged_weights(weights, opened, torch.bfloat16, kept, seconds) if opened else weights


_FRESH = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_serve import load_in_new_process
print(json.dumps(load_in_new_process(sys.argv[2], sys.argv[3] or None)))
"""


def fresh_loads(base: Path, vectors: dict[str, Path | None], rounds: int) -> dict[str, dict]:
    """Weight loading as an engine start does it: in a new process, into parameters allocated and not yet
    touched (as vLLM allocates them), so every page of them is written for the first time during the load.
    Per configuration, over `rounds` rounds (each a new process per configuration, in an order that turns):
    the wall time of that first load and of a second one into the same parameters right after, the merge's
    part of each, and the minor page faults of the first (the parameters' pages and whatever else the load
    allocates): what an engine's weight loading pays beyond the loads in process."""
    names = list(vectors)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            warm_cache(base, *([vectors[name]] if vectors[name] else []))
            done = subprocess.run([sys.executable, "-c", _FRESH, str(BENCH), str(base), str(vectors[name] or "")],
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            log_line(f"new process, {name}: first load {runs[name][-1]['first_s']:.2f} s, again {runs[name][-1]['again_s']:.2f} s, "
                     f"{runs[name][-1]['minor_faults']} faults")
    out = {}
    for name, done in runs.items():
        out[name] = {key: {"min": min(r[key] for r in done), "median": statistics.median(r[key] for r in done)}
                     for key in ("first_s", "first_merge_s", "again_s", "again_merge_s", "minor_faults")}
        out[name]["runs"] = done
    return out


def load_in_new_process(base: str, vec: str | None) -> dict:
    """`fresh_loads`' measurement, run in the new process: one thread, as the engine's worker loads."""
    import resource

    import torch
    import vllm.model_executor.model_loader.weight_utils  # noqa: F401  imported before the timed load, not inside it

    import rvec_serving.sharded  # noqa: F401  likewise
    from rvec_hub.arith import Survival
    from rvec_hub.io.checkpoint import open_checkpoint
    from rvec_serving.spec import VectorSpec, open_specs

    torch.set_num_threads(1)
    files = sorted(str(p) for p in Path(base).glob("*.safetensors"))
    params = {n: torch.empty(i.shape, dtype=torch.bfloat16) for n, i in open_checkpoint(Path(base)).tensors.items()}
    out = {}
    for label in ("first", "again"):
        opened = open_specs([VectorSpec(vec, 1.0)], verify="background") if vec else []
        faults, started, seconds = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), [0.0]
        for key, tensor in _weights(files, opened, [Survival() for _ in opened], seconds):
            params[key].copy_(tensor)
        out[f"{label}_s"], out[f"{label}_merge_s"] = time.perf_counter() - started, seconds[0]
        if label == "first":
            out["minor_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        for item in opened:
            item.vector.wait_verified()
    return out


def _merge_split(files: list[str], opened: list, params: dict) -> dict[str, float]:
    """One more single-threaded load under cProfile: the merge's time by what the core does. In the
    fused path decoding, adding and casting are one pass; the profile separates what can be separated. A
    packed or quantized run of blocks reads its frames inside the kernel call, from a mapping of the
    vector's pages (zstd's compressed blocks too, through libzstd), so those reads count as the kernels'."""
    import cProfile
    import pstats

    from rvec_hub.arith import Survival

    def load() -> None:
        for key, tensor in _weights(files, opened, [Survival() for _ in opened], [0.0]):
            params[key].copy_(tensor)

    profile = cProfile.Profile()
    profile.runcall(load)
    split = {"zstd decompression": 0.0, "low-rank matmul": 0.0, "fused add + cast (C kernels)": 0.0, "payload reads (pread)": 0.0}
    for (path, _, func), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        if "ZstdDecompressor" in func:
            split["zstd decompression"] += tottime
        elif "preadv" in func:
            split["payload reads (pread)"] += tottime
        elif path.endswith("_kernels.py"):
            split["fused add + cast (C kernels)"] += tottime
        elif "matmul" in func:  # the product of low-rank factors where no AMX kernel adds them
            split["low-rank matmul"] += tottime
    return {k: round(v, 3) for k, v in split.items()}


def _best(runs: list[dict], key: str, pick=min) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return pick(values) if values else None


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per configuration, the best of its engine starts (least time, most tokens/s): on a shared host the
    slow outliers are other people's load, not the configuration."""
    base = runs["safetensors (base)"]
    base_load, base_tps, base_tpc = _best(base, "load_weights_s"), _best(base, "tokens_per_s", max), _best(base, "tokens_per_cpu_s", max)
    rows = {}
    for name, rs in runs.items():
        load, prepare_s = _best(rs, "load_weights_s"), _best(rs, "rvec_prepare_s") or 0.0
        rows[name] = {
            "startup_s": _best(rs, "startup_s"), "startup_cpu_s": _best(rs, "startup_cpu_s"), "load_weights_s": load,
            "load_weights_median_s": _best(rs, "load_weights_s", statistics.median),
            "rvec_prepare_s": prepare_s,
            "load_overhead_vs_base": (load + prepare_s) / base_load - 1,
            "tokens_per_s": _best(rs, "tokens_per_s", max), "throughput_vs_base": _best(rs, "tokens_per_s", max) / base_tps - 1,
            "tokens_per_cpu_s": _best(rs, "tokens_per_cpu_s", max),
            "throughput_per_cpu_vs_base": _best(rs, "tokens_per_cpu_s", max) / base_tpc - 1,
            "runs": rs,
        }
    return rows


def print_report(report: dict) -> None:
    """The markdown tables of a report."""
    if report["loading_only"]:
        print("| weight loading only (best of %d) | wall s | CPU s | open+check s | read+copy s | merge s | hash wait s | wall vs base | ≤ %.1f s |"
              % (report["loading_repeat"], TARGET_LOAD_S))
        print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report["loading_only"].items():
        met = "–" if name.startswith("safetensors") else ("met" if r["wall_s"] <= TARGET_LOAD_S else "missed")
        print(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['prepare_s']:.2f} | {r.get('read_and_copy_s', 0):.2f} | "
              f"{r.get('merge_s', 0):.2f} | {r.get('hash_wait_s', 0):.2f} | {r['wall_vs_base']:+.0%} | {met} |")
    splits = {name: r["merge_split_s"] for name, r in report["loading_only"].items() if "merge_split_s" in r}
    if splits:
        parts = list(next(iter(splits.values())))
        print("\n| inside the merge, one thread (profiled run) | " + " | ".join(f"{p} s" for p in parts) + " |")
        print("|---|" + "---|" * len(parts))
        for name, split in splits.items():
            print(f"| {name} | " + " | ".join(f"{split[p]:.2f}" for p in parts) + " |")
    fresh = report.get("fresh_process_loads")
    if fresh:
        print("\n| load in a new process, one thread (best / median) | first load s | its merge s | again s | its merge s | minor faults |")
        print("|---|---|---|---|---|---|")
        for name, r in fresh.items():
            print(f"| {name} | " + " | ".join(f"{r[k]['min']:.2f} / {r[k]['median']:.2f}" for k in ("first_s", "first_merge_s", "again_s", "again_merge_s"))
                  + f" | {r['minor_faults']['median']:,.0f} |")
    if not report["configs"]:
        return
    print("\n| engine (best of %d) | start-up s | weight loading s | (median) | + rvec prepare s | load vs base | tokens/s | vs base | tokens/CPU-s | vs base |" % report["repeat"])
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["configs"].items():
        median = r.get("load_weights_median_s")
        print(f"| {name} | {r['startup_s']:.1f} | {r['load_weights_s']:.2f} | {'–' if median is None else f'{median:.2f}'} | {r['rvec_prepare_s']:.2f} | {r['load_overhead_vs_base']:+.0%} | "
              f"{r['tokens_per_s']:.1f} | {r['throughput_vs_base']:+.1%} | {r['tokens_per_cpu_s']:.1f} | {r['throughput_per_cpu_vs_base']:+.1%} |")
    off = report["offline_apply"]
    print(f"\noffline route: rvec apply {off['apply_s']:.1f} s, then serve; extra disk {off['extra_disk_bytes'] / 1e9:.2f} GB")
    print("vector payloads: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in report["vector_bytes"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "serve")
    parser.add_argument("--repeat", type=int, default=1, help="Engine starts per configuration (the best is reported).")
    parser.add_argument("--rank", type=int, default=64, help="Rank of the low-rank vector.")
    parser.add_argument("--prompts", type=int, default=16, help="Throughput: concurrent prompts.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Throughput: tokens generated per prompt.")
    parser.add_argument("--loading-repeat", type=int, default=5, help="Repetitions of the in-process loading measurement (0: skip it).")
    parser.add_argument("--threads", default="1,2", help="Torch thread counts for the in-process loading measurement.")
    parser.add_argument("--fresh-rounds", type=int, default=3, help="Rounds of loads in new processes, into untouched parameters (0: skip).")
    parser.add_argument("--no-engine", action="store_true", help="Measure in-process loading only, start no engine.")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "serve.json")
    parser.add_argument("--summarize", action="store_true", help="Recompute the summary of an existing --out from its runs.")
    args = parser.parse_args()
    if args.summarize:
        report = json.loads(args.out.read_text())
        report.setdefault("loading_repeat", args.loading_repeat)
        report["configs"] = summarize({name: row["runs"] for name, row in report["configs"].items()})
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    paths, timings = prepare(args.work, args.rank)
    throughput = {"prompts": args.prompts, "max_tokens": args.max_tokens}

    def rvec(vec: Path) -> dict:
        return {"model": str(paths["base"]), "load_format": "rvec", "model_loader_extra_config": {"vectors": [{"ref": str(vec), "alpha": 1.0}]}}

    configs = {
        "safetensors (base)": {"model": str(paths["base"]), "load_format": "safetensors"},
        "rvec dense": rvec(paths["dense"]),
        "rvec packed": rvec(paths["sparse"]),
        f"rvec lowrank r{args.rank}": rvec(paths["lowrank"]),
        "rvec quantized (2 bits)": rvec(paths["quantized"]),
        "safetensors (rvec apply output)": {"model": str(paths["applied"]), "load_format": "safetensors"},
    }
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    names = list(configs)
    for i in range(0 if args.no_engine else args.repeat):
        for name in names[i % len(names):] + names[: i % len(names)]:  # an order that turns each round, as the loads in process
            llm = configs[name]
            warm_cache(paths["base"], paths["applied"], *(paths[k] for k in ("dense", "sparse", "lowrank", "quantized")))
            log_line(f"[{i + 1}/{args.repeat}] {name}")
            runs[name].append(run_engine(args.work, name.split(" (")[0].replace(" ", "-") + ("-applied" if "apply" in name else ""), llm, throughput))
    rows = summarize(runs) if not args.no_engine else {}
    # The loads in process come after the engines: an engine started by a process that has run them loaded its
    # weights about three times slower (by hand: the base 0.34 s before, 1.06 s after; cause not located).
    vectors = {"safetensors (base)": None, "rvec dense": paths["dense"], "rvec packed": paths["sparse"],
               f"rvec lowrank r{args.rank}": paths["lowrank"], "rvec quantized (2 bits)": paths["quantized"]}
    loading = loading_only(paths["base"], vectors, args.loading_repeat, [int(t) for t in args.threads.split(",")]) if args.loading_repeat else {}
    fresh = fresh_loads(paths["base"], vectors, args.fresh_rounds) if args.fresh_rounds else {}
    payload = {k: _du(p) for k, p in paths.items() if k != "base"}
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "model": "Qwen2.5-0.5B shapes (synthetic, bf16)", "engine": ENGINE, "throughput": throughput, "repeat": args.repeat,
        "target_load_overhead": TARGET_LOAD_OVERHEAD,
        "loading_repeat": args.loading_repeat,
        "loading_only": loading,
        "fresh_process_loads": fresh,
        "configs": rows,
        "offline_apply": {"apply_s": timings["apply_s"], "extra_disk_bytes": payload["applied"],
                          "base_disk_bytes": _du(paths["base"])},
        "vector_bytes": {k: payload[k] for k in ("dense", "sparse", "lowrank", "quantized")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
