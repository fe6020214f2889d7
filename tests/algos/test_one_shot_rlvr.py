"""1-shot RLVR (arXiv 2504.20571): example-selection scores by hand, and the zero policy loss."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss, regularizer
from rlvr.algos.one_shot_rlvr import rank_examples, selection_scores
from rlvr.errors import ConfigError

HISTORY = {"a": [0.0, 0.5, 1.0], "b": [0.25, 0.25], "c": [1.0, 1.0, 1.0, 1.0], "d": [0.0, 1.0], "e": []}


def test_historical_variance_by_hand() -> None:
    scores = selection_scores(HISTORY)
    # population std: a = sqrt(((.5)^2 + 0 + (.5)^2) / 3); an example never visited gets no score
    assert scores == pytest.approx({"a": math.sqrt(1 / 6), "b": 0.0, "c": 0.0, "d": 0.5})
    assert rank_examples(HISTORY) == ["d", "a", "b", "c"]  # b before c: ties keep the history's order


def test_lim_by_hand() -> None:
    # first 2 visits; mean curve (.3125, .6875); denominator (1-.3125)^2 + (1-.6875)^2 = .5703125
    scores = selection_scores(HISTORY, "lim")
    den = 0.5703125
    assert scores == pytest.approx(
        {"a": 1 - 0.1328125 / den, "b": 1 - 0.1953125 / den, "c": 1 - 0.5703125 / den, "d": 1 - 0.1953125 / den}
    )
    assert rank_examples(HISTORY, "lim") == ["a", "b", "d", "c"]
    assert selection_scores({"x": [1.0, 1.0], "y": [1.0, 1.0, 1.0]}, "lim") == {"x": 1.0, "y": 1.0}
    with pytest.raises(ConfigError, match="method"):
        selection_scores(HISTORY, "random")  # type: ignore[arg-type]


def test_none_policy_loss_keeps_the_graph_with_zero_gradient() -> None:
    logprobs = torch.tensor([[-0.5, -1.0, float("nan")]], requires_grad=True)
    entropy = torch.tensor([[0.3, 0.7, float("nan")]], requires_grad=True)
    ctx = AlgoContext(response_mask=torch.tensor([[1.0, 1.0, 0.0]]), logprobs=logprobs, entropy=entropy)
    out = policy_loss.build("none")(ctx)
    assert out.per_token.tolist() == [[0.0, 0.0, 0.0]] and out.per_token.requires_grad
    bonus = regularizer.build("entropy_bonus", {"coef": 1.0})(ctx)
    loss = ctx.aggregate(out.per_token) + bonus.loss
    grad_lp, grad_h = torch.autograd.grad(loss, [logprobs, entropy])
    assert grad_lp.tolist() == [[0.0, 0.0, 0.0]]
    assert grad_h.tolist() == [[-0.5, -0.5, 0.0]]  # only the entropy bonus -1 * mean(H) trains
