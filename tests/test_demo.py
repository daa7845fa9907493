"""`make demo`'s job, end to end on the real model: it finishes, reports what it did, and leaves nothing running.

The demo runs with `--schedule smoke` (one SFT step and one GRPO step from SmolLM2-135M-Instruct, a handful
of questions), which takes the same path as the standard schedule in a fraction of its time.
"""

from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="session")
def demo_cache(pytestconfig: pytest.Config) -> Path:
    """rvec's cache for the demo's donors, kept between sessions like the model itself."""
    return Path(pytestconfig.cache.mkdir("rvec-demo"))


def _env_with_bigbench(tmp_path: Path, pytestconfig: pytest.Config, cache: Path) -> dict[str, str]:
    """A fresh HF_HOME whose BIG-bench archive is the one kept in pytest's cache (downloaded once)."""
    hf_home = tmp_path / "hf"
    (hf_home / "rvec").mkdir(parents=True)
    (hf_home / "rvec" / "bigbench-1.0.0").symlink_to(pytestconfig.cache.mkdir("bigbench-1.0.0"), target_is_directory=True)
    return {**os.environ, "HF_HOME": str(hf_home), "RVEC_CACHE": str(cache)}


@pytest.mark.slow
@pytest.mark.vllm
def test_demo_trains_serves_and_measures_the_real_model_and_stops_everything(tmp_path, smollm2_dir, demo_cache, pytestconfig):
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rvec_hub.cli", "demo", "--workdir", str(workdir), "--base", str(smollm2_dir), "--schedule", "smoke"],
        capture_output=True, text=True, timeout=1200, env=_env_with_bigbench(tmp_path, pytestconfig, demo_cache),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for step in ("target: SmolLM2-135M-Instruct", "donor pair", "extracted the vector grpo − sft", "compressed it losslessly",
                 "started the local Hub", "pushed demo/smollm2-arith-grpo version 1.0.0", "every file verified",
                 "target + 0·vector", "rvec swap: the same server now serves target + 1·vector", "stopped the Hub and the server", "Q: What is 12 + 7?",
                 "plain:", "enhanced:", "95 % Wilson intervals"):
        assert step in proc.stdout, step
    result = json.loads((workdir / "demo.json").read_text())
    assert result["lossless_bytes"] < result["dense_bytes"]
    assert 0 < result["vector"]["changed"] <= result["vector"]["parameters"] and result["vector"]["relative_norm"] > 0
    assert [v["alpha"] for v in result["swap"]["vectors"]] == [1.0]
    assert len(result["donors"]["sft_losses"]) == 1 and len(result["donors"]["grpo_rewards"]) == 1
    for label in ("plain", "enhanced"):
        assert all(text.strip() for text in result["answers"][label].values()), result["answers"][label]
        assert [a["n"] for a in result["accuracy"][label]] == [4, 2]
        assert all(a["ci95"][0] <= a["accuracy"] <= a["ci95"][1] for a in result["accuracy"][label])
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_demo_donor_pair_is_trained_once_then_found_in_the_cache(smollm2_dir, demo_cache):
    from rvec_hub.demo import ARITH
    from rvec_hub.demo_donors import RECIPES, build_donors
    from rvec_hub.tasks import load_tasks

    held_out = {t.question for t in load_tasks(ARITH).tasks}
    first = build_donors(smollm2_dir, RECIPES["smoke"], demo_cache / "demo", exclude=held_out, log=lambda _: None)
    again = build_donors(smollm2_dir, RECIPES["smoke"], demo_cache / "demo", exclude=held_out, log=lambda _: None)
    assert again.cached and (again.sft, again.grpo) == (first.sft, first.grpo) and again.record == first.record
