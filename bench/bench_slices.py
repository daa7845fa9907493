"""Benchmark a tensor-parallel rank's slices of the row-parallel layers, merged as the CPU loader merges them.

Under tensor parallelism vLLM's row-parallel weight loaders (`o_proj`, `down_proj`) narrow each checkpoint
tensor along dim 1; `rvec_serving.sharded.merge_slice` then merges that slice. On the Qwen2.5-0.5B-shaped
family and the vectors `bench_serve.py` writes (.bench-work/serve/, built by it when missing), one process on
one torch thread times, best of `--repeat`, the slices rank 1 of `--ranks` keeps of all 48 such tensors:

- through `merge_slice` as the loader calls it: one vector into bf16 goes through the fused kernels over
  whole rows and keeps the slice;
- through the general path (float32 rows, only the slice added and cast), which several vectors at once or
  another serving dtype take, by turning the fused path off for the measurement.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_slices.py

Figures go to bench/results/slices.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import log_line, warm_cache  # noqa: E402

VECTORS = {"dense": "vec-dense", "packed": "vec-sparse", "low-rank r64": "vec-lowrank-r64", "quantized 2-bit": "vec-quantized"}
ROW_PARALLEL = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


@contextmanager
def _general_path():
    """The fused kernels reported as not applying, so every slice takes the general path."""
    from rvec_hub import fused

    applies = fused.applies
    fused.applies = lambda *args, **kwargs: False
    try:
        yield
    finally:
        fused.applies = applies


def time_slices(base_dir: Path, vector_dir: Path, ranks: int, repeat: int) -> dict:
    """Best-of-`repeat` seconds for rank 1's dim-1 slices of every row-parallel tensor, both paths."""
    import torch

    from rvec_hub.arith import Survival
    from rvec_hub.io.checkpoint import open_checkpoint
    from rvec_hub.vector import Vector
    from rvec_serving.sharded import merge_slice
    from rvec_serving.spec import OpenedVector

    torch.set_num_threads(1)
    base = open_checkpoint(base_dir)
    names = [n for n in base.tensors if n.endswith(ROW_PARALLEL)]
    vector = [OpenedVector(vector_dir.name, Vector.open(vector_dir), 1.0)]

    def one_pass() -> float:
        began = time.perf_counter()
        for name in names:
            rows = base.read_rows(name)
            width = rows.shape[1] // ranks
            merge_slice(name, rows, vector, torch.bfloat16, [Survival()], 1, width, width)
        return time.perf_counter() - began

    warm_cache(base_dir, vector_dir)
    fused_s = min(one_pass() for _ in range(repeat))
    with _general_path():
        general_s = min(one_pass() for _ in range(repeat))
    vector[0].vector.close()
    base.close()
    return {"tensors": len(names), "fused_s": round(fused_s, 3), "general_s": round(general_s, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "serve")
    parser.add_argument("--ranks", type=int, default=2, help="tensor-parallel size; rank 1's slices are timed")
    parser.add_argument("--repeat", type=int, default=5, help="passes per path (the fastest is reported)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "slices.json")
    args = parser.parse_args(argv)
    base_dir = args.work / "family" / "instruct"
    if not all((args.work / d / "rvec.json").exists() for d in VECTORS.values()):
        import bench_serve

        log_line("writing the family and vectors bench_serve.py uses")
        bench_serve.prepare(args.work, 64)
    load_before = os.getloadavg()
    rows = {}
    for label, folder in VECTORS.items():
        rows[label] = time_slices(base_dir, args.work / folder, args.ranks, args.repeat)
        log_line(f"{label}: fused {rows[label]['fused_s']:.3f} s, general {rows[label]['general_s']:.3f} s")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(), "torch_threads": 1,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "ranks": args.ranks, "repeat": args.repeat,
              "vectors": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"| vector | row-parallel slices of rank 1 of {args.ranks} (tensors) | fused kernels, whole rows (s) | general path (s) |")
    print("|---|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['tensors']} | {r['fused_s']:.2f} | {r['general_s']:.2f} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
