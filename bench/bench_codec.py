"""Benchmark rvec's lossless encodings against zstd and ZipNN on one delta: size, time, exactness.

On the Qwen2.5-0.5B-shaped bench donors (`rvec_hub.synthetic`, the family `bench_compress.py` builds),
`rvec extract` writes the dense bf16 vector; then, tensor by tensor on the same bf16 deltas, in one
process on one torch thread, it encodes and decodes with:

- `packed`, rvec's default lossless encoding (`rvec compress`);
- `sparse`, the bitmask/gaps encoding rvec 0.1.0 wrote;
- zstd level 3 on the raw bf16 bytes (`zstandard`);
- ZipNN (PyPI `zipnn`, `bytearray_dtype="bfloat16"`, one thread), the lossless codec built for model weights;
- `dense`, the bf16 delta itself, as the decode-speed reference.

Every decoder returns float32, as `Vector.decode_rows` does, and decodes the row chunks the streaming
passes ask for (`row_chunks`); the output is compared bit for bit with the dense delta. Times are wall
and CPU (process) seconds; a decode time is the best of `--repeat` passes (tensor by tensor: each tensor's
fastest pass, summed; a whole vector: its fastest pass), since on a shared host the slow passes are other
load, as bench_serve's and bench_apply's best-of figures; the JSON has the mean of the passes beside it.
It also times `rvec compress` (lossless) as a command, and decoding both written vectors through
`Vector.decode_rows` from a warm page cache.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_codec.py             # 0.5B shapes
    .venv/bin/python bench/bench_codec.py --size tiny                            # smoke run
    .venv/bin/python bench/bench_codec.py --vector DIR --label smollm2            # any bf16 vector

Figures go to bench/results/codec.json (codec-<size or label>.json for other runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from _measure import cpu_model, donor_family, log_line, measure, warm_cache  # noqa: E402

from rvec_hub import Vector  # noqa: E402
from rvec_hub.arith import row_chunks  # noqa: E402
from rvec_hub.encodings import ENCODINGS  # noqa: E402
from rvec_hub.manifest import TensorEntry  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, TINY, Shapes  # noqa: E402

SIZES: dict[str, Shapes] = {"tiny": TINY, "0.5b": QWEN25_05B}
TARGET_RATIO_TO_ZIPNN = 0.9
TARGET_DECODE_GBPS = 1.0


class _Stored:
    """The Payload protocol over encoded tensors held in memory."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        t = self.tensors[key]
        return t if not t.dim() else t[start:stop]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype


