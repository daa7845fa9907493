"""`rvec eval` through the real `rvec serve` (vLLM): one server per setting, answers over HTTP.

Evaluating a server that is already running is tested beside the served model in test_serving_vllm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rvec_hub.evaluate import EvalOptions, evaluate, settings_for
from rvec_hub.tasks import generate

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_eval_serves_base_and_vector_and_scores_both(family: dict[str, Path], vector_fp32: Path) -> None:
    pytest.importorskip("vllm")
    report = evaluate(
        str(family["instruct"]), [generate("arith", 4)], settings_for([str(vector_fp32)], [1.0]),
        EvalOptions(cot=True, max_tokens=8), engine="vllm", serve_args=["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"],
    )
    assert [(s.setting.label, s.result.n) for s in report.scores] == [("base", 4), ("base + 1·tiny-reasoning-fp32", 4)]
    assert all(len(s.completions) == 4 for s in report.scores)

