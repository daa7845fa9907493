"""`rvec eval` through the real `rvec serve` (vLLM): one server per setting, answers over HTTP."""

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


def test_eval_uses_a_server_already_running_through_its_endpoint(family: dict[str, Path], vector_fp32: Path) -> None:
    pytest.importorskip("vllm")
    from rvec_hub.evaluate import Setting, served

    setting = Setting(((str(vector_fp32), 0.5),))
    with served(str(family["instruct"]), setting, serve_args=["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]) as url:
        report = evaluate(None, [generate("tracking", 3)], settings_for([]), EvalOptions(max_tokens=4), endpoint=url)
    (score,) = report.scores
    assert score.setting.label == "instruct+tiny-reasoning-fp32"
    assert score.result.n == 3 and report.base == url
