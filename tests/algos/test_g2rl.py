"""G2RL's reward scaler by hand: group novelty of the gradient features (max and mean cosine), the
bounded scaler, and which rewards it multiplies."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.g2rl import group_novelty, novelty_scale
from rlvr.errors import MissingInputError

# group 0: two identical directions and one orthogonal; group 1: one response alone
FEATURES = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
GROUPS = torch.tensor([0, 0, 0, 1])


def test_group_novelty() -> None:
    # cos(1, 2) = 1, cos(1, 3) = cos(2, 3) = 0
    assert group_novelty(FEATURES, GROUPS, "max").tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    assert group_novelty(FEATURES, GROUPS, "mean").tolist() == pytest.approx([0.5, 0.5, 1.0, 0.0])
    # a response without tokens (feature 0) has cosine 0 with every other
    zero = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert group_novelty(zero, torch.tensor([0, 0]), "max").tolist() == pytest.approx([1.0, 1.0])


def test_scale_is_centred_per_group_and_bounded() -> None:
    novelty = group_novelty(FEATURES, GROUPS, "max")  # group 0 mean 1/3
    assert novelty_scale(novelty, GROUPS, 0.25, 0.2).tolist() == pytest.approx([1 - 1 / 12, 1 - 1 / 12, 1 + 1 / 6, 1.0])
    assert novelty_scale(novelty, GROUPS, 1.0, 0.2).tolist() == pytest.approx([0.8, 0.8, 1.2, 1.0])


def ctx(rewards: list[float]) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.ones(4, 2), rewards=torch.tensor(rewards), group_ids=GROUPS, extras={"old_gradient_feature": FEATURES}
    )


def test_positive_rewards_only_by_default() -> None:
    shaper = reward.build("g2rl", {"coef": 0.25})
    assert shaper(ctx([1.0, -1.0, 1.0, 1.0])).tolist() == pytest.approx([1 - 1 / 12, -1.0, 1 + 1 / 6, 1.0])
    everything = reward.build("g2rl", {"coef": 0.25, "apply_to": "all"})
    assert everything(ctx([1.0, -1.0, 1.0, 1.0])).tolist() == pytest.approx([1 - 1 / 12, -(1 - 1 / 12), 1 + 1 / 6, 1.0])
    metrics = shaper.prepare(ctx([1.0, 0.0, 1.0, 1.0]))
    assert metrics["g2rl/scale_max"] == pytest.approx(1 + 1 / 6)


def test_needs_the_gradient_feature() -> None:
    with pytest.raises(MissingInputError, match="old_gradient_feature"):
        reward.build("g2rl")(AlgoContext(response_mask=torch.ones(2, 2), rewards=torch.ones(2), group_ids=torch.zeros(2)))
    assert "old_gradient_feature" in reward.entry("g2rl").requires
