"""logprob_reward: the four answer-likelihood scores and the combine modes by hand; the missing splice input."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import MissingInputError

NAN = float("nan")


def make_ctx(with_answer: bool = True) -> AlgoContext:
    extras = {}
    if with_answer:
        extras = {
            "reference_answer_logprobs": torch.tensor([[-0.5, -1.5, NAN], [-0.1, -0.2, -0.3]]),
            "reference_answer_mask": torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        }
    return AlgoContext(response_mask=torch.ones(2, 4), rewards=torch.tensor([1.0, 0.0]), extras=extras)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("sum_logprob", [-2.0, -0.6]),
        ("mean_logprob", [-1.0, -0.2]),
        ("prob", [math.exp(-2.0), math.exp(-0.6)]),
        ("mean_prob", [(math.exp(-0.5) + math.exp(-1.5)) / 2, (math.exp(-0.1) + math.exp(-0.2) + math.exp(-0.3)) / 3]),
    ],
)
def test_scores_replace_the_reward(score: str, expected: list[float]) -> None:
    shaper = reward.build("logprob_reward", {"score": score})
    assert shaper(make_ctx()).tolist() == pytest.approx(expected, rel=1e-6)


def test_add_mode_metrics_and_missing_input() -> None:
    shaper = reward.build("logprob_reward", {"combine": "add", "coef": 0.5})
    assert shaper(make_ctx()).tolist() == pytest.approx([1.0 - 1.0, 0.0 - 0.3], rel=1e-6)
    metrics = shaper.prepare(make_ctx())
    assert metrics["logprob_reward/score_min"] == pytest.approx(-1.0)
    assert metrics["logprob_reward/answer_tokens"] == 2.5
    with pytest.raises(MissingInputError, match="reference_answer_logprobs"):
        reward.build("logprob_reward")(make_ctx(with_answer=False))
