"""Benchmark serving past one process: tensor-parallel merging per rank, and a live swap against a restart.

On the synthetic Qwen2.5-0.5B-shaped family (bf16, as bench_serve.py uses) it records:

- tensor parallel: one engine at TP=1 and one at TP=2 (one core per rank, `VLLM_CPU_OMP_THREADS_BIND=0|1`),
  each with `--load-format rvec` and the dense vector; per rank, the seconds the loader spent adding the
  vector (it logs them) and vLLM's weight-loading time; whether the greedy tokens agree;
- live swap: `rvec serve --admin-token-file` with the dense vector, the seconds from launch until
  `/v1/models` answers (a cold start), then three swaps (alpha 0.5, the lossless vector, back to dense at 1)
  with the phases each one took.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_parallel.py

Figures go to bench/results/parallel.json and a summary on stdout. Work files: .bench-work/serve/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import log_line, warm_cache  # noqa: E402

from rvec_hub.procs import free_port  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, write_family  # noqa: E402

ENGINE = {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 16, "dtype": "float32"}
PROMPTS = ["Question: Tom has 3 apples and buys 4 more.", "The quick brown fox", "What is the capital of France?"]
_RANK_RE = re.compile(r"rvec: tensor-parallel rank (\d+) of (\d+) spent ([0-9.]+) s adding vectors")
_LOAD_RE = re.compile(r"(?:Worker_TP(\d+).*)?Loading weights took ([0-9.]+) seconds")


def _rvec(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("rvec")), *args, "-q"], check=True)


def prepare(work: Path) -> dict[str, Path]:
    """The family, its dense vector and the lossless compression of it (kept between runs)."""
    family = work / "family"
    if not (family / "instruct").exists():
        log_line("writing the Qwen2.5-0.5B-shaped family")
        write_family(family, QWEN25_05B, seed=0)
    paths = {"base": family / "instruct", "dense": work / "vec-dense", "lossless": work / "vec-lossless"}
    if not paths["dense"].exists():
        _rvec("extract", "--reference", str(family / "sft"), "--tuned", str(family / "grpo"), "-o", str(paths["dense"]))
    if not paths["lossless"].exists():
        _rvec("compress", str(paths["dense"]), "-o", str(paths["lossless"]))
    warm_cache(paths["base"], paths["dense"], paths["lossless"])
    return paths


def tensor_parallel(paths: dict[str, Path], work: Path, size: int) -> dict:
    """One engine at tensor-parallel `size`; the loader's per-rank merge seconds and the greedy tokens."""
    llm = {"model": str(paths["base"]), "load_format": "rvec",
           "model_loader_extra_config": {"vectors": [{"ref": str(paths["dense"]), "alpha": 1.0}]}}
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    if size > 1:
        llm |= {"tensor_parallel_size": size, "distributed_executor_backend": "mp"}
        env |= {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(i) for i in range(size)), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    else:
        llm |= {"distributed_executor_backend": "uni"}
    spec = {"prompts": PROMPTS, "max_tokens": 16, "logprobs": 1, "engine": ENGINE, "runs": [{"name": f"tp{size}", "llm": llm}]}
    spec_path, out_path = work / f"tp{size}.json", work / f"tp{size}-out.json"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(spec_path), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=1800)
    log = proc.stdout + proc.stderr
    (work / f"tp{size}.log").write_text(log)
    result = json.loads(out_path.read_text())[0]
    if proc.returncode or "error" in result:
        raise SystemExit(f"TP={size} failed: {result.get('error') or log[-2000:]}")
    ranks = {int(r): float(s) for r, _, s in _RANK_RE.findall(log)}
    return {"tensor_parallel_size": size, "wall_s": round(time.perf_counter() - started, 2),
            "merge_s_per_rank": [ranks[r] for r in sorted(ranks)],
            "weight_loading_s": [float(s) for _, s in _LOAD_RE.findall(log)],
            "tokens": [o["tokens"] for o in result["outputs"]["base"]], "startup_s": round(result["startup_s"], 2)}


def live_swap(paths: dict[str, Path], work: Path) -> dict:
    """Cold start of `rvec serve`, then three live swaps, timed."""
    token = work / "admin.token"
    token.write_text(secrets.token_hex(24))
    token.chmod(0o600)
    port = free_port()
    rvec = str(Path(sys.executable).with_name("rvec"))
    cmd = [rvec, "serve", "--base", str(paths["base"]), "--vector", str(paths["dense"]), "--port", str(port),
           "--admin-token-file", str(token), "--", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "16"]
    log = open(work / "swap-server.log", "w")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
                            start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"rvec serve exited: see {work / 'swap-server.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        cold = time.perf_counter() - started
        swaps = []
        for spec in (f"{paths['dense']}:0.5", str(paths["lossless"]), f"{paths['dense']}:1"):
            began = time.perf_counter()
            out = subprocess.run([rvec, "swap", "--server", f"http://127.0.0.1:{port}", "--vector", spec,
                                  "--token-file", str(token), "--json"], capture_output=True, text=True, check=True)
            answer = json.loads(out.stdout)
            swaps.append({"to": Path(spec.split(":")[0]).name + (f" alpha {spec.split(':')[1]}" if ":" in spec else ""),
                          "server_s": answer["seconds"], "client_wall_s": round(time.perf_counter() - began, 2)})
        return {"cold_start_s": round(cold, 2), "swaps": swaps}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "serve")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "parallel.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    paths = prepare(args.work)
    log_line("tensor parallel 1")
    tp1 = tensor_parallel(paths, args.work, 1)
    log_line("tensor parallel 2")
    tp2 = tensor_parallel(paths, args.work, 2)
    log_line("live swap")
    swap = live_swap(paths, args.work)
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "tensor_parallel": [tp1, tp2], "greedy_tokens_equal": tp1["tokens"] == tp2["tokens"], "live_swap": swap,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"TP=1: merge {tp1['merge_s_per_rank']} s; TP=2: merge per rank {tp2['merge_s_per_rank']} s; "
          f"greedy tokens equal: {result['greedy_tokens_equal']}")
    print(f"cold start {swap['cold_start_s']} s; swaps: " + ", ".join(f"{s['to']} {s['server_s']['total']} s" for s in swap["swaps"]))
    print(f"load average before {load_before[0]:.1f}, after {result['load_average_after'][0]:.1f}")


if __name__ == "__main__":
    main()
