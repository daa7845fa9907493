"""Evaluation results in a vector's card: `model-index` front matter and a results section (`--write-card`)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError
from .evaluate import COT_SUFFIX, EvalReport, Score

CARD_BEGIN = "<!-- rvec-eval -->"
CARD_END = "<!-- /rvec-eval -->"


def _split_card(text: str) -> tuple[dict, str]:
    import yaml

    if text.startswith("---\n") and "\n---\n" in text[4:]:
        head, body = text[4:].split("\n---\n", 1)
        meta = yaml.safe_load(head) or {}
        if isinstance(meta, dict):
            return meta, body
    return {}, text


def model_index(report: EvalReport, vector: str, name: str, default_alpha: float = 1.0) -> list[dict]:
    """The Hub `model-index` entry for the scores of one vector (and the base they compare to)."""

    def alpha(s: Score) -> float:
        value = s.setting.vectors[0][1]
        return default_alpha if value is None else value

    results = []
    for tasks in dict.fromkeys(s.tasks for s in report.scores):
        mine = [s for s in report.scores if s.tasks == tasks and (not s.setting.vectors or (
            len(s.setting.vectors) == 1 and Path(s.setting.vectors[0][0]).resolve() == Path(vector).resolve()))]
        if not any(s.setting.vectors for s in mine):
            continue
        metrics = [{
            "type": "accuracy", "value": round(s.result.value, 4), "verified": False,
            "name": f"accuracy ({'base' if not s.setting.vectors else f'base {alpha(s):+g}·vector'}"
                    f"{', CoT' if report.options.cot else ''}; 95% CI {s.result.low:.3f}-{s.result.high:.3f}, n={s.result.n})",
        } for s in mine]
        results.append({
            "task": {"type": "text-generation", "name": "Reasoning"},
            "dataset": {"type": mine[0].source, "name": tasks},
            "metrics": metrics,
        })
    return [{"name": name, "results": results}]


def write_card(vector: str | Path, report: EvalReport) -> Path:
    """Record a report in a vector's README.md: `model-index` in the front matter and a results table.

    Only the card changes: `rvec.json` and the payload, whose checksums the manifest holds, are untouched.
    A previous evaluation section is replaced.

    Returns:
        The card's path.
    """
    import yaml

    from .manifest import load_manifest

    directory = Path(vector)
    manifest = load_manifest(directory)
    card = directory / "README.md"
    meta, body = _split_card(card.read_text() if card.exists() else "")
    index = model_index(report, str(directory), manifest.name, manifest.default_alpha)
    if not index[0]["results"]:
        raise UsageError(f"the evaluation has no score for {directory}; pass it as --vector to record its effect")
    meta["model-index"] = index
    mode = "with" if report.options.cot else "without"
    section = (f"{CARD_BEGIN}\n## Evaluation\n\nBase `{report.base}`, greedy decoding, questions asked {mode} "
               f"\"{COT_SUFFIX}\"; accuracy with a 95 % confidence interval (`rvec eval`).\n\n```\n{report.table()}\n```\n{CARD_END}\n")
    if CARD_BEGIN in body and CARD_END in body:
        before, rest = body.split(CARD_BEGIN, 1)
        body = before + section + rest.split(CARD_END, 1)[1].lstrip("\n")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, card)
    return card


def carry_evaluation(card: str, local_card: str | Path) -> str:
    """A freshly rendered card with the `model-index` and evaluation section of a local card, if it has them.

    `rvec push` renders the card from the manifest; this keeps what `rvec eval --write-card` recorded.
    """
    import yaml

    local = Path(local_card)
    if not local.is_file():
        return card
    old_meta, old_body = _split_card(local.read_text())
    if "model-index" not in old_meta:
        return card
    meta, body = _split_card(card)
    meta["model-index"] = old_meta["model-index"]
    if CARD_BEGIN in old_body and CARD_END in old_body and CARD_BEGIN not in body:
        section = CARD_BEGIN + old_body.split(CARD_BEGIN, 1)[1].split(CARD_END, 1)[0] + CARD_END + "\n"
        body = body.rstrip("\n") + "\n\n" + section
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body
