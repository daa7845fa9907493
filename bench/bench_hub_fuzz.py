"""Fuzz every endpoint of `rvec hub serve` from its own OpenAPI schema, at a size no test can afford.

`rvec hub serve` runs as its own process on 127.0.0.1 with two users; seeded repos (public and
private, with LFS and regular files, a version tag and a branch) give the fuzzer real names to aim
at. For each operation schemathesis generates `--examples` cases that fit the schema and as many that
do not (wrong types, missing fields, odd strings), each sent anonymously, with the owner's token or
with another user's token (see tests/hubfuzz.py). It records how many requests went out,
the status codes that came back, and every finding: a 5xx, a dropped connection, a 4xx without a
message. The suite runs the same harness at a small size (tests/test_hub_fuzz.py).

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_hub_fuzz.py                  # 100 per operation and mode
    .venv/bin/python bench/bench_hub_fuzz.py --examples 5 --out /tmp/fuzz.json           # smoke run
    .venv/bin/python bench/bench_hub_fuzz.py --examples 20 --code /tmp/rvec-old --out /tmp/old.json  # an older tree

Figures go to bench/results/hub_fuzz.json and a summary on stdout. Exit status 1 when anything was found.
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

os.environ["HF_HUB_DISABLE_XET"] = "1"  # before huggingface_hub reads its constants
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import hubfuzz  # noqa: E402
from hubproc import hub_process  # noqa: E402

TOKENS = {"alice": "alice-fuzz-token-0123456789", "bob": "bob-fuzz-token-9876543210"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and generation mode")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "hub_fuzz.json")
    parser.add_argument("--code", type=Path, help="run the server from this source tree (holding rvec_hub/)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rvec-fuzz-") as work, \
            hub_process(Path(work) / "hub", TOKENS, cwd=args.code.resolve() if args.code else None) as server:
        names = hubfuzz.seed(server.url, TOKENS["alice"])
        start = time.monotonic()
        report = hubfuzz.run(server.url, TOKENS, "alice", names, examples=args.examples, seed_value=args.seed)
        elapsed = time.monotonic() - start
        server_alive = server.process.poll() is None
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)",
        "load_average_1m_at_end": os.getloadavg()[0],
        "examples_per_operation_and_mode": args.examples,
        "seed": args.seed,
        "code": str(args.code) if args.code else "this checkout",
        "operations": report.operations,
        "requests": report.requests,
        "statuses": {str(k): v for k, v in sorted(report.statuses.items())},
        "findings": report.failures,
        "server_alive_at_end": server_alive,
        "seconds": round(elapsed, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{report.requests} requests to {report.operations} operations in {elapsed:.0f} s; "
          f"statuses {result['statuses']}; {len(report.failures)} finding(s)")
    for finding in report.failures[:50]:
        print(f"  - {finding}")
    return 1 if report.failures or not server_alive else 0


if __name__ == "__main__":
    raise SystemExit(main())
