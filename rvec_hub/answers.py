"""Final answers out of model completions (GSM8K convention), and accuracy with a 95 % confidence interval."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MARKER = "####"
# A number as models write it: optional sign, thousands separators, decimals.
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
Z95 = 1.959963984540054
CI_METHODS = ("wilson", "normal")


def normalize(answer: str) -> str:
    """Canonical form of an answer: numbers without separators or trailing zeros, words lower-cased.

    Example:
        >>> normalize("1,200.50")
        '1200.5'
        >>> normalize(" Alice.")
        'alice'
    """
    text = answer.strip().strip(".,;:!?\"'()[]").strip()
    number = text.replace(",", "").replace("$", "")
    try:
        value = float(number)
    except ValueError:
        return text.lower()
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value) if math.isfinite(value) else text.lower()


def extract_answer(completion: str) -> str | None:
    """The final answer in a completion: the first token after the last `####`, else the last number.

    A completion with neither a `####` marker nor a number has no answer (None): a word that merely
    ends the text is not taken as an answer.

    Args:
        completion: the generated text.

    Returns:
        The answer, normalised with `normalize`, or None.

    Example:
        >>> extract_answer("3 + 4 = 7. 7 * 2 = 14. #### 14")
        '14'
        >>> extract_answer("so she has 1,250 dollars left")
        '1250'
    """
    if MARKER in completion:
        tail = completion.rsplit(MARKER, 1)[1].strip()
        first = tail.split("\n", 1)[0].strip()
        number = _NUMBER.match(first)
        if number:
            return normalize(number.group())
        word = _WORD.match(first)
        if word:
            return normalize(word.group())
    numbers = _NUMBER.findall(completion)
    return normalize(numbers[-1]) if numbers else None


def is_correct(completion: str, reference: str) -> bool:
    """True when the completion's final answer equals the reference (numbers compared by value)."""
    predicted = extract_answer(completion)
    return predicted is not None and predicted == normalize(str(reference))


@dataclass(frozen=True)
class Accuracy:
    """Correct answers out of n, with a 95 % confidence interval.

    Attributes:
        correct: questions answered correctly.
        n: questions asked.
        low: lower bound of the 95 % interval.
        high: upper bound of the 95 % interval.
        method: `wilson` or `normal`.
    """

    correct: int
    n: int
    low: float
    high: float
    method: str = "wilson"

    @property
    def value(self) -> float:
        """The accuracy, correct / n (0 when nothing was asked)."""
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"correct": self.correct, "n": self.n, "accuracy": self.value, "ci95": [self.low, self.high], "ci_method": self.method}

    def __str__(self) -> str:
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def confidence_interval(correct: int, n: int, method: str = "wilson", z: float = Z95) -> tuple[float, float]:
    """Two-sided confidence interval of a binomial proportion (95 % by default).

    Args:
        correct: successes.
        n: trials.
        method: `wilson` (Wilson score; keeps its coverage near 0 and 1 and for small n) or `normal` (Wald).
        z: the normal quantile; 1.96 for 95 %.

    Returns:
        (low, high), clipped to [0, 1]; (0, 1) when n is 0.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; use one of {', '.join(CI_METHODS)}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct ({correct}) must lie between 0 and n ({n})")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    if method == "normal":
        half = z * math.sqrt(p * (1 - p) / n)
        return max(0.0, p - half), min(1.0, p + half)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct: int, n: int, method: str = "wilson") -> Accuracy:
    """An `Accuracy` with its 95 % interval."""
    low, high = confidence_interval(correct, n, method)
    return Accuracy(correct, n, low, high, method)
