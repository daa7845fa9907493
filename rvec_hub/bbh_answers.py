"""Answers out of BIG-Bench Hard completions, scored as lm-evaluation-harness scores `bbh_cot_zeroshot`.

The harness runs each completion through a task's "flexible-extract" filter, keeps the first completion
(`take_first`), then compares it with the target by `exact_match` after removing a final period, commas,
backslashes, newlines and double quotes, ignoring case. The filters and regexes below are the harness's
(`lm_eval/tasks/bbh/cot_zeroshot/*.yaml` and `utils.py`), with the same fallbacks; with chain of thought
the last match counts (`group_select: -1`), without it the first (`bbh_zeroshot`, `group_select: 0`).

Where rvec differs: the harness reads number words with the `word2number` package; rvec reads them with
`_words_to_number`, which follows the same rules (units and tens summed, scaled by hundred, thousand,
million, billion) without the extra dependency.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable

FALLBACK = "[invalid]"
# exact_match's `regexes_to_ignore`, in the harness's order, then `ignore_case`.
IGNORE = (r"\.$", ",", r"\\", "\n", '"')
CHOICE = r"(\([A-Z]\))"
NUMBER = r"([-0-9]+)"
STRICT = (r"((?<=The answer is )(.*)(?=.)|(?<=the answer is )(.*)(?=.)|(?<=The answer: )(.*)(?=.)"
          r"|(?<=The final answer: )(.*)(?=.))")
_PATTERNS = {
    "true_false": r"\b(True|False)\b",
    "yes_no": r"\b(Yes|No|yes|no)\b",
    "valid_invalid": r"\b(valid|invalid)\b",
    "dyck": r"(?<= )([\" \[\(<{}>\)\]]+)|([\" \[\(<{}>\)\]]+)",
    "answer_is": STRICT,
}
_MAPS = {
    "sports": {r"\b(no|not plausible)\b": "no", r"\b(yes|plausible)\b": "yes"},
    "web_of_lies": {r"\b(no|does not tell the truth|is not telling the truth)\b": "no",
                    r"\b(yes|tells the truth|is telling the truth)\b": "yes"},
}
_PUNCT = dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))
# The harness's English number words (it uses the `regex` package for the `(?|...)` branch reset).
_NUMBER_WORDS = (
    "((?:(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?:|een|y)|ten|eleven|twelve|"
    "fourteen|hundred|thousand|(?:m|b|tr)illion)(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?:|teen|ty)|"
    "eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion|[^\\S\r\n]|,|and|&)+)?(?:zero|one|two|three|four|"
    "five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion))"
)
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def _find(pattern: re.Pattern, text: str, group: int, convert: dict[str, str] | None = None) -> str:
    """The harness's `find_match`: the selected match, its first non-empty group, stripped ('' when none)."""
    matches = pattern.findall(text)
    if not matches:
        return ""
    match = matches[group]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "")
    match = match.strip()
    return convert.get(match, match) if convert and match else match


def _ignore(text: str) -> str:
    """`filter_ignores` with ignore_case and ignore_punctuation (Unicode punctuation removed)."""
    return text.lower().translate(_PUNCT)


def _regex(name: str) -> Callable[[str, str, int], str]:
    pattern = re.compile(_PATTERNS[name])
    return lambda completion, question, group: _find(pattern, completion, group) or FALLBACK


def _multiple_choice(completion: str, question: str, group: int) -> str:
    """`MultiChoiceRegexFilter`: `(X)`, else an option's text, else `: X`; each mapped to `(X)`."""
    found = _find(re.compile(CHOICE), completion, group)
    if found:
        return found
    to_letter, letters = {}, []
    for i, option in enumerate(re.findall(r"\([A-Z]\)([^\n^(]*)", question)):
        letter = chr(ord("A") + i)
        to_letter[_ignore(option.strip())] = f"({letter})"
        letters.append(letter)
    by_text = re.compile("|".join(re.escape(text) for text in to_letter))
    found = _find(by_text, _ignore(completion), group, to_letter)
    if not found:
        found = _find(re.compile(rf":[\s]*({'|'.join(letters)})"), completion, group, {x: f"({x})" for x in letters})
    return found or FALLBACK


def _words_to_number(words: str) -> int | None:
    """'one hundred and twenty three' -> 123, as word2number reads it; None when nothing is a number word."""
    total, current, seen = 0, 0, False
    for word in re.findall(r"[a-z]+", words.lower()):
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
        else:
            continue
        seen = True
    return total + current if seen else None


def _number(completion: str, question: str, group: int) -> str:
    """`NumberParseRegexFilter`: a run of digits and minus signs, else English number words."""
    found = _find(re.compile(NUMBER), completion, group)
    if not found:
        import regex

        words = _find(regex.compile(_NUMBER_WORDS), completion.lower(), group)
        value = _words_to_number(words) if words else None
        found = str(value) if value is not None else ""
    return found or FALLBACK


def _word_sort(completion: str, question: str, group: int) -> str:
    """`WordSortFilter`: the listed words in the order of their last mention in the completion."""
    words = question.split("List:")[1].strip().split() if "List:" in question else []
    if not words:
        return ""
    try:
        pattern = re.compile("|".join(rf"\b{w}\b" for w in words))
    except re.error:
        pattern = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in words))
    last = {}
    for w in reversed(pattern.findall(completion)):
        last.setdefault(w, None)
    return " ".join(reversed(last))


def _mapped(name: str) -> Callable[[str, str, int], str]:
    """`MapRegexFilter` with ignore_case: the selected match of any pattern, mapped to its value."""
    table = [(re.compile(p), v) for p, v in _MAPS[name].items()]
    combined = re.compile("|".join(_MAPS[name]))

    def extract(completion: str, question: str, group: int) -> str:
        whole = _find(combined, completion.lower(), group)
        if whole:
            for pattern, value in table:
                if _find(pattern, whole.lower(), group):
                    return value
        return FALLBACK
    return extract


# Extractor name -> f(completion, question, group_select) -> the answer the harness would compare.
EXTRACTORS: dict[str, Callable[[str, str, int], str]] = {
    **{name: _regex(name) for name in _PATTERNS},
    **{name: _mapped(name) for name in _MAPS},
    "multiple_choice": _multiple_choice,
    "number": _number,
    "word_sort": _word_sort,
}


def _clean(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(prediction: str, reference: str) -> bool:
    """The harness's `exact_match` for BBH: equal after the ignored patterns are removed, ignoring case."""
    return _clean(prediction) == _clean(reference)


def extract(completion: str, question: str, extractor: str, *, cot: bool = True) -> str:
    """The answer a completion gives, as the harness's flexible-extract filter reads it.

    Args:
        completion: the generated text (already cut at the stop sequences).
        question: the question as asked (multiple-choice and word-sort filters read its options / list).
        extractor: a name from `EXTRACTORS`.
        cot: chain of thought (the last match counts) or a direct answer (the first).

    Example:
        >>> extract("... so the answer is (B).", "Q\\nOptions:\\n(A) x\\n(B) y", "multiple_choice")
        '(B)'
    """
    return EXTRACTORS[extractor](completion, question, -1 if cot else 0)


def is_correct(completion: str, question: str, answers: tuple[str, ...], extractor: str, *, cot: bool = True) -> bool:
    """True when the extracted answer exactly matches one of the accepted answers."""
    predicted = extract(completion, question, extractor, cot=cot)
    return any(exact_match(predicted, a) for a in answers)
