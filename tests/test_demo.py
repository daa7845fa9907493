"""`make demo`'s job, end to end: it finishes, reports what it did, and leaves nothing running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.vllm
def test_demo_runs_the_whole_story_and_stops_everything(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rvec_hub.cli", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for step in ("extracted the vector", "compressed it losslessly", "started the local Hub", "pushed demo/tiny-reasoning version 1.0.0",
                 "every file verified", "plain target:", "with vector:", "stopped the Hub and both servers"):
        assert step in proc.stdout, step
    result = json.loads((workdir / "demo.json").read_text())
    assert result["lossless_bytes"] < result["dense_bytes"]
    plain, enhanced = result["answers"]["plain target"], result["answers"]["with vector"]
    assert plain["first_token_logprob"] != enhanced["first_token_logprob"]
    assert _processes_mentioning(str(workdir)) == []
