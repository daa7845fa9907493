"""Final-answer extraction (GSM8K convention) and 95 % confidence intervals."""

from __future__ import annotations

import pytest

from rvec_hub.answers import accuracy, confidence_interval, extract_answer, is_correct, normalize


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("3 + 4 = 7. 7 * 2 = 14. #### 14", "14"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("#### 1,250 dollars", "1250"),
        ("#### $18.00", "18"),
        ("the answer is 3.50", "3.5"),
        ("she ends with -4 apples", "-4"),
        ("2 + 2 = 4, then 4 * 10 = 40.", "40"),
        ("Ann and Bob swap: Ann has red. #### Red.", "red"),
        ("#### 12\n\nQuestion: what is 5 + 5? 10", "12"),
    ],
)
def test_extract_answer_takes_the_marker_then_the_last_number(completion: str, answer: str) -> None:
    assert extract_answer(completion) == answer


def test_extract_answer_finds_nothing_without_marker_or_number() -> None:
    assert extract_answer("I do not know") is None
    assert extract_answer("") is None


def test_is_correct_compares_numbers_by_value_and_words_without_case() -> None:
    assert is_correct("so 10 + 2 = 12.0 #### 12.0", "12")
    assert is_correct("... #### 1,000", "1000")
    assert is_correct("#### Blue", "blue")
    assert not is_correct("#### 13", "12")
    assert not is_correct("no idea", "12")


def test_normalize_strips_separators_and_trailing_zeros() -> None:
    assert normalize("1,200.50") == "1200.5"
    assert normalize("007") == "7"
    assert normalize(" Alice.") == "alice"


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = confidence_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_stays_inside_zero_one_at_the_edges() -> None:
    low, high = confidence_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = confidence_interval(20, 20)
    assert high == pytest.approx(1.0) and 0.8 < low < 0.9


def test_normal_interval_is_p_plus_minus_1_96_standard_errors() -> None:
    low, high = confidence_interval(50, 100, "normal")
    assert low == pytest.approx(0.5 - 1.959964 * 0.05, abs=1e-6)
    assert high == pytest.approx(0.5 + 1.959964 * 0.05, abs=1e-6)
    assert confidence_interval(0, 10, "normal") == (0.0, 0.0)


def test_interval_of_nothing_asked_is_everything() -> None:
    assert confidence_interval(0, 0) == (0.0, 1.0)


def test_interval_refuses_impossible_counts_and_unknown_methods() -> None:
    with pytest.raises(ValueError, match="between 0 and n"):
        confidence_interval(11, 10)
    with pytest.raises(ValueError, match="wilson"):
        confidence_interval(1, 10, "exact")


def test_accuracy_reports_value_interval_and_json() -> None:
    acc = accuracy(3, 4)
    assert acc.value == 0.75
    assert str(acc).startswith("75.0% [")
    data = acc.to_dict()
    assert data["correct"] == 3 and data["n"] == 4 and data["ci_method"] == "wilson"
    assert data["ci95"][0] < 0.75 < data["ci95"][1]
