"""Benchmark the Hub client against the local Hub server: push and pull throughput, and what verification costs.

On a dense bf16 vector extracted from Qwen2.5-0.5B-shaped synthetic donors (about 1 GB of payload), with
`rvec hub serve` running as its own process on 127.0.0.1, it times (library calls, wall clock):

- `verify`: checking every payload file of a directory against the manifest (sha256 and size), as push
  does before uploading and as a cached copy is checked before reuse;
- `push`: verify + one commit (payload through LFS) + tag, into a fresh repository each repeat;
- `pull into cache`: resolve + `hf_hub_download` of every file into the Hub cache + sha256 of each file
  as soon as it lands;
- `pull (cache hit)`: a pull whose verified copy is already in the cache (verification only);
- `pull -o`: the same from a warm cache, then a copy of the snapshot into a plain directory;
- `snapshot_download`: plain `huggingface_hub` download of the same commit, no verification, for reference;
- peak RSS of `rvec pull` as a CLI process into an empty cache (memory stays bounded whatever the size).

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_hub.py                  # 1 GB vector
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_hub.py --size tiny      # smoke run

Figures go to bench/results/hub.json and a markdown table on stdout. Downloads land in the page cache,
so `verify` measures hashing speed (CPU), not disk reads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub reads its constants
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _measure import log_line, measure  # noqa: E402
from huggingface_hub import constants, snapshot_download  # noqa: E402

from rvec_hub import extract  # noqa: E402
from rvec_hub.hub.client import pull, push  # noqa: E402
from rvec_hub.manifest import load_manifest  # noqa: E402
from rvec_hub.procs import free_port  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, TINY, write_family  # noqa: E402
from rvec_hub.vector import verify_files  # noqa: E402

SIZES = {"tiny": TINY, "0.5b": QWEN25_05B}
USER, TOKEN = "bench", "bench-token-not-secret"


def _vector(work: Path, size: str) -> Path:
    """The benchmark vector, built once and reused across runs."""
    vec = work / f"vector-{size}"
    if (vec / "rvec.json").exists():
        return vec
    log_line(f"building the {size} donors and extracting the vector (once)")
    fam = write_family(work / f"family-{size}", SIZES[size], seed=0, roles=("sft", "grpo"))
    extract(fam["sft"], fam["grpo"], vec, base_model="bench/instruct", quiet=True)
    shutil.rmtree(work / f"family-{size}")
    return vec


def _start_server(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RVEC_HUB_TOKEN": TOKEN, "RVEC_HUB_USER": USER}
    rvec = str(Path(sys.executable).parent / "rvec")
    proc = subprocess.Popen([rvec, "hub", "serve", "--root", str(root), "--port", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the hub server did not start; see {log}")


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(size: str, repeat: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    vec = _vector(work, size)
    load_start = os.getloadavg()[0]
    manifest = load_manifest(vec)
    payload = sum(f.size for f in manifest.files)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    os.environ["HF_HOME"] = str(scratch / "hf-home")
    os.environ["HF_HUB_CACHE"] = str(scratch / "hf-home" / "hub")
    constants.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]  # huggingface_hub read it at import
    server, url = _start_server(scratch / "hub-root", scratch / "server.log")
    runs = []
    try:
        for i in range(repeat):
            repo = f"{USER}/vector-{i}"
            row: dict = {}
            row["verify_s"], _ = _timed(lambda: verify_files(vec, manifest, rehash=True))
            row["push_s"], pushed = _timed(lambda: push(vec, repo, "1.0.0", endpoint=url, token=TOKEN, quiet=True))
            # First, so that the server's own check of a blob before its first download is not charged to rvec.
            row["snapshot_download_s"], _ = _timed(lambda: snapshot_download(
                repo, revision=pushed.commit, local_dir=scratch / f"snap-{i}", endpoint=url, token=TOKEN))
            row["pull_cache_cold_s"], cached = _timed(lambda: pull(f"{repo}@1.0.0", endpoint=url))
            assert cached.commit == pushed.commit
            row["verify_pulled_s"], _ = _timed(lambda: verify_files(cached.path, manifest, rehash=True))
            row["pull_cache_hit_s"], _ = _timed(lambda: pull(f"{repo}@1.0.0", endpoint=url))
            row["pull_output_s"], _ = _timed(lambda: pull(f"{repo}@1.0.0", output=scratch / f"out-{i}", endpoint=url))
            storage = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
            shutil.rmtree(storage)  # the CLI pull starts from an empty cache
            cli = measure(f"rvec pull {size}", [str(Path(sys.executable).parent / "rvec"), "pull", f"{repo}@1.0.0",
                                                "-q", "--endpoint", url], log=scratch / f"cli-{i}.log")
            row["cli_pull_wall_s"], row["cli_pull_peak_rss_gb"] = round(cli.wall_s, 3), round(cli.peak_rss_gb, 3)
            for d in (scratch / f"out-{i}", storage, scratch / f"snap-{i}"):
                shutil.rmtree(d, ignore_errors=True)
            log_line(f"run {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
            runs.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    best = {k: min(r[k] for r in runs) for k in runs[0]}
    mb = payload / 1e6
    return {
        "vector": {"size": size, "payload_bytes": payload, "files": len(manifest.files), "tensors": len(manifest.tensors)},
        "best_of": repeat,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "throughput_mb_s": {
            "verify": round(mb / best["verify_s"], 1),
            "push": round(mb / best["push_s"], 1),
            "pull_output": round(mb / best["pull_output_s"], 1),
            "pull_cache_cold": round(mb / best["pull_cache_cold_s"], 1),
            "snapshot_download_unverified": round(mb / best["snapshot_download_s"], 1),
        },
        "standalone_verify_share_of_pull": round(best["verify_pulled_s"] / best["pull_cache_cold_s"], 3),
        "pull_over_unverified_download": round(best["pull_cache_cold_s"] / best["snapshot_download_s"], 3),
        "runs": runs,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    # Other work on a shared machine slows both ends; the load says how quiet it was.
                    "load_avg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)]},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_hub.py " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "hub")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "hub.json")
    args = parser.parse_args()
    result = run(args.size, args.repeat, args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s, t = result["seconds"], result["throughput_mb_s"]
    print(f"| {result['vector']['payload_bytes'] / 1e9:.2f} GB vector, best of {args.repeat} | seconds | MB/s |")
    print("|---|---:|---:|")
    for label, key, rate in (("verify (sha256 + size, every file)", "verify_s", "verify"), ("push", "push_s", "push"),
                             ("pull into cache (download + verify)", "pull_cache_cold_s", "pull_cache_cold"),
                             ("pull, verified copy in cache", "pull_cache_hit_s", None),
                             ("pull -o DIR from a warm cache (verify + copy)", "pull_output_s", "pull_output"),
                             ("huggingface_hub snapshot_download (unverified)", "snapshot_download_s", "snapshot_download_unverified")):
        print(f"| {label} | {s[key]:.2f} | {t[rate] if rate else '-'} |")
    print(f"\na verified pull takes {result['pull_over_unverified_download']:.2f}x an unverified snapshot_download; "
          f"`rvec pull` CLI peak RSS {s['cli_pull_peak_rss_gb']:.2f} GB; wrote {args.out}")


if __name__ == "__main__":
    main()
