"""What a low-rank vector's load-time add costs at the least on this machine, beside a dense vector's add.

A rank-r vector adds B·A to every tensor it touches: r multiply-adds per weight, whose product must be
computed at load time; a dense vector adds a stored delta, whose cost is memory traffic. On the Qwen2.5-0.5B
bench shapes (every matrix, the embedding included: 494 million weights), one and two threads:

- torch's product: `torch.matmul` of bf16 factors (oneDNN) into a buffer of one chunk reused for every
  chunk, so the product never leaves the cache: the arithmetic alone, by the field's library, on torch's
  threads;
- rvec's low-rank add, arithmetic only: the fused kernel (`rvec_hub.fused.add_lowrank`, product, rounding,
  add, error sums) reading and writing one reused chunk;
- rvec's low-rank add: the same into every tensor's own rows from its own base rows, as a load does;
- rvec's dense add: the fused dense kernel (`add_dense`) over base, delta and output of the same size.

Every tensor's memory is written before the first round, so no round pays a first touch; two threads take
a tensor's rows as the loader spreads them (its chunks in one run a thread, a tensor of one chunk on one).
A load also reads the base (and a dense vector's payload) from the page cache: bench/bench_serve.py
measures whole loads.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_lowrank_floor.py --rank 64 --rounds 6

Figures go to bench/results/lowrank-floor.json (or --out) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import cpu_model, log_line  # noqa: E402

from rvec_hub import fused  # noqa: E402
from rvec_hub.arith import CHUNK_ELEMENTS, row_chunks  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, tensor_shapes  # noqa: E402
from rvec_serving.merge import _runs  # noqa: E402


def _bf16(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.randn(*shape, generator=generator) * 0.01).to(torch.bfloat16)


def _spread(shape: tuple[int, int], threads: int) -> list[tuple[int, int]]:
    """A tensor's rows as the loader spreads them over threads (`rvec_serving.merge.fused_into`): its chunks
    joined into one run per thread, a tensor of one chunk on one thread."""
    chunks = row_chunks(shape)
    return _runs(chunks, min(len(chunks), threads))


def _rounds(label: str, one: Callable[[], None], rounds: int) -> dict[str, float]:
    one()  # warm: kernels loaded, pools started
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        one()
        times.append(time.perf_counter() - started)
    log_line(f"{label}: best {min(times):.3f} s, median {statistics.median(times):.3f} s")
    return {"best_s": min(times), "median_s": statistics.median(times), "runs_s": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="timed passes over every tensor, after one untimed")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "lowrank-floor.json")
    args = parser.parse_args()
    if not fused.available():
        parser.error("rvec's compiled kernels are not built here (pip install -e . builds them)")
    gen = torch.Generator().manual_seed(0)
    shapes = [s for s in tensor_shapes(QWEN25_05B).values() if len(s) == 2]
    weights = sum(r * c for r, c in shapes)
    log_line(f"{len(shapes)} matrices, {weights / 1e6:.0f} million weights, rank {args.rank}: writing base, delta and output")
    factors = {}
    for s in set(shapes):
        factors[s] = (_bf16(s[0], args.rank, generator=gen), _bf16(args.rank, s[1], generator=gen))
    pairs = {s: fused.pair_ranks(a) for s, (_, a) in factors.items()}
    bases = [_bf16(*s, generator=gen) for s in shapes]
    deltas = [_bf16(*s, generator=gen) for s in shapes]
    outs = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    chunk = torch.zeros(CHUNK_ELEMENTS, dtype=torch.bfloat16)
    own = threading.local()  # each thread's reused chunk
    probe = fused.add_lowrank(outs[0], factors[shapes[0]][0], pairs[shapes[0]], 1.0, bases[0])
    if probe is None:
        parser.error(f"rvec's low-rank kernel does not run on this CPU at rank {args.rank} (it needs AMX or AVX512-BF16)")

    def torch_product() -> None:
        for s in shapes:
            b, a = factors[s]
            for lo, hi in row_chunks(s):
                torch.matmul(b[lo:hi], a, out=chunk[: (hi - lo) * s[1]].view(hi - lo, s[1]))

    def kernel_in_cache(lo: int, hi: int, s: tuple[int, int]) -> None:
        b = factors[s][0]
        if not hasattr(own, "chunk"):
            own.chunk = torch.zeros(CHUNK_ELEMENTS, dtype=torch.bfloat16)
        step = max(1, CHUNK_ELEMENTS // s[1])
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            rows = own.chunk[: (stop - start) * s[1]].view(stop - start, s[1])
            fused.add_lowrank(rows, b[start:stop], pairs[s], 1.0, rows)

    def kernel(lo: int, hi: int, i: int) -> None:
        s = shapes[i]
        fused.add_lowrank(outs[i][lo:hi], factors[s][0][lo:hi], pairs[s], 1.0, bases[i][lo:hi])

    def dense(lo: int, hi: int, i: int) -> None:
        fused.add_dense(outs[i][lo:hi], deltas[i][lo:hi], 1.0, base=bases[i][lo:hi])

    results: dict[str, dict[str, dict[str, float]]] = {}
    for threads in (1, 2):
        pool = ThreadPoolExecutor(max_workers=threads)

        def split(work: Callable[[int, int, object], None], key: Callable[[int], object]) -> Callable[[], None]:
            def one() -> None:
                for i, s in enumerate(shapes):
                    runs = _spread(s, threads)
                    if len(runs) == 1:
                        work(0, s[0], key(i))
                    else:
                        list(pool.map(lambda span: work(span[0], span[1], key(i)), runs))
            return one

        torch.set_num_threads(threads)
        results[f"{threads}_threads"] = {
            "torch_product": _rounds(f"{threads} thread(s), torch's product", torch_product, args.rounds),
            "lowrank_in_cache": _rounds(f"{threads} thread(s), rvec low-rank, in cache", split(kernel_in_cache, lambda i: shapes[i]), args.rounds),
            "lowrank": _rounds(f"{threads} thread(s), rvec low-rank", split(kernel, lambda i: i), args.rounds),
            "dense": _rounds(f"{threads} thread(s), rvec dense", split(dense, lambda i: i), args.rounds),
        }
        pool.shutdown()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(), "torch": torch.__version__},
        "shapes": "Qwen2.5-0.5B, every matrix",
        "weights": weights,
        "rank": args.rank,
        "multiply_adds": weights * args.rank,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| rank {args.rank}, {weights / 1e6:.0f} M weights | 1 thread, best (median) s | 2 threads |\n|---|---:|---:|")
    labels = {"torch_product": "torch's product alone, in cache", "lowrank_in_cache": "rvec low-rank add, in cache",
              "lowrank": "rvec low-rank add", "dense": "rvec dense add"}
    for key, label in labels.items():
        cells = [f"{results[t][key]['best_s']:.3f} ({results[t][key]['median_s']:.3f})" for t in ("1_threads", "2_threads")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
