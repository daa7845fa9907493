"""BIG-Bench Hard from BIG-bench's own task files: the same questions in BBH's wording, scored as the harness does.

BBH (Suzgun et al., 2022) took 27 tasks from BIG-bench and rewrote each example as one text with its
options (`Options:\\n(A) …` or `Options:\\n- Yes\\n- No`) and one target (`(A)`, `Yes`, `8`, `] } ]`).
`bbh_question` does that rewrite from the `bigbench` 1.0.0 task files, task by task, so that the questions
read as BBH's do; BBH then kept 250 examples a task (fewer for three), rvec asks all of BIG-bench's (or
`--limit` of them, in a fixed shuffled order).

Three BBH tasks are not in the archive, because BIG-bench generates them in code (`task.py`) rather than
listing them: boolean_expressions, multistep_arithmetic_two and web_of_lies. `bbh` is the other 24.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from .bigbench import Archive, best_choices, letter_options, read_task
from .errors import UsageError
from .tasks import Task, TaskSet

_LETTERED = "letters"
_YES_NO = "- Yes\n- No"


@dataclass(frozen=True)
class BBHTask:
    """One BBH task: where its examples are in BIG-bench, how they are worded, and how answers are read.

    Attributes:
        name: BBH's name (`logical_deduction_three_objects`).
        source: the BIG-bench task or subtask (`logical_deduction/three_objects`); None when not in the archive.
        description: the harness's task description, asked before the question.
        extractor: the harness's flexible-extract filter, a name in `bbh_answers.EXTRACTORS`.
    """

    name: str
    source: str | None
    description: str
    extractor: str


_D_TRACK = "A task requiring determining the final positions of a set of objects given their initial positions and a description of a sequence of swaps."
_D_LOGIC = "A logical deduction task which requires deducing the order of a sequence of objects."
_D_SNARKS = ("Determine which of two sentences is sarcastic.\n\nAccording to Cambridge University Dictionary, sarcasm is \"the use "
             "of remarks that clearly mean the opposite of what they say, made in order to hurt someone's feelings or to criticize "
             "something in a humorous way.\" Sarcastic sentences often contain satirical or ironic utterances, hyperboles, "
             "ambivalent or witty remarks.")
TASKS: dict[str, BBHTask] = {t.name: t for t in [
    BBHTask("boolean_expressions", None, "Evaluate the result of a random Boolean expression.", "true_false"),
    BBHTask("causal_judgement", "causal_judgment", "Answer questions about causal attribution.", "yes_no"),
    BBHTask("date_understanding", "date_understanding", "Infer the date from context.", "multiple_choice"),
    BBHTask("disambiguation_qa", "disambiguation_qa", "Clarify the meaning of sentences with ambiguous pronouns.", "multiple_choice"),
    BBHTask("dyck_languages", "dyck_languages", "Correctly close a Dyck-n word.", "dyck"),
    BBHTask("formal_fallacies", "formal_fallacies_syllogisms_negation", "Distinguish deductively valid arguments from formal fallacies.", "valid_invalid"),
    BBHTask("geometric_shapes", "geometric_shapes", "Name geometric shapes from their SVG paths.", "multiple_choice"),
    BBHTask("hyperbaton", "hyperbaton", "Order adjectives correctly in English sentences.", "multiple_choice"),
    *(BBHTask(f"logical_deduction_{n}_objects", f"logical_deduction/{n}_objects", _D_LOGIC, "multiple_choice") for n in ("three", "five", "seven")),
    BBHTask("movie_recommendation", "movie_recommendation", "Recommend movies similar to the given list of movies.", "multiple_choice"),
    BBHTask("multistep_arithmetic_two", None, "Solve multi-step arithmetic problems.", "number"),
    BBHTask("navigate", "navigate", "Given a series of navigation instructions, determine whether one would end up back at the starting point.", "yes_no"),
    BBHTask("object_counting", "object_counting", "Questions that involve enumerating objects and asking the model to count them.", "number"),
    BBHTask("penguins_in_a_table", "penguins_in_a_table", "Answer questions about a table of penguins and their attributes.", "multiple_choice"),
    BBHTask("reasoning_about_colored_objects", "reasoning_about_colored_objects", "Answer extremely simple questions about the colors of objects on a surface.", "multiple_choice"),
    BBHTask("ruin_names", "ruin_names", "Select the humorous edit that 'ruins' the input movie or musical artist name.", "multiple_choice"),
    BBHTask("salient_translation_error_detection", "salient_translation_error_detection", "Detect the type of error in an English translation of a German source sentence.", "multiple_choice"),
    BBHTask("snarks", "snarks", _D_SNARKS, "multiple_choice"),
    BBHTask("sports_understanding", "sports_understanding", "Determine whether an artificially constructed sentence relating to sports is plausible or not.", "sports"),
    BBHTask("temporal_sequences", "temporal_sequences", "Task description: Answer questions about which times certain events could have occurred.", "multiple_choice"),
    *(BBHTask(f"tracking_shuffled_objects_{n}_objects", f"tracking_shuffled_objects/{n}_objects", _D_TRACK, "multiple_choice") for n in ("three", "five", "seven")),
    BBHTask("web_of_lies", None, "Evaluate a random boolean function expressed as a word problem.", "web_of_lies"),
    BBHTask("word_sorting", "word_sorting", "Sort a list of words.", "word_sort"),
]}
SOURCES = tuple(t.source for t in TASKS.values() if t.source)
AVAILABLE = tuple(name for name, t in TASKS.items() if t.source)
MISSING = tuple(name for name, t in TASKS.items() if not t.source)


def _prefix(task: dict) -> str:
    """BBH's reading of a task's prefix: its own and the example prefix, newlines as spaces."""
    return (task.get("task_prefix", "") + task.get("example_input_prefix", "")).replace("\n", " ")


def _two_quoted(text: str) -> list[str]:
    """hyperbaton's `a " X " b " Y " ?` -> [X, Y]."""
    return [m.strip() for m in re.findall(r'[ab] " (.*?) "', text)]


