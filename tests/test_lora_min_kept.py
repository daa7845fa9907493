"""`rvec serve --mode lora --lora-min-kept`: a vector LoRA would serve too little of is refused up front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rvec_hub.errors import CompatibilityError
from rvec_serving.lora import plan_lora
from rvec_serving.spec import VectorSpec


def test_lora_plan_refuses_a_vector_below_the_kept_share_and_names_it(family, vector_dir, tmp_path) -> None:
    plan, exports = plan_lora(str(family["instruct"]), [VectorSpec(str(vector_dir))], rank=8, cache=tmp_path)
    kept = exports[0].carried_share
    assert 0.0 < kept < 1.0
    assert any(f"{kept:.1%} is served" in note for note in plan.notes)
    with pytest.raises(CompatibilityError, match=rf"tiny-reasoning keeps {kept:.1%}".replace(".", r"\.")):
        plan_lora(str(family["instruct"]), [VectorSpec(str(vector_dir))], rank=8, cache=tmp_path, min_kept=kept + 0.01)
    plan_lora(str(family["instruct"]), [VectorSpec(str(vector_dir))], rank=8, cache=tmp_path, min_kept=kept - 0.01)


def test_serve_cli_reports_the_refusal_in_one_line(family, vector_dir, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RVEC_CACHE", str(tmp_path))
    rvec = str(Path(sys.executable).with_name("rvec"))
    argv = [rvec, "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir), "--mode", "lora", "--rank", "8", "--dry-run"]
    refused = subprocess.run([*argv, "--lora-min-kept", "0.999"], capture_output=True, text=True)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "--lora-min-kept is 99.9%" in refused.stderr
    wrong_mode = subprocess.run([rvec, "serve", "--base", str(family["instruct"]), "--vector", str(vector_dir),
                                 "--lora-min-kept", "0.5", "--dry-run"], capture_output=True, text=True)
    assert wrong_mode.returncode == 2 and "applies to --mode lora" in wrong_mode.stderr
