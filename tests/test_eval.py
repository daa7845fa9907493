"""`rvec eval` on the tiny family with the in-process transformers engine, the card, and the CLI wiring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rvec_hub import Vector, load_manifest
from rvec_hub.cli.main import cli
from rvec_hub.cli._errors import run_cli
from rvec_hub.errors import CompatibilityError, UsageError
from rvec_hub.eval_card import write_card
from rvec_hub.evaluate import EvalOptions, Setting, TransformersEngine, evaluate, prompt_for, settings_for
from rvec_hub.synthetic import TINY, shapes_with, write_member
from rvec_hub.tasks import generate

FAST = EvalOptions(cot=True, max_tokens=6)


def test_prompt_asks_step_by_step_only_with_cot() -> None:
    assert prompt_for("What is 2 + 2?", EvalOptions()) == "Question: What is 2 + 2?\nAnswer:"
    assert prompt_for("What is 2 + 2?", EvalOptions(cot=True)).endswith("Answer: Let's think step by step.")
    assert prompt_for("Q?", EvalOptions(cot=True, chat=True)) == "Q?\nLet's think step by step."


def test_settings_are_the_base_then_each_alpha_of_each_vector() -> None:
    settings = settings_for(["vec", "other:-1"], [0.0, 0.5, 1.0])
    assert [s.label for s in settings] == ["base", "base + 0.5·vec", "base + 1·vec", "base - 1·other"]
    assert settings_for(["vec"])[1].vectors == (("vec", None),)


def test_transformers_engine_adds_the_vector_in_float32_and_restores_the_base(family: dict[str, Path], vector_fp32: Path) -> None:
    engine = TransformersEngine(str(family["instruct"]))
    name = "model.layers.0.mlp.up_proj.weight"
    before = engine.params[name].detach().clone()
    engine.use(Setting(((str(vector_fp32), 2.0),)))
    delta = Vector.open(vector_fp32).decode(name)
    assert (engine.params[name] - before - 2.0 * delta).abs().max() < 1e-6
    engine.use(Setting())
    assert engine.params[name].equal(before)


def test_evaluate_scores_base_and_each_alpha_on_every_task_set(family: dict[str, Path], vector_dir: Path) -> None:
    tasks = [generate("arith", 3), generate("tracking", 2)]
    report = evaluate(str(family["instruct"]), tasks, settings_for([str(vector_dir)], [0.0, 1.0, -1.0]), FAST, engine="transformers")
    assert [(s.tasks, s.setting.label, s.result.n) for s in report.scores] == [
        ("arith", "base", 3), ("tracking", "base", 2),
        ("arith", "base + 1·tiny-reasoning", 3), ("tracking", "base + 1·tiny-reasoning", 2),
        ("arith", "base - 1·tiny-reasoning", 3), ("tracking", "base - 1·tiny-reasoning", 2),
    ]
    assert all(len(s.completions) == s.result.n for s in report.scores)
    data = report.to_dict()
    assert data["cot"] is True and data["results"][2]["vectors"] == [{"ref": str(vector_dir), "alpha": 1.0}]
    lines = report.table().splitlines()
    assert lines[0].split() == ["tasks", "model", "accuracy", "95%", "CI", "vs", "base", "n"]
    assert len(lines) == 7


def test_evaluate_refuses_a_vector_for_another_model_before_answering(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    other = write_member(tmp_path / "wide", shapes_with(TINY, hidden_size=256, num_attention_heads=4), 0, "instruct")
    with pytest.raises(CompatibilityError, match="hidden 128"):
        evaluate(str(other), [generate("arith", 1)], settings_for([str(vector_dir)]), FAST, engine="transformers")


def test_endpoint_evaluation_refuses_vectors_it_cannot_apply(vector_dir: Path) -> None:
    with pytest.raises(UsageError, match="already serves"):
        evaluate(None, [generate("arith", 1)], settings_for([str(vector_dir)]), FAST, endpoint="http://127.0.0.1:9/v1")


def test_write_card_records_model_index_and_keeps_the_vector_valid(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    vec = shutil.copytree(vector_dir, tmp_path / "vec")
    tasks = [generate("arith", 2)]
    for _ in range(2):  # a second run replaces the first section
        report = evaluate(str(family["instruct"]), tasks, settings_for([str(vec)], [0.5]), FAST, engine="transformers")
        write_card(vec, report)
    text = (vec / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "rvec" and "reasoning-vector" in meta["tags"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "tiny-reasoning"
    (result,) = entry["results"]
    assert result["dataset"] == {"type": "builtin:arith@1234", "name": "arith"}
    assert [m["name"].split(";")[0] for m in result["metrics"]] == ["accuracy (base tiny/instruct, CoT", "accuracy (base tiny/instruct +0.5·vector, CoT"]
    assert str(family["instruct"]) not in text and str(vec) not in text, "a card never publishes a local path"
    assert text.count("## Evaluation") == 1 and "# tiny-reasoning" in text
    assert load_manifest(vec) == load_manifest(vector_dir)
    Vector.open(vec).close()  # every checksum still holds


def test_write_card_refuses_a_report_without_that_vector(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    vec = shutil.copytree(vector_dir, tmp_path / "vec")
    report = evaluate(str(family["instruct"]), [generate("arith", 1)], settings_for([]), FAST, engine="transformers")
    with pytest.raises(UsageError, match="no score for"):
        write_card(vec, report)


def test_cli_eval_prints_json_and_writes_the_card(family: dict[str, Path], vector_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vec = shutil.copytree(vector_dir, tmp_path / "vec")
    code = run_cli(cli, [
        "eval", "--base", str(family["instruct"]), "--vector", f"{vec}:1", "--tasks", "arith", "--limit", "2",
        "--max-tokens", "4", "--engine", "transformers", "--cot", "--json", "--write-card", str(vec),
    ])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data["results"]] == ["base", "base + 1·vec"]
    assert all(r["n"] == 2 and len(r["ci95"]) == 2 for r in data["results"])
    assert "model-index" in (vec / "README.md").read_text()


def test_cli_eval_says_what_is_wrong_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(cli, ["eval", "--base", "x", "--tasks", "gsm9k", "--engine", "transformers"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown built-in task set 'gsm9k'") and "Traceback" not in err
    assert run_cli(cli, ["eval", "--tasks", "arith", "--engine", "transformers"]) == 1
    assert "pass --base" in capsys.readouterr().err


def test_write_card_names_a_default_alpha_by_the_manifest_value(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    vec = shutil.copytree(vector_dir, tmp_path / "vec")
    report = evaluate(str(family["instruct"]), [generate("arith", 1)], settings_for([str(vec)]), FAST, engine="transformers")
    assert report.scores[1].setting.label == "base + default·vec"
    write_card(vec, report)
    meta = yaml.safe_load((vec / "README.md").read_text().split("---\n")[1])
    names = [m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]]
    assert names[1].startswith("accuracy (base tiny/instruct +1·vector, CoT")


def test_card_rendered_for_push_keeps_the_recorded_evaluation(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.card import render_card
    from rvec_hub.eval_card import carry_evaluation

    vec = shutil.copytree(vector_dir, tmp_path / "vec")
    fresh = render_card(load_manifest(vec), repo_id="alice/tiny", version="1.0.0")
    assert carry_evaluation(fresh, vec / "README.md") == fresh  # nothing recorded yet
    report = evaluate(str(family["instruct"]), [generate("arith", 1)], settings_for([f"{vec}:1"]), FAST, engine="transformers")
    write_card(vec, report)
    carried = carry_evaluation(fresh, vec / "README.md")
    meta = yaml.safe_load(carried.split("---\n")[1])
    assert meta["model-index"][0]["name"] == "tiny-reasoning" and meta["library_name"] == "rvec"
    assert "## Evaluation" in carried and "alice/tiny@1.0.0" in carried
