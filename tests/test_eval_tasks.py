"""Built-in synthetic task sets and JSONL task files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rvec_hub.answers import extract_answer
from rvec_hub.errors import UsageError
from rvec_hub.tasks import GENERATORS, generate, load_jsonl, load_tasks, write_jsonl


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_builtin_sets_are_the_same_for_the_same_seed(name: str) -> None:
    assert generate(name, 50, seed=7) == generate(name, 50, seed=7)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_builtin_sets_differ_between_seeds_and_hold_no_duplicates(name: str) -> None:
    a, b = generate(name, 100, seed=1), generate(name, 100, seed=2)
    assert len({t.question for t in a.tasks}) == 100
    assert {t.question for t in a.tasks} != {t.question for t in b.tasks}


def test_arith_solutions_are_correct_arithmetic_ending_in_the_answer() -> None:
    for task in generate("arith", 200).tasks:
        for left, op, right, result in re.findall(r"(\d+) ([-+*]) (\d+) = (-?\d+)", task.solution):
            assert eval(f"{left} {op} {right}") == int(result)  # noqa: S307 - digits and one operator
        assert extract_answer(task.solution) == task.answer
        assert int(task.answer) >= 0


def test_tracking_answers_are_colors_that_the_solution_ends_with() -> None:
    for task in generate("tracking", 100).tasks:
        assert not task.answer.isdigit()
        assert extract_answer(task.solution) == task.answer
        assert task.answer in task.question


def test_load_tasks_reads_name_at_seed_and_limits() -> None:
    tasks = load_tasks("arith@5", size=10)
    assert tasks.source == "builtin:arith@5"
    assert tasks == generate("arith", 10, seed=5)
    assert len(tasks.limit(3).tasks) == 3


def test_jsonl_round_trip_and_gsm8k_style_answers(tmp_path: Path) -> None:
    path = write_jsonl(generate("arith", 5), tmp_path / "arith.jsonl")
    assert [t.answer for t in load_jsonl(path).tasks] == [t.answer for t in generate("arith", 5).tasks]
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "How many?", "answer": "48 + 24 = 72 clips.\n#### 72"}) + "\n\n")
    (task,) = load_jsonl(gsm).tasks
    assert task.answer == "72" and task.solution.endswith("#### 72")


def test_jsonl_with_bad_lines_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q1", "answer": "1"}\nnot json\n{"question": "q3"}\n[1, 2]\n')
    with pytest.raises(UsageError, match="3 bad line") as info:
        load_jsonl(path)
    assert info.value.problems == ["line 2: not JSON", "line 3: missing 'answer'", "line 4: not a JSON object"]


def test_unknown_task_set_names_the_builtin_sets() -> None:
    with pytest.raises(UsageError, match="arith, tracking"):
        load_tasks("gsm9k")
    with pytest.raises(UsageError, match="does not exist"):
        load_tasks("missing/gsm8k.jsonl")
    with pytest.raises(UsageError, match="integer"):
        load_tasks("arith@x")
