"""Time rank-64 compression and apply on a CUDA device against the CPU, on Qwen2.5-0.5B-shaped donors.

One short self-contained run for a machine with a GPU: it needs torch with CUDA and this repository's
own dependencies (pydantic, safetensors, tqdm, jinja2, numpy), no vLLM, no transformers, no network.
It builds the SFT/GRPO donors from `rvec_hub.synthetic` (weights only), extracts the bf16 vector, then
times `compress --method lowrank --rank 64` and `apply` on cuda and on cpu, checks that both devices
give the same result within bf16 rounding, and writes everything to `$OUT/gpu_check.json`.

    python bench/gpu_check.py                      # on the GPU machine, < 4 minutes
    python bench/gpu_check.py --device cpu --small # local check of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _write_weights(directory: Path, shapes, role: str) -> Path:
    """One family member as config.json + safetensors (no tokenizer: nothing here runs the model)."""
    import torch

    from rvec_hub.io.safetensors_io import ShardWriter
    from rvec_hub.synthetic import family_tensors, tensor_shapes

    directory.mkdir(parents=True, exist_ok=True)
    plan = [(n, s, torch.bfloat16) for n, s in tensor_shapes(shapes).items()]
    writer = ShardWriter(directory, "model", 2 * 1024**3, {"format": "pt"}, plan)
    for name, tensor in family_tensors(shapes, 0, role):
        writer.add(name, tensor)
    writer.finish()
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": shapes.hidden_size,
        "num_hidden_layers": shapes.num_hidden_layers, "num_attention_heads": shapes.num_attention_heads,
        "num_key_value_heads": shapes.num_key_value_heads, "intermediate_size": shapes.intermediate_size,
        "vocab_size": shapes.vocab_size, "tie_word_embeddings": shapes.tie_word_embeddings, "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _timed(results: dict, label: str, fn):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results["timings_s"][label] = round(time.perf_counter() - start, 3)
    print(f"{label}: {results['timings_s'][label]:.2f} s", flush=True)
    return value


def run(device: str, small: bool, work: Path, rank: int) -> dict:
    import torch

    from rvec_hub import Vector, apply_vectors, compress, extract, open_checkpoint
    from rvec_hub.synthetic import QWEN25_05B, TINY

    shapes = TINY if small else QWEN25_05B
    results: dict = {"shapes": "tiny" if small else "qwen2.5-0.5b", "rank": rank, "device": device, "timings_s": {}}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    donors = {role: _timed(results, f"build {role}", lambda r=role: _write_weights(work / r, shapes, r)) for role in ("sft", "grpo")}
    vec = work / "vec"
    _timed(results, "extract", lambda: extract(donors["sft"], donors["grpo"], vec, quiet=True))
    runs = {}
    for dev in dict.fromkeys([device, "cpu"]):
        out = work / f"r{rank}-{dev.replace(':', '')}"
        res = _timed(results, f"compress rank {rank} on {dev}", lambda o=out, d=dev: compress(Vector.open(vec), o, method="lowrank", rank=rank, device=d, quiet=True))
        runs[dev] = res
        results[f"compress_{dev}"] = {k: res.manifest.compression[k] for k in ("payload_bytes", "ratio_to_dense", "rel_error", "energy")}
    applied = {}
    for dev in dict.fromkeys([device, "cpu"]):
        out = work / f"merged-{dev.replace(':', '')}"
        _timed(results, f"apply on {dev}", lambda o=out, d=dev: apply_vectors([(Vector.open(runs[device].path), 1.0)], open_checkpoint(donors["sft"]), o, quiet=True, device=d))
        applied[dev] = out
    if device != "cpu":
        a, b = open_checkpoint(applied[device]), open_checkpoint(applied["cpu"])
        worst = max((a.read_rows(n).float() - b.read_rows(n).float()).abs().max().item() for n in a.tensors)
        results["apply_cuda_vs_cpu_max_abs_diff"] = worst
        results["compress_rel_error_cuda_minus_cpu"] = results[f"compress_{device}"]["rel_error"] - results["compress_cpu"]["rel_error"]
        t = results["timings_s"]
        results["speedup"] = {
            "compress": t[f"compress rank {rank} on cpu"] / t[f"compress rank {rank} on {device}"],
            "apply": t["apply on cpu"] / t[f"apply on {device}"],
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to compare with the CPU (default cuda)")
    parser.add_argument("--small", action="store_true", help="tiny shapes, to check the script itself")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = parser.parse_args(argv)
    report: dict = {"python": platform.python_version(), "cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="rvec-gpu-check-"))
    start = time.perf_counter()
    try:
        import torch

        report.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(), torch_threads=torch.get_num_threads())
        report.update(run(args.device, args.small, work, args.rank))
        report["ok"] = True
    except Exception as exc:  # the JSON must come back even when something is missing on the machine
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        print(report["traceback"], file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} (ok={report['ok']}, {report['total_s']} s)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
