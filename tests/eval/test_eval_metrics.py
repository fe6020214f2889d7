"""Sampling metrics, checked against values computed by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from rlvr.eval.metrics import (
    accuracy_per_1k_tokens,
    answer_entropy,
    avg_at_n,
    default_ks,
    distinct_answers,
    distinct_n,
    empirical_support,
    maj_at_k,
    ngrams,
    pass_at_k,
    percentile,
    support_change,
)
from rlvr.eval.runner import compare_to_base, summarize

# ------------------------------------------------------------------------------------------ pass@k


def test_pass_at_k_by_hand() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)  # 1 - C(7,4)/C(10,4)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 0, 4) == 0.0  # nothing correct
    assert pass_at_k(4, 4, 1) == 1.0  # everything correct
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong: every k-subset holds a correct one
    assert pass_at_k(4, 1, 4) == 1.0  # k = n with one correct
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    for bad in [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_pass_at_k_is_the_subset_probability() -> None:
    """Unbiased: equals the fraction of k-subsets of the n samples that contain a correct one."""
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


# ------------------------------------------------------------------------------------------ maj@k


def test_maj_at_k_majority_wins() -> None:
    answers, correct = ["a", "b", "a", "c"], [True, False, True, False]
    assert maj_at_k(answers, correct, 4) == 1.0  # a: 2 votes
    assert maj_at_k(answers, correct, 3) == 1.0
    assert maj_at_k(["b", "a", "b"], [False, True, False], 3) == 0.0  # wrong majority


def test_maj_at_k_ties_score_the_mean_of_tied_answers() -> None:
    assert maj_at_k(["a", "b"], [True, False], 2) == 0.5
    assert maj_at_k(["b", "a"], [False, True], 2) == 0.5  # order does not matter
    assert maj_at_k(["x", "y", "z"], [False, True, True], 3) == pytest.approx(2 / 3)
    assert maj_at_k(["a", "b", "a", "b", "c"], [True, False, True, False, True], 5) == 0.5  # c is not tied


def test_maj_at_k_uses_first_k_and_ignores_missing_answers() -> None:
    answers, correct = ["a", "b", "b", "b"], [True, False, False, False]
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 4) == 0.0
    assert maj_at_k([None, None, "a"], [False, False, True], 3) == 1.0  # None does not vote
    assert maj_at_k([None, None], [False, False], 2) == 0.0  # no answer at all
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True, False], 1)
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True], 2)


# ------------------------------------------------------------------------------------------ diversity


def test_distinct_n_by_hand() -> None:
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert distinct_n(["a b a b"], 1) == 0.5  # {a, b} / 4
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # {ab, ba} / 3
    assert distinct_n(["a b a b"], 3) == 1.0  # {aba, bab} / 2
    assert distinct_n([[1, 2], [1, 2]], 1) == 0.5  # pooled over sequences
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5
    assert distinct_n([[1, 2], [2, 1]], 2) == 1.0
    assert distinct_n([[1], [2]], 2) == 0.0  # no bigram at all
    assert distinct_n([], 1) == 0.0


def test_distinct_answers_and_avg() -> None:
    assert distinct_answers(["a", None, "a", "b"]) == 2
    assert distinct_answers([None]) == 0
    assert avg_at_n([True, False, True, True]) == 0.75
    assert avg_at_n([]) == 0.0


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


def test_accuracy_per_1k_tokens_and_default_ks() -> None:
    assert accuracy_per_1k_tokens(3, 1500) == 2.0
    assert accuracy_per_1k_tokens(0, 0) == 0.0
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_summarize_by_hand() -> None:
    records = [
        {"correct": [True, False], "answers": ["2", "3"], "lengths": [10, 30], "truncated": [False, True],
         "entropy": [0.5, 1.0], "diversity": {"distinct_1": 0.5}},
        {"correct": [False, False], "answers": [None, "4"], "lengths": [20, 40], "truncated": [False, False],
         "entropy": [1.0, 0.25], "diversity": {"distinct_1": 1.0}},
    ]
    m = summarize(records, n=2, ks=[1, 2])
    assert m["num_prompts"] == 2 and m["num_responses"] == 4
    assert m["accuracy"] == 0.25 and m["avg@2"] == 0.25
    assert m["pass@1"] == 0.25 and m["pass@2"] == 0.5
    assert m["maj@1"] == 0.5  # prompt 1: "2" (correct); prompt 2: "4" (the only vote, wrong)
    assert m["maj@2"] == 0.25  # prompt 1: tie 2/3 -> 0.5; prompt 2: 0
    assert m["length/mean"] == 25 and m["length/max"] == 40 and m["length/p50"] == 25
    assert m["length/correct_mean"] == 10 and m["length/incorrect_mean"] == 30
    assert m["truncated_frac"] == 0.25
    assert m["entropy/mean"] == pytest.approx((5 + 30 + 20 + 10) / 100)  # token-weighted
    assert m["answers/distinct_mean"] == 1.5 and m["answers/none_frac"] == 0.25
    assert m["answers/entropy"] == pytest.approx(math.log(2))  # two different answers on each prompt
    assert m["distinct_1"] == 0.75
    assert m["tokens/total"] == 100 and m["accuracy_per_1k_tokens"] == 10.0


# ------------------------------------------------------------------ The Invisible Leash (arXiv 2507.14843)


def test_answer_entropy_by_hand() -> None:
    assert answer_entropy(["a", "a", "b", "b"]) == pytest.approx(math.log(2))
    # p = 3/4, 1/4: -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.2157616 + 0.3465736
    assert answer_entropy(["a", "a", "a", "b"]) == pytest.approx(0.5623351)
    assert answer_entropy(["x"] * 4) == 0.0 and answer_entropy([]) == 0.0
    # no answer = an answer of its own: p = 1/2, 1/4, 1/4 -> 0.3465736 + 2 * 0.3465736
    assert answer_entropy(["a", None, "a", None]) == pytest.approx(1.0397208)
    assert answer_entropy([None, None]) == pytest.approx(math.log(2))


def test_empirical_support_and_its_change() -> None:
    keys, correct = ["a", "b", "a", None, "c"], [True, True, True, True, False]
    assert empirical_support(keys, correct) == {"a", "b"}  # c is wrong, None is no answer
    assert empirical_support(keys, correct, min_frac=0.4) == {"a"}  # a: 2 of 5 samples >= 0.4 * 5
    assert empirical_support(keys, [1.0, 0.5, 1.0, 1.0, 1.0]) == {"a", "c"}  # a score counts at >= 1
    assert support_change({"a", "b", "c"}, {"b", "d"}) == {"preserved": 1, "shrunk": 2, "expanded": 1}
    with pytest.raises(ValueError):
        empirical_support(["a"], [True, False])


def _rec(pid: str, answers: list, correct: list, responses: list | None = None) -> dict:
    return {"id": pid, "answers": answers, "correct": correct, "responses": responses or [str(a) for a in answers]}


def test_compare_to_base_by_hand() -> None:
    base = [
        _rec("p1", ["a", "b", "c", None], [True, True, False, False], ["a.", "b", "c", "?"]),
        _rec("p2", ["x", "x", "y", "y"], [False] * 4),
        _rec("p3", ["q"] * 4, [True] * 4),
        _rec("gone", ["a"], [True]),  # not evaluated for the new model: ignored
    ]
    model = [
        _rec("p1", ["a", "a", "a", "d"], [True, True, True, False], ["a.", "a!", " a. ", "d"]),
        _rec("p2", ["z", "x", "z", "z"], [True, False, True, True], ["z", "x", "z", "z2"]),
        _rec("p3", ["r"] * 4, [False] * 4),
        _rec("new", ["a"] * 4, [True] * 4),  # no base samples: ignored
    ]
    m = compare_to_base(model, base)
    assert m["support/prompts"] == 3
    # answers: p1 {a,b} -> {a}; p2 {} -> {z}; p3 {q} -> {}
    assert (m["support/answer/base"], m["support/answer/model"]) == (3, 2)
    assert (m["support/answer/preserved"], m["support/answer/shrunk"], m["support/answer/expanded"]) == (1, 2, 1)
    assert m["support/answer/preservation"] == pytest.approx(1 / 3)
    # responses (whitespace-normalised): p1 {a., b} -> {a., a!}; p2 {} -> {z, z2}; p3 {q} -> {}
    assert (m["support/response/base"], m["support/response/model"]) == (3, 4)
    assert (m["support/response/preserved"], m["support/response/shrunk"], m["support/response/expanded"]) == (1, 2, 3)
    # solved: p1 both, p2 model only, p3 base only
    assert (m["support/prompts_both"], m["support/prompts_base_only"]) == (1, 1)
    assert (m["support/prompts_model_only"], m["support/prompts_neither"]) == (1, 0)
    # frequency >= 1/2 of the 4 samples: p1 {} -> {a}; p2 {} -> {z}; p3 {q} -> {}
    strict = compare_to_base(model, base, min_frac=0.5)
    assert (strict["support/answer/base"], strict["support/answer/model"]) == (1, 2)
    assert (strict["support/answer/preserved"], strict["support/answer/shrunk"], strict["support/answer/expanded"]) == (0, 1, 2)
    assert strict["support/answer/preservation"] == 0.0
    assert math.isnan(compare_to_base(model, [_rec("p2", ["x"], [False])])["support/answer/preservation"])
