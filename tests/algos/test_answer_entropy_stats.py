"""Answer-level entropy and empirical support per group (The Invisible Leash, arXiv 2507.14843), by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, controller
from rlvr.errors import ConfigError, MissingInputError

# group 5: "3*5+7" twice, "7+5*3" (the same value, 22), no answer; group 2: "1+1" twice, both wrong
TEXTS = ["3*5+7", "1+1", "3*5+7\nso", "7+5*3", "1+1", ""]
GROUPS = [5, 2, 5, 5, 2, 5]
CORRECT = [1, 0, 1, 1, 0, 0]


def _ctx(texts=TEXTS, groups=GROUPS, correct=CORRECT) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.ones(len(texts), 3),
        group_ids=torch.tensor(groups),
        correct=torch.tensor(correct),
        extras={"responses": list(texts)},
    )


def _stats(**knobs):
    return controller.build("answer_entropy_stats", {"extract": "first_line", **knobs}).fn


def test_answer_entropy_stats_by_hand():
    m = _stats().prepare(_ctx())
    # group 5: answers 3*5+7 (2), 7+5*3 (1), none (1): H = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.0397208 = 0.75 ln 4
    # group 2: one answer: H = 0
    assert m["answer_entropy/entropy"] == pytest.approx(1.0397208 / 2)
    assert m["answer_entropy/entropy_norm"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["answer_entropy/distinct"] == pytest.approx((2 + 1) / 2)
    assert m["answer_entropy/support"] == pytest.approx((2 + 0) / 2)  # two distinct correct expressions; none
    assert m["answer_entropy/missing_frac"] == pytest.approx(1 / 6)


def test_answer_entropy_stats_by_value_and_missing_cluster():
    # by value all three expressions of group 5 are 22: sizes 3, 1 -> H = 0.5623351; support 1
    m = _stats(equivalence="expression_value").prepare(_ctx())
    assert m["answer_entropy/entropy"] == pytest.approx(0.5623351 / 2)
    assert m["answer_entropy/distinct"] == 1.0 and m["answer_entropy/support"] == 0.5
    # two responses without an answer: their own answers (ln 2) or one shared answer (0)
    empty = _ctx(["", " "], [0, 0], [0, 0])
    assert _stats().prepare(empty)["answer_entropy/entropy"] == pytest.approx(math.log(2))
    assert _stats(missing="cluster").prepare(empty)["answer_entropy/entropy"] == 0.0
    # a group of one response has no normalised entropy: left out of that mean
    single = _stats().prepare(_ctx(["1", "2", "2"], [0, 1, 1], [1, 1, 0]))
    assert single["answer_entropy/entropy_norm"] == 0.0 and single["answer_entropy/entropy"] == 0.0


def test_answer_entropy_stats_changes_nothing_and_checks_inputs():
    stats = _stats()
    assert stats.after_step({"train/loss": 1.0}) == {}
    with pytest.raises(MissingInputError, match="responses"):
        stats.prepare(AlgoContext(response_mask=torch.ones(1, 1), group_ids=torch.zeros(1), correct=torch.ones(1)))
    with pytest.raises(ConfigError):
        controller.build("answer_entropy_stats", {"extract": "first_line", "equivalence": "bogus"})