class _Clock:
    """Accumulated wall and CPU seconds of the timed blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def time(self, fn: Callable[[], object]) -> object:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


def _rvec_codec(name: str):
    codec = ENCODINGS[name]

    def encode(delta: torch.Tensor):
        encoded = codec.encode(delta.float(), dtype=torch.bfloat16)
        entry = TensorEntry(name="t", shape=tuple(delta.shape), dtype="bfloat16", encoding=name,
                            keys={r: r for r in encoded.stored}, params=encoded.params)
        return (entry, _Stored({r: t.contiguous() for r, t in encoded.stored.items()})), encoded.nbytes

    def decode(blob, start: int, stop: int) -> torch.Tensor:
        entry, stored = blob
        return codec.decode_rows(entry, stored, start, stop)

    return encode, decode


def _chunks(delta: torch.Tensor) -> list[tuple[int, int]]:
    return row_chunks(tuple(delta.shape)) if delta.dim() else [(0, 1)]


def _rows(delta: torch.Tensor) -> torch.Tensor:
    return delta.reshape(1) if not delta.dim() else delta


def bench_tensors(vector: Vector, repeat: int) -> dict:
    """Every codec over every changed tensor of a bf16 vector: bytes, encode and decode times, exactness."""
    import zipnn
    import zstandard

    torch.set_num_threads(1)
    zst_c, zst_d = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    zn = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    names = ("packed", "sparse", "zstd-3", "zipnn", "dense")
    size = dict.fromkeys(names, 0)
    enc = {n: _Clock() for n in names}
    dec = {n: _Clock() for n in names}  # all passes (their mean is reported beside the best)
    best = {n: _Clock() for n in names}  # each tensor's fastest pass
    exact = dict.fromkeys(names, True)
    rvec = {n: _rvec_codec(n) for n in ("packed", "sparse")}
    warm = rvec["packed"][0](torch.ones(4, 4, dtype=torch.bfloat16))[0]
    rvec["packed"][1](warm, 0, 4)  # loads (or compiles, once) the decoder outside the timed passes
    dense_bytes = 0
    tensors = [e for e in vector.manifest.tensors if e.encoding != "zero"]
    for i, entry in enumerate(tensors):
        delta = _rows(vector.decode(entry.name).to(torch.bfloat16))
        reference = delta.float()
        chunks = _chunks(delta)
        index = {c: j for j, c in enumerate(chunks)}
        dense_bytes += delta.numel() * 2
        for name in names:
            if name in rvec:
                blob, nbytes = enc[name].time(lambda: rvec[name][0](delta))

                def one(a, b, blob=blob, name=name):
                    return rvec[name][1](blob, a, b)
            elif name == "zstd-3":
                blob = enc[name].time(lambda: [zst_c.compress(delta[a:b].contiguous().view(torch.uint8).numpy().tobytes()) for a, b in chunks])
                nbytes = sum(len(f) for f in blob)

                def one(a, b, blob=blob):
                    raw = bytearray(zst_d.decompress(blob[index[(a, b)]]))
                    return torch.frombuffer(raw, dtype=torch.bfloat16).reshape(b - a, *delta.shape[1:]).float()
            elif name == "zipnn":
                blob = enc[name].time(lambda: [bytes(zn.compress(delta[a:b].contiguous().view(torch.uint8).numpy().tobytes())) for a, b in chunks])
                nbytes = sum(len(f) for f in blob)

                def one(a, b, blob=blob):
                    raw = bytearray(zn.decompress(blob[index[(a, b)]]))
                    return torch.frombuffer(raw, dtype=torch.bfloat16).reshape(b - a, *delta.shape[1:]).float()
            else:
                nbytes = delta.numel() * 2

                def one(a, b):
                    return delta[a:b].float()
            size[name] += nbytes
            passes = [_Clock() for _ in range(repeat)]
            for r, clock in enumerate(passes):
                parts = clock.time(lambda: [one(a, b) for a, b in chunks])
                if r == 0:
                    decoded = torch.cat([p.reshape(-1) for p in parts])
                    exact[name] &= torch.equal(decoded.view(torch.int32), reference.reshape(-1).view(torch.int32))
                del parts
            for total, pick in ((dec[name], sum), (best[name], min)):
                total.wall += pick(c.wall for c in passes)
                total.cpu += pick(c.cpu for c in passes)
        if (i + 1) % 50 == 0 or i + 1 == len(tensors):
            log_line(f"  {i + 1}/{len(tensors)} tensors; bytes so far: " + ", ".join(f"{n} {size[n] / 1e6:.1f} MB" for n in names))
    out = {}
    for n in names:
        out[n] = {
            "bytes": size[n],
            "share_of_dense": size[n] / dense_bytes,
            "encode_wall_s": round(enc[n].wall, 3),
            "encode_cpu_s": round(enc[n].cpu, 3),
            "decode_wall_s": round(best[n].wall, 3),
            "decode_cpu_s": round(best[n].cpu, 3),
            "decode_gbps_wall": dense_bytes / best[n].wall / 1e9,
            "decode_gbps_cpu": dense_bytes / best[n].cpu / 1e9,
            "decode_mean_wall_s": round(dec[n].wall / repeat, 3),
            "decode_mean_cpu_s": round(dec[n].cpu / repeat, 3),
            "decode_mean_gbps_cpu": dense_bytes / (dec[n].cpu / repeat) / 1e9,
            "bit_exact": exact[n],
        }
    return {"dense_bytes": dense_bytes, "tensors": len(tensors), "codecs": out}


def vector_decode(path: Path, repeat: int) -> dict:
    """Decoding a written vector through `Vector.decode_rows`, chunk by chunk, from a warm page cache: its
    fastest of `repeat` passes, and their mean."""
    torch.set_num_threads(1)
    vec = Vector.open(path)
    tensors = [e for e in vec.manifest.tensors if e.encoding != "zero"]
    passes = []
    dense = 0
    for r in range(repeat + 1):  # the first pass warms the page cache and compiles the decoder
        c = _Clock()
        for e in tensors:
            for a, b in row_chunks(tuple(e.shape)) if e.shape else [(0, 1)]:
                c.time(lambda: vec.decode_rows(e.name, a, b))
            if r == 1:
                dense += (e.shape[0] if e.shape else 1) * (torch.Size(e.shape[1:]).numel() if e.shape else 1) * 2
        if r:
            passes.append(c)
    vec.close()
    wall, cpu = min(c.wall for c in passes), min(c.cpu for c in passes)
    mean_wall, mean_cpu = sum(c.wall for c in passes) / repeat, sum(c.cpu for c in passes) / repeat
    return {"payload_bytes": sum(p.stat().st_size for p in path.rglob("*.safetensors")),
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "gbps_wall": dense / wall / 1e9, "gbps_cpu": dense / cpu / 1e9,
            "mean_wall_s": round(mean_wall, 3), "mean_cpu_s": round(mean_cpu, 3), "mean_gbps_cpu": dense / mean_cpu / 1e9}


def run(vector_dir: Path, work: Path, repeat: int) -> dict:
    rvec = str(ROOT / ".venv" / "bin" / "rvec")
    packed_dir = work / "vec-packed"
    shutil.rmtree(packed_dir, ignore_errors=True)
    warm_cache(vector_dir)
    log_line("rvec compress (lossless) as a command")
    cmd = measure("rvec compress", [rvec, "compress", str(vector_dir), "-o", str(packed_dir), "--quiet"], log=work / "logs" / "compress.log")
    log_line(f"  {cmd.wall_s:.1f} s wall, peak RSS {cmd.peak_rss_gb:.2f} GB")
    log_line("codecs tensor by tensor")
    codecs = bench_tensors(Vector.open(vector_dir), repeat)
    log_line("decoding the written vectors through Vector.decode_rows")
    reads = {"dense": vector_decode(vector_dir, repeat), "packed": vector_decode(packed_dir, repeat)}
    c = codecs["codecs"]
    return {
        "vector": str(vector_dir),
        **codecs,
        "rvec_compress_command": cmd.to_dict(),
        "vector_decode": reads,
        "targets": {
            "packed_over_zipnn": c["packed"]["bytes"] / c["zipnn"]["bytes"],
            "packed_over_zipnn_met": c["packed"]["bytes"] <= TARGET_RATIO_TO_ZIPNN * c["zipnn"]["bytes"],
            "packed_bit_exact": c["packed"]["bit_exact"],
            "packed_decode_gbps_cpu": c["packed"]["decode_gbps_cpu"],
            "packed_decode_at_least_1gbps_cpu": c["packed"]["decode_gbps_cpu"] >= TARGET_DECODE_GBPS,
            "packed_vector_decode_over_dense_cpu": reads["dense"]["gbps_cpu"] / reads["packed"]["gbps_cpu"],
        },
    }


def markdown(r: dict) -> str:
    """The table the READMEs take."""
    lines = [
        "| codec | size (MB) | share of dense | encode (s, wall / CPU) | decode, fastest pass (s, wall / CPU) | decode GB/s (wall / CPU) | GB/s, mean pass (CPU) | bit-exact |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for n, c in r["codecs"].items():
        lines.append(
            f"| {n} | {c['bytes'] / 1e6:.1f} | {c['share_of_dense']:.1%} | {c['encode_wall_s']:.1f} / {c['encode_cpu_s']:.1f} | "
            f"{c['decode_wall_s']:.2f} / {c['decode_cpu_s']:.2f} | {c['decode_gbps_wall']:.2f} / {c['decode_gbps_cpu']:.2f} | {c['decode_mean_gbps_cpu']:.2f} | {'yes' if c['bit_exact'] else 'NO'} |"
        )
    t, v, cmd = r["targets"], r["vector_decode"], r["rvec_compress_command"]
    lines += [
        "",
        f"packed / ZipNN bytes: {t['packed_over_zipnn']:.3f} (target ≤ {TARGET_RATIO_TO_ZIPNN}: {'met' if t['packed_over_zipnn_met'] else 'missed'}). "
        f"`rvec compress` (lossless) took {cmd['wall_s']:.1f} s wall, {cmd['user_s'] + cmd['sys_s']:.1f} s CPU, peak RSS {cmd['peak_rss_gb']:.2f} GB.",
        "",
        "| vector read through `Vector.decode_rows` | payload (MB) | decode, fastest pass (s, wall / CPU) | GB/s (wall / CPU) | GB/s, mean pass (CPU) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for n, x in v.items():
        lines.append(f"| {n} | {x['payload_bytes'] / 1e6:.1f} | {x['wall_s']:.2f} / {x['cpu_s']:.2f} | {x['gbps_wall']:.2f} / {x['gbps_cpu']:.2f} | {x['mean_gbps_cpu']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", choices=list(SIZES))
    parser.add_argument("--vector", type=Path, help="a bf16 vector to measure instead of the synthetic family's")
    parser.add_argument("--label", help="name of the results file for --vector (codec-LABEL.json)")
    parser.add_argument("--repeat", type=int, default=3, help="decode passes (the fastest is reported, the mean beside it)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work")
    args = parser.parse_args(argv)
    import zipnn  # noqa: F401  (fail early: the comparison needs it)

    from rvec_hub import __version__

    start = time.perf_counter()
    load_start = os.getloadavg()
    if args.vector:
        work = args.work / f"codec-{args.label or 'vector'}"
        vector_dir = args.vector
    else:
        work = args.work / f"codec-{args.size.replace('.', '')}"
        donors = donor_family(work, SIZES[args.size], ("sft", "grpo"))
        vector_dir = work / "vec-bf16"
        if not (vector_dir / "rvec.json").exists():
            rvec = str(ROOT / ".venv" / "bin" / "rvec")
            measure("rvec extract", [rvec, "extract", "--reference", str(donors["sft"]), "--tuned", str(donors["grpo"]), "-o", str(vector_dir), "--quiet"], log=work / "logs" / "extract.log")
    work.mkdir(parents=True, exist_ok=True)
    results = run(vector_dir, work, args.repeat)
    results["environment"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": 1,
        "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rvec": __version__,
        "zipnn": _version("zipnn"),
        "zstandard": _version("zstandard"),
        "page_cache": "warm",
        "total_s": time.perf_counter() - start,
    }
    name = "codec" if not args.vector and args.size == "0.5b" else f"codec-{args.label or args.size}"
    out = BENCH / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
