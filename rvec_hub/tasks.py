"""Evaluation task sets: JSONL files of (question, answer), and built-in synthetic sets generated from seeds.

The built-in sets are small and deterministic, so that a result can be reproduced anywhere:

- `arith`: multi-step arithmetic word problems (two or three operations), with a worked solution;
- `tracking`: a non-math set for cross-domain transfer: objects passed between people by swaps,
  "who holds what at the end" (in the spirit of BIG-Bench Hard's tracking_shuffled_objects).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .answers import MARKER, extract_answer
from .errors import UsageError

DEFAULT_SEED = 1234
DEFAULT_SIZE = 200
NAMES = ["Ann", "Bob", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "Jo"]
ITEMS = ["apples", "pens", "coins", "cards", "books", "shells", "stamps", "eggs"]
COLORS = ["red", "blue", "green", "white", "black", "pink"]


@dataclass(frozen=True)
class Task:
    """One question with its reference answer and, where known, a worked solution ending in `#### answer`.

    `accepted` lists other answers that count as correct too (a BIG-bench example with two right choices).
    """

    question: str
    answer: str
    solution: str | None = None
    accepted: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSet:
    """A named list of tasks, where it came from (a file path, `builtin:NAME@SEED`, `bigbench:TASK`), and how
    its questions are asked and scored.

    Attributes:
        answer_format: `gsm8k` (`Question: …\nAnswer:`, the number after `####` or the last number), or the
            name of a BIG-Bench Hard answer filter (`multiple_choice`, `number`, …; see `bbh_answers`), which
            asks `Q: …\nA:` and scores as lm-evaluation-harness scores BBH.
        description: text asked before every question (BBH's task description).
    """

    name: str
    tasks: tuple[Task, ...]
    source: str
    answer_format: str = "gsm8k"
    description: str = ""

    def limit(self, n: int | None) -> TaskSet:
        """The first n tasks (all of them when n is None)."""
        return self if n is None else replace(self, tasks=self.tasks[:n])


def _arith(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        c = rng.randint(1, a + b)
        x, y = a + b, a + b - c
        q = f"{name} has {a} {item}. {name} buys {b} more and then gives away {c}. How many {item} does {name} have now?"
        steps = [f"{a} + {b} = {x}", f"{x} - {c} = {y}"]
    elif kind == 1:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
        x, y = a * b, a * b + c
        q = f"{name} has {a} boxes with {b} {item} in each box and finds {c} more {item}. How many {item} does {name} have?"
        steps = [f"{a} * {b} = {x}", f"{x} + {c} = {y}"]
    elif kind == 2:
        a, b, c = rng.randint(10, 40), rng.randint(1, 9), rng.randint(2, 5)
        b = min(b, a - 1)
        x, y = a - b, (a - b) * c
        q = f"{name} had {a} {item} and lost {b}. Then the number of {item} grew {c} times. How many {item} are there now?"
        steps = [f"{a} - {b} = {x}", f"{x} * {c} = {y}"]
    else:
        a, b, c, d = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 20), rng.randint(1, 9)
        x, y, z = a * b, a * b + c, a * b + c - d
        q = (f"{name} buys {a} packs of {b} {item}, gets {c} {item} as a gift and uses {d}. "
             f"How many {item} are left?")
        steps = [f"{a} * {b} = {x}", f"{x} + {c} = {y}", f"{y} - {d} = {z}"]
        y = z
    return Task(q, str(y), ". ".join(steps) + f". {MARKER} {y}")


def _tracking(rng: random.Random) -> Task:
    people = rng.sample(NAMES, 3)
    colors = rng.sample(COLORS, 3)
    holds = dict(zip(people, colors))
    intro = ", ".join(f"{p} has a {c} ball" for p, c in holds.items())
    swaps, steps = [], []
    for _ in range(rng.randint(2, 3)):
        p, r = rng.sample(people, 2)
        holds[p], holds[r] = holds[r], holds[p]
        swaps.append(f"{p} and {r} swap balls")
        steps.append(f"{p} and {r} swap: {p} has {holds[p]}, {r} has {holds[r]}")
    who = rng.choice(people)
    q = f"{intro}. Then {'; then '.join(swaps)}. What color is the ball {who} has?"
    return Task(q, holds[who], ". ".join(steps) + f". {MARKER} {holds[who]}")


GENERATORS: dict[str, Callable[[random.Random], Task]] = {"arith": _arith, "tracking": _tracking}


def generate(name: str, n: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> TaskSet:
    """A built-in synthetic task set: the same name, size and seed always give the same tasks.

    Args:
        name: `arith` or `tracking`.
        n: how many tasks.
        seed: generator seed; train on other seeds than you evaluate on.

    Returns:
        The task set, without duplicate questions.

    Example:
        >>> generate("arith", 3).tasks[0].answer
    """
    if name not in GENERATORS:
        raise UsageError(f"unknown built-in task set {name!r}; built-in sets are {', '.join(GENERATORS)}; "
                         "or pass a JSONL file, bbh, bbh:NAME, bigbench:NAME or hf:DATASET")
    rng = random.Random(f"{name}/{seed}")
    seen: set[str] = set()
    tasks = []
    for _ in range(50 * n):
        if len(tasks) == n:
            break
        task = GENERATORS[name](rng)
        if task.question not in seen:
            seen.add(task.question)
            tasks.append(task)
    return TaskSet(name, tuple(tasks), f"builtin:{name}@{seed}")


def load_jsonl(path: str | Path) -> TaskSet:
    """Tasks from a JSONL file, one `{"question": ..., "answer": ...}` object a line.

    A GSM8K-style answer (a worked solution ending in `#### 72`) is split into the solution and `72`.

    Raises:
        UsageError: listing every bad line.
    """
    path = Path(path)
    tasks, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append(f"line {number}: not JSON")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        missing = [k for k in ("question", "answer") if not str(row.get(k, "")).strip()]
        if missing:
            problems.append(f"line {number}: missing {' and '.join(repr(k) for k in missing)}")
            continue
        answer, solution = str(row["answer"]), row.get("solution")
        if MARKER in answer:
            solution, answer = answer, extract_answer(answer) or ""
        tasks.append(Task(str(row["question"]), answer.strip(), solution))
    if problems:
        raise UsageError(f"{path} has {len(problems)} bad line(s), first {problems[0]}; each line must be "
                         '{"question": ..., "answer": ...}', problems=problems)
    if not tasks:
        raise UsageError(f"{path} holds no tasks; write one JSON object per line with question and answer")
    return TaskSet(path.stem, tuple(tasks), str(path))


def load_task_sets(spec: str, *, seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE) -> list[TaskSet]:
    """The task sets one `--tasks` value names: `bbh` is BBH's tasks in the BIG-bench archive, one set each;
    anything else is the one set `load_tasks` reads."""
    if spec == "bbh":
        from .bbh import load_bbh_group, sample

        return [sample(t, None, seed) for t in load_bbh_group()]
    return [load_tasks(spec, seed=seed, size=size)]


def load_tasks(spec: str, *, seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE) -> TaskSet:
    """A task set from a JSONL path, a built-in name (`arith`, `tracking`, or `NAME@SEED`), a BIG-bench task
    (`bigbench:NAME[/SUBTASK]`), a BBH task (`bbh:NAME`) or a Hugging Face dataset (`hf:DATASET[@CONFIG][:SPLIT]`).

    BIG-bench and BBH questions come in a fixed shuffled order (`seed`), so that `limit` takes a fair sample.
    """
    if Path(spec).is_file():
        return load_jsonl(spec)
    scheme, _, rest = spec.partition(":")
    if scheme in ("bigbench", "bbh") and rest:
        from .bbh import load_bbh, sample
        from .bigbench import load_bigbench

        return sample(load_bigbench(rest) if scheme == "bigbench" else load_bbh(rest), None, seed)
    if scheme == "hf" and rest:
        from .hf_tasks import load_hf

        return load_hf(rest)
    name, _, seed_text = spec.partition("@")
    if seed_text:
        try:
            seed = int(seed_text)
        except ValueError:
            raise UsageError(f"task set {spec!r}: the seed after @ must be an integer") from None
    if name not in GENERATORS and (spec.endswith(".jsonl") or "/" in spec):
        raise UsageError(f"task file {spec} does not exist")
    return generate(name, size, seed)


def write_jsonl(tasks: TaskSet, path: str | Path) -> Path:
    """Write a task set as JSONL (question, answer, solution), e.g. to evaluate it with other tools."""
    path = Path(path)
    lines = [json.dumps({"question": t.question, "answer": t.answer, **({"solution": t.solution} if t.solution else {})}) for t in tasks.tasks]
    path.write_text("\n".join(lines) + "\n")
    return path
