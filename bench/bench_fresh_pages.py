"""How long this machine takes to give a process memory it has not touched: the cost an engine start pays to
fault in its parameters, whatever its load format.

Each round starts a new Python process that allocates 1 GiB with torch and writes it (its first touch), frees
it, and allocates and writes it again at once (pages the kernel has just had back). On a machine whose
hypervisor hands freed guest pages back to the host (virtio-balloon free page reporting, which `dmesg` names at
boot), a first touch also waits for the host; the second is the guest's own cost. The 0.5B bench model's
bf16 parameters are 0.99 GB, written once by every engine start.

    flock /tmp/rvec-bench.lock .venv/bin/python bench/bench_fresh_pages.py --rounds 5

Figures go to bench/results/fresh-pages.json (or --out) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import cpu_model, log_line  # noqa: E402

_TOUCH = """
import json, sys, time, torch
out = []
for _ in range(2):
    started = time.perf_counter()
    block = torch.empty(1 << 29, dtype=torch.int16)  # 1 GiB
    block.fill_(1)
    out.append(time.perf_counter() - started)
    del block
print(json.dumps(out))
"""


def _page_reporting() -> bool | None:
    """Whether the kernel said at boot that it reports free pages to the host (None: the log is not readable)."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "Free page reporting enabled" in log.stdout if log.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="new processes, each touching 1 GiB twice")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between rounds (freed pages go back to the host meanwhile)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "fresh-pages.json")
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        done = subprocess.run([sys.executable, "-c", _TOUCH], capture_output=True, text=True, check=True)
        first, again = json.loads(done.stdout.strip().splitlines()[-1])
        rounds.append({"first_touch_s": first, "touched_again_s": again})
        log_line(f"round {i + 1}: 1 GiB first touched in {first:.2f} s, again in {again:.2f} s")
        time.sleep(args.pause)
    firsts, agains = [r["first_touch_s"] for r in rounds], [r["touched_again_s"] for r in rounds]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(), "free_page_reporting": _page_reporting()},
        "rounds": rounds,
        "first_touch_s": {"min": min(firsts), "median": statistics.median(firsts), "max": max(firsts)},
        "touched_again_s": {"min": min(agains), "median": statistics.median(agains), "max": max(agains)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| 1 GiB written by a new process | min s | median s | max s |\n|---|---:|---:|---:|")
    for label, key in (("first touch", "first_touch_s"), ("again, just freed", "touched_again_s")):
        print(f"| {label} | {report[key]['min']:.2f} | {report[key]['median']:.2f} | {report[key]['max']:.2f} |")
    print(f"\nfree page reporting: {report['machine']['free_page_reporting']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
