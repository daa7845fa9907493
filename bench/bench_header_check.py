"""Benchmark what a compatibility check costs against a Hub base: header-only against a full download.

A Qwen2.5-0.5B-shaped synthetic base (bf16, about 1 GB in one safetensors file) is uploaded to a real
`rvec hub serve` on 127.0.0.1 (in this process, behind a wrapper that counts every response byte), and a
vector extracted from the same shapes is checked against it two ways, each with an empty Hub cache:

- `check --no-precision` (library: `check(..., precision=False)` on `open_checkpoint_headers`): config and
  safetensors headers through HTTP range reads;
- `check` with the precision pass (`open_checkpoint`): the base is downloaded, then every weight is read.

Bytes are counted on the server side, per request path, so they are exact; seconds are wall clock on a
shared host and only indicative.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_header_check.py
    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_header_check.py --size tiny   # smoke run

Figures go to bench/results/header_check.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub reads its constants
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

from huggingface_hub import HfApi, constants  # noqa: E402

from rvec_hub import Vector, extract  # noqa: E402
from rvec_hub.check import check  # noqa: E402
from rvec_hub.hub.server import runner  # noqa: E402
from rvec_hub.io.checkpoint import open_checkpoint, open_checkpoint_headers  # noqa: E402
from rvec_hub.synthetic import QWEN25_05B, TINY, write_family  # noqa: E402

SIZES = {"tiny": TINY, "0.5b": QWEN25_05B}
USER, TOKEN = "bench", "bench-token-not-secret"
REPO = f"{USER}/base"


class _CountingApp:
    """ASGI wrapper: response body bytes and request count, per path."""

    def __init__(self, app) -> None:
        self.app, self.sent, self.requests = app, Counter(), Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        self.requests[path] += 1

        async def counting_send(message):
            if message["type"] == "http.response.body":
                self.sent[path] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)


def _fresh_cache(scratch: Path, name: str) -> None:
    cache = scratch / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    constants.HF_HUB_CACHE = str(cache)  # huggingface_hub read HF_HUB_CACHE at import


def _measured(app: _CountingApp, fn) -> dict:
    app.sent.clear()
    app.requests.clear()
    start = time.perf_counter()
    report = fn()
    seconds = time.perf_counter() - start
    assert report.ok, report.problems
    weights = {p: n for p, n in app.sent.items() if p.endswith(".safetensors")}
    return {"seconds": round(seconds, 3), "bytes_served": sum(app.sent.values()), "weight_file_bytes_served": sum(weights.values()),
            "requests": sum(app.requests.values())}


def run(size: str, work: Path) -> dict:
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    load_start = os.getloadavg()[0]
    fam = write_family(scratch / "family", SIZES[size], seed=0, roles=("sft", "grpo"))
    vec_dir = scratch / "vector"
    extract(fam["sft"], fam["grpo"], vec_dir, quiet=True)
    base_bytes = sum(p.stat().st_size for p in fam["sft"].glob("*.safetensors"))
    apps: list[_CountingApp] = []
    real = runner.create_app
    runner.create_app = lambda *a, **k: apps.append(_CountingApp(real(*a, **k))) or apps[-1]
    try:
        with runner.running_server(scratch / "hub-root", {USER: TOKEN}) as url:
            api = HfApi(endpoint=url, token=TOKEN)
            api.create_repo(REPO)
            api.upload_folder(repo_id=REPO, folder_path=fam["sft"])
            vec = Vector.open(vec_dir)
            _fresh_cache(scratch, "headers")
            headers = _measured(apps[0], lambda: check(vec, open_checkpoint_headers(REPO, endpoint=url), precision=False))
            _fresh_cache(scratch, "full")
            full = _measured(apps[0], lambda: check(vec, open_checkpoint(REPO, endpoint=url)))
    finally:
        runner.create_app = real
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "base": {"size": size, "safetensors_bytes": base_bytes, "shards": 1},
        "check_no_precision_headers_only": headers,
        "check_with_precision_full_download": full,
        "header_bytes_share_of_base": round(headers["weight_file_bytes_served"] / base_bytes, 6),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)]},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_header_check.py " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work" / "header-check")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "header_check.json")
    args = parser.parse_args()
    result = run(args.size, args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    h, f = result["check_no_precision_headers_only"], result["check_with_precision_full_download"]
    print(f"| check against a {result['base']['safetensors_bytes'] / 1e9:.2f} GB Hub base | bytes served | of which weights file | requests | seconds |")
    print("|---|---:|---:|---:|---:|")
    for label, row in (("`check --no-precision` (headers only)", h), ("`check` (download, then read every weight)", f)):
        print(f"| {label} | {row['bytes_served']:,} | {row['weight_file_bytes_served']:,} | {row['requests']} | {row['seconds']:.2f} |")
    print(f"\nthe header-only check read {result['header_bytes_share_of_base']:.4%} of the weights file; wrote {args.out}")


if __name__ == "__main__":
    main()
