"""Evaluation results in a vector's card: `model-index` front matter and a results section (`--write-card`)."""

from __future__ import annotations

import os
from pathlib import Path

from .card import CARD_BEGIN, CARD_END, carry_evaluation, hub_id_or_none, join_card, split_card
from .errors import UsageError
from .evaluate import COT_SUFFIX, EvalReport, Score

__all__ = ["CARD_BEGIN", "CARD_END", "carry_evaluation", "eval_results", "model_index", "write_card"]


def eval_results(report: EvalReport, vector: str, base_id: str, default_alpha: float = 1.0) -> list:
    """The `EvalResult`s of one vector (and the base they compare to), the evaluated base named by Hub id."""
    from huggingface_hub import EvalResult

    def alpha(s: Score) -> float:
        value = s.setting.vectors[0][1]
        return default_alpha if value is None else value

    results = []
    for tasks in dict.fromkeys(s.tasks for s in report.scores):
        mine = [s for s in report.scores if s.tasks == tasks and (not s.setting.vectors or (
            len(s.setting.vectors) == 1 and Path(s.setting.vectors[0][0]).resolve() == Path(vector).resolve()))]
        if not any(s.setting.vectors for s in mine):
            continue
        for s in mine:
            model = f"base {base_id}" + ("" if not s.setting.vectors else f" {alpha(s):+g}·vector")
            results.append(EvalResult(
                task_type="text-generation", task_name="Reasoning", dataset_type=s.source, dataset_name=tasks,
                metric_type="accuracy", metric_value=round(s.result.value, 4), verified=False,
                metric_name=(f"accuracy ({model}{', CoT' if report.options.cot else ''}; "
                             f"95% CI {s.result.low:.3f}-{s.result.high:.3f}, n={s.result.n})"),
            ))
    return results


def model_index(report: EvalReport, vector: str, name: str, base_id: str, default_alpha: float = 1.0) -> list[dict]:
    """The Hub `model-index` entry for the scores of one vector, as ModelCardData writes it."""
    from huggingface_hub import ModelCardData

    results = eval_results(report, vector, base_id, default_alpha)
    if not results:
        return [{"name": name, "results": []}]
    return ModelCardData(model_name=name, eval_results=results).to_dict()["model-index"]


def evaluated_base_id(report: EvalReport, suggested: str | None, base_id: str | None = None) -> str:
    """The Hub id a card names the evaluated base by: given, else the report's base when it is a Hub id, else
    the vector's suggested base (a local copy of it, the usual case).

    Raises:
        UsageError: when none of them is a Hub id; a card never publishes a local path.
    """
    for candidate in (base_id, report.base.partition("@")[0] if report.base else None, suggested):
        if hub_id_or_none(candidate):
            return candidate  # type: ignore[return-value]
    raise UsageError("the evaluated base is a local directory and the vector names no base model; "
                     "give the base's Hub id (--base-id ID) so the card does not publish a local path")


def write_card(vector: str | Path, report: EvalReport, *, base_id: str | None = None) -> Path:
    """Record a report in a vector's README.md: `model-index` in the front matter and a results table.

    Only the card changes: `rvec.json` and the payload, whose checksums the manifest holds, are untouched.
    A previous evaluation section is replaced.

    Args:
        vector: the vector directory.
        report: the evaluation.
        base_id: Hub id of the evaluated base (default: the report's base if it is a Hub id, else the
            vector's suggested base).

    Returns:
        The card's path.
    """
    from .manifest import load_manifest

    directory = Path(vector)
    manifest = load_manifest(directory)
    card = directory / "README.md"
    meta, body = split_card(card.read_text()) if card.exists() else ({}, "")
    base = evaluated_base_id(report, manifest.base.model_id, base_id)
    index = model_index(report, str(directory), manifest.name, base, manifest.default_alpha)
    if not index[0]["results"]:
        raise UsageError(f"the evaluation has no score for {directory}; pass it as --vector to record its effect")
    meta["model-index"] = index
    mode = "with" if report.options.cot else "without"
    table = report.table().replace(str(directory), manifest.name)
    section = (f"{CARD_BEGIN}\n## Evaluation\n\nBase `{base}`, greedy decoding, questions asked {mode} "
               f"\"{COT_SUFFIX}\"; accuracy with a 95 % confidence interval (`rvec eval`).\n\n```\n{table}\n```\n{CARD_END}\n")
    if CARD_BEGIN in body and CARD_END in body:
        before, rest = body.split(CARD_BEGIN, 1)
        body = before + section + rest.split(CARD_END, 1)[1].lstrip("\n")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(join_card(meta, body))
    os.replace(tmp, card)
    return card