def _two_marked(text: str) -> list[str]:
    """snarks' `(a) X (b) Y` -> [X, Y] without their final periods."""
    return [m.strip().removesuffix(".") for m in re.split(r"\s*\([ab]\)\s*", text)[1:]]


def _choices(ex: dict, rename: Callable[[str], str] = str) -> tuple[list[str], list[str]]:
    scores = ex["target_scores"]
    return [rename(c) for c in scores], [rename(c) for c in best_choices(scores)]


def _mc(text: str, ex: dict, rename: Callable[[str], str] = str, shuffle: str | None = None) -> tuple[str, list[str]]:
    choices, correct = _choices(ex, rename)
    if shuffle is not None:
        random.Random(shuffle).shuffle(choices)
    return letter_options(text, choices, correct)


def _question(name: str, task: dict, ex: dict, index: int) -> tuple[str, list[str]]:
    """One BIG-bench example in BBH's words: (question, accepted targets)."""
    text = ex["input"]
    if name == "causal_judgement":
        return f"{task['task_prefix'].strip()}\n{text}\nOptions:\n{_YES_NO}", best_choices(ex["target_scores"])
    if name == "navigate":
        yes = {"True": "Yes", "False": "No"}
        return f"{task['task_prefix']} {text}\nOptions:\n{_YES_NO}", [yes[c] for c in best_choices(ex["target_scores"])]
    if name == "formal_fallacies":
        return text.replace("\n ", "\n") + "\nOptions:\n- valid \n- invalid", best_choices(ex["target_scores"])
    if name == "sports_understanding":
        yes = {"plausible": "yes", "implausible": "no"}
        return f'Is the following sentence plausible? "{text}."', [yes[c] for c in best_choices(ex["target_scores"])]
    if name == "dyck_languages":
        return f"{task['task_prefix'].strip()} Input: {text}", best_choices(ex["target_scores"])
    if name == "word_sorting":
        return f"Sort the following words alphabetically: List: {text}", [ex["target"]]
    if name == "object_counting":
        return text, [t for t in ex["target"] if t.lstrip("-").isdigit()] or list(ex["target"])
    if name == "hyperbaton":
        options, best = _two_quoted(text), best_choices(ex["target_scores"])
        return letter_options(text.split(":")[0] + ":", options, [options["ab".index(b)] for b in best])
    if name == "snarks":
        options, best = _two_marked(text), best_choices(ex["target_scores"])
        return letter_options(text.split("(a)")[0].strip(), options, [options["ab".index(b.strip("()"))] for b in best])
    if name == "disambiguation_qa":
        return _mc(f"{task['task_prefix']}Sentence: {text}", ex)
    if name == "movie_recommendation":
        return _mc(f"Find a movie similar to {text}", ex)
    if name.startswith("logical_deduction"):
        return _mc(f"{task['task_prefix'].strip()} {text}", ex, lambda c: c.removesuffix("."))
    if name.startswith("tracking_shuffled_objects"):
        return _mc(text.replace(" \n\n", "\n").strip(), ex, lambda c: c.removesuffix("."))
    if name == "penguins_in_a_table":
        return _mc(_prefix(task) + text.strip().replace("\n\n", "\n"), ex)
    if name == "salient_translation_error_detection":
        return _mc(_prefix(task) + text.strip(), ex)
    if name == "reasoning_about_colored_objects":  # counts are offered as "2" and "two"; BBH keeps the words
        scores = {c: v for c, v in ex["target_scores"].items() if not c.isdigit()}
        return _mc(text, {"target_scores": scores})
    # BIG-bench lists the right answer first in these two; BBH shuffled the options, so does rvec (fixed seed).
    if name == "temporal_sequences":
        return _mc(text.replace("We know that: \n", "We know that:\n"), ex, shuffle=f"{name}/{index}")
    if name == "date_understanding":
        return _mc(text, ex, shuffle=f"{name}/{index}")
    return _mc(text.strip(), ex)  # geometric_shapes, reasoning_about_colored_objects, ruin_names


