"""Task sets from Hugging Face datasets (`hf:DATASET[@CONFIG][:SPLIT]`), read with the `datasets` package.

A row becomes a question from its `question` (or `input`, `problem`, `prompt`) column and an answer from its
`answer` (or `target`, `output`) column. GSM8K-style answers (`… #### 72`) are scored the GSM8K way; rows of
`input` and `target` (BIG-bench and BBH exports) the BBH way: lettered targets like `(B)` with the
multiple-choice filter, integers with the number filter, anything else with "the answer is …".
"""

from __future__ import annotations

import re

from .answers import MARKER, extract_answer
from .errors import DataError, UsageError
from .tasks import Task, TaskSet

QUESTION_COLUMNS = ("question", "input", "problem", "prompt")
ANSWER_COLUMNS = ("answer", "target", "output")


def _split_spec(spec: str) -> tuple[str, str | None, str]:
    """`DATASET[@CONFIG][:SPLIT]` -> (dataset, config, split); the split defaults to `test`."""
    path, _, split = spec.rpartition(":") if ":" in spec else (spec, "", "test")
    path, _, config = path.partition("@")
    if not path or not split:
        raise UsageError(f"hf:{spec} is not DATASET[@CONFIG][:SPLIT], e.g. hf:openai/gsm8k@main:test")
    return path, config or None, split


def load_hf(spec: str) -> TaskSet:
    """A task set from a Hugging Face dataset split (a Hub id, or a local directory or data file).

    Args:
        spec: `DATASET[@CONFIG][:SPLIT]`, e.g. `openai/gsm8k@main:test` or `./my_data:validation`.

    Raises:
        UsageError: `datasets` is not installed, or the split or columns are not there.
        DataError: the dataset cannot be loaded.

    Example:
        >>> load_hf("openai/gsm8k@main:test").tasks[0].answer
        '18'
    """
    try:
        import datasets
    except ImportError:
        raise UsageError(f"hf:{spec} needs the `datasets` package; install it with `pip install 'rvec[data]'`") from None
    path, config, split = _split_spec(spec)
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except (ValueError, KeyError) as exc:  # an unknown split or config
        raise UsageError(f"hf:{spec}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "cannot be had"
        raise DataError(f"cannot load dataset {path!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    columns = list(rows.column_names)
    question = next((c for c in QUESTION_COLUMNS if c in columns), None)
    answer = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if question is None or answer is None:
        raise UsageError(f"hf:{spec} has columns {', '.join(columns)}; rvec needs one of {'/'.join(QUESTION_COLUMNS)} "
                         f"and one of {'/'.join(ANSWER_COLUMNS)}")
    tasks = []
    for row in rows:
        text, target = str(row[question]), row[answer]
        targets = [str(t) for t in target] if isinstance(target, list) else [str(target)]
        solution = None
        if MARKER in targets[0]:
            solution, targets[0] = targets[0], extract_answer(targets[0]) or ""
        tasks.append(Task(text, targets[0].strip(), solution, accepted=tuple(t.strip() for t in targets[1:])))
    if not tasks:
        raise UsageError(f"hf:{spec} holds no rows")
    name = f"hf:{path.rstrip('/').rsplit('/', 1)[-1]}:{split}"
    if answer != "target":
        return TaskSet(name, tuple(tasks), f"hf:{spec}")
    if all(re.fullmatch(r"\([A-Z]\)", t.answer) for t in tasks):
        fmt = "multiple_choice"
    elif all(re.fullmatch(r"-?\d+", t.answer) for t in tasks):
        fmt = "number"
    else:
        fmt = "answer_is"
    return TaskSet(name, tuple(tasks), f"hf:{spec}", answer_format=fmt)
