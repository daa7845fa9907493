"""What one anonymous 200 MB request body costs `rvec hub serve` in memory, per endpoint.

For each endpoint a fresh `rvec hub serve` process starts on 127.0.0.1, a public repo is created, and
one anonymous request streams 200 MB (chunked, so no Content-Length can be refused up front). The
figure is the server's peak RSS (VmHWM) after the request minus its RSS before it. `--code DIR` runs
the server from another source tree (e.g. an older release unpacked with `git archive`) to compare.

    .venv/bin/python bench/bench_hub_body.py
    git archive dd7027e rvec_hub | tar -x -C /tmp/rvec-old && .venv/bin/python bench/bench_hub_body.py --code /tmp/rvec-old

Figures go to bench/results/hub_body.json (or --out) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import httpx2  # noqa: E402
from hubproc import hub_process  # noqa: E402

TOKENS = {"alice": "alice-body-token-0123456789"}
MB = 1 << 20
ENDPOINTS = [
    ("POST", "/api/repos/create"),
    ("POST", "/api/models/alice/target/paths-info/main"),
    ("POST", "/api/models/alice/target/commit/main"),
    ("POST", "/api/validate-yaml"),
    ("POST", "/alice/target.git/info/lfs/objects/batch"),
]


def _stream(total: int):
    block = b" " * MB
    for _ in range(total // MB):
        yield block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="body size in MiB")
    parser.add_argument("--code", type=Path, help="run the server from this source tree (holding rvec_hub/)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "hub_body.json")
    args = parser.parse_args()
    code = args.code.resolve() if args.code else None
    rows = []
    for method, path in ENDPOINTS:
        with tempfile.TemporaryDirectory(prefix="rvec-body-") as work, hub_process(Path(work) / "hub", TOKENS, cwd=code) as server:
            httpx2.post(f"{server.url}/api/repos/create", json={"name": "target"},
                        headers={"Authorization": f"Bearer {TOKENS['alice']}"}).raise_for_status()
            before = server.memory_kib()["VmRSS"]
            start = time.monotonic()
            try:
                status = httpx2.request(method, server.url + path, content=_stream(args.mb * MB), timeout=600,
                                        headers={"Content-Type": "application/json"}).status_code
            except httpx2.TransportError as err:
                status = f"connection error ({type(err).__name__})"
            seconds = time.monotonic() - start
            time.sleep(0.5)
            alive = server.process.poll() is None
            peak = server.memory_kib()["VmHWM"] if alive else None
        rows.append({"method": method, "path": path, "status": status, "seconds": round(seconds, 2),
                     "rss_before_mib": round(before / 1024, 1),
                     "peak_growth_mib": round((peak - before) / 1024, 1) if peak else None, "server_alive": alive})
        print(f"| {method} {path} | {status} | {rows[-1]['peak_growth_mib']} MiB | {seconds:.1f} s |", flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)",
              "load_average_1m_at_end": os.getloadavg()[0], "body_mib": args.mb,
              "code": str(args.code) if args.code else "this checkout", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
