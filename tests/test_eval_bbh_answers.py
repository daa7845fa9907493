"""BBH answers read from model-like completions as lm-evaluation-harness's flexible-extract filters read them."""

from __future__ import annotations

import pytest

from rvec_hub.bbh_answers import FALLBACK, exact_match, extract, is_correct

LOGIC = ("The following paragraphs each describe a set of three objects arranged in a fixed order. On a shelf, there are three "
         "books: a black book, an orange book, and a blue book.\nOptions:\n(A) The black book is the leftmost\n"
         "(B) The orange book is the leftmost\n(C) The blue book is the leftmost")
SORT = "Sort the following words alphabetically: List: oven costume counterpart"


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The blue book is right of the orange book, so (C) is out. So the answer is (A).", "(A)"),  # the last letter counts
        ("So the answer is the black book is the leftmost.", "(A)"),  # no letter: the option's text, case and punctuation ignored
        ("Answer: B", "(B)"),  # neither: a letter after a colon
        ("I cannot tell.", FALLBACK),
    ],
)
def test_multiple_choice_takes_the_last_letter_then_the_option_text_then_a_bare_letter(completion: str, answer: str) -> None:
    assert extract(completion, LOGIC, "multiple_choice") == answer


def test_without_chain_of_thought_the_first_match_counts() -> None:
    assert extract("(B), not (A)", LOGIC, "multiple_choice", cot=False) == "(B)"
    assert extract("(B), not (A)", LOGIC, "multiple_choice", cot=True) == "(A)"


@pytest.mark.parametrize(
    ("extractor", "completion", "answer"),
    [
        ("yes_no", "He did not intend it. So the answer is No.", "No"),
        ("true_false", "not True is False. So the answer is False.", "False"),
        ("valid_invalid", "The conclusion does not follow. So the answer is invalid.", "invalid"),
        ("number", "a flute (1), a piano (2), a trombone (3). So the answer is 3.", "3"),
        ("number", "So I have eleven instruments.", "11"),  # no digits: number words
        ("number", "Counting one by one: a, b. That is two hundred and three", "203"),
        ("number", "Let's count step-by-step, so the answer is eleven.", "-"),  # the harness's quirk: '-' is a match
        ("dyck", "We close { then [. So the answer is ] } ].", "] } ]"),
        ("sports", "This is plausible for a hockey player. So the answer is yes.", "yes"),
        ("sports", "A goalkeeper does not shoot free throws, so it is not plausible.", "no"),
        ("web_of_lies", "So Raymond does not tell the truth.", "no"),
        ("answer_is", "Let me think. The answer is 24.", "24"),
        ("answer_is", "no conclusion here", FALLBACK),
    ],
)
def test_each_filter_reads_what_the_harness_reads(extractor: str, completion: str, answer: str) -> None:
    assert extract(completion, "unused", extractor) == answer


def test_word_sort_orders_the_listed_words_by_their_last_mention() -> None:
    completion = "oven starts with o, costume with c. Sorted: costume, counterpart, oven. So the answer is costume counterpart oven."
    assert extract(completion, SORT, "word_sort") == "costume counterpart oven"
    assert extract("no words here", SORT, "word_sort") == ""


def test_exact_match_ignores_case_a_final_period_commas_and_quotes() -> None:
    assert exact_match("(A).", "(A)")
    assert exact_match("YES", "Yes")
    assert exact_match('"costume, counterpart"', "costume counterpart")
    assert not exact_match("(A)", "(B)")
    assert not exact_match(FALLBACK, "(A)")


def test_is_correct_accepts_any_accepted_answer() -> None:
    assert is_correct("So the answer is (B).", LOGIC, ("(A)", "(B)"), "multiple_choice")
    assert not is_correct("So the answer is (C).", LOGIC, ("(A)", "(B)"), "multiple_choice")
