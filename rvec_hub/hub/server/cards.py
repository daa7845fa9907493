"""Model-card metadata: the YAML front matter of README.md, and the tags the Hub derives from it."""

from __future__ import annotations

import re
from typing import Any

import yaml

_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
MAX_CARD_BYTES = 1 << 20  # front matter lives at the top; a huge README is not parsed
MAX_CARD_NODES = 100_000


class CardError(ValueError):
    """README.md front matter that is not a YAML mapping."""


def parse_card_data(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a model card as a dict, None when there is none.

    Raises:
        CardError: when front matter is present but is not valid YAML or not a mapping.
    """
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise CardError(f"README.md front matter is not valid YAML: {err}") from None
    except RecursionError:
        raise CardError("README.md front matter is nested too deeply") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise CardError("README.md front matter must be a YAML mapping (key: value lines)")
    try:
        return _json_safe(data, [MAX_CARD_NODES])
    except RecursionError:
        raise CardError("README.md front matter is nested too deeply") from None


def card_data_or_none(raw: bytes) -> dict[str, Any] | None:
    """Lenient variant for listings: a broken card yields None instead of an error."""
    try:
        return parse_card_data(raw[:MAX_CARD_BYTES].decode("utf-8", errors="replace"))
    except CardError:
        return None


def tags_from_card(card: dict[str, Any] | None) -> list[str]:
    """Tags as the Hub derives them: card `tags`, `library_name`, `license:X`, `base_model:X`, `dataset:X`."""
    if not card:
        return []
    tags: list[str] = []
    tags += [str(t) for t in _as_list(card.get("tags"))]
    tags += [str(t) for t in _as_list(card.get("library_name"))]
    tags += [f"license:{t}" for t in _as_list(card.get("license"))]
    tags += [f"base_model:{t}" for t in _as_list(card.get("base_model"))]
    tags += [f"dataset:{t}" for t in _as_list(card.get("datasets"))]
    return list(dict.fromkeys(tags))  # dedupe, keep order


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None and not isinstance(v, (dict, list))]
    if isinstance(value, dict):
        return []
    return [value]


def _json_safe(value: Any, budget: list[int]) -> Any:
    """YAML dates and other scalars become JSON-friendly values; at most `budget[0]` nodes.

    The budget stops YAML aliases from expanding a small document into a huge one ("billion laughs").
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise CardError(f"README.md front matter has more than {MAX_CARD_NODES} values (or expands to that many "
                        "through YAML aliases)")
    if isinstance(value, dict):
        return {str(k): _json_safe(v, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, budget) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