def bbh_taskset(name: str, task: dict, source: str) -> TaskSet:
    """The BBH task set `name` from its BIG-bench task file (already read and schema-checked)."""
    spec = TASKS[name]
    tasks = []
    for index, ex in enumerate(task["examples"]):
        question, accepted = _question(name, task, ex, index)
        tasks.append(Task(question, accepted[0], accepted=tuple(accepted[1:])))
    return TaskSet(f"bbh:{name}", tuple(tasks), source, answer_format=spec.extractor, description=spec.description + "\n\n")


def load_bbh(name: str, *, archive: Archive | None = None) -> TaskSet:
    """One BBH task (`logical_deduction_three_objects`), read from the BIG-bench archive in the cache.

    Raises:
        UsageError: a name BBH does not have (with the closest), or one of the three not in the archive.
    """
    spec = TASKS.get(name)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
        raise UsageError(f"no BBH task named {name!r}" + (f"; closest: {', '.join(close)}" if close else f"; BBH has {', '.join(AVAILABLE)}"))
    if spec.source is None:
        raise UsageError(f"BBH task {name} is generated by code in BIG-bench, not stored in its task files; "
                         f"the bigbench archive holds {len(AVAILABLE)} of BBH's 27 tasks (`bbh`)")
    archive = archive or Archive()
    path = archive.task_file(spec.source)
    return bbh_taskset(name, read_task(path), f"bigbench:{spec.source}")


def load_bbh_group(*, archive: Archive | None = None) -> list[TaskSet]:
    """Every BBH task the archive holds, one task set each, read in one pass."""
    archive = archive or Archive()
    paths = archive.task_files(SOURCES)
    return [bbh_taskset(name, read_task(paths[TASKS[name].source]), f"bigbench:{TASKS[name].source}") for name in AVAILABLE]


def sample(tasks: TaskSet, n: int | None, seed: int = 0) -> TaskSet:
    """`n` questions of a task set in a fixed random order (all of them, shuffled, when n is None)."""
    order = list(tasks.tasks)
    random.Random(f"{tasks.name}/{seed}").shuffle(order)
    return replace(tasks, tasks=tuple(order[:n] if n is not None else order), source=f"{tasks.source}#shuffled@{seed}")


def demo_tasks(name: str = "tracking_shuffled_objects_three_objects", n: int = 20, seed: int = 0, *, archive: Archive | None = None) -> TaskSet:
    """A small fixed set of real BBH questions: the same `n` for the same name and seed, everywhere.

    Example:
        >>> demo_tasks(n=5).tasks[0].answer  # '(A)', '(B)' or '(C)'
    """
    return sample(load_bbh(name, archive=archive), n, seed)
