"""adr_reward's preferred mode and bonus, adr_switch's cross-entropy / margin loss and gradient, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, regularizer, reward
from rlvr.errors import ConfigError, MissingInputError

TOKENS = {"short_token": "S", "long_token": "L"}


def make_ctx() -> AlgoContext:
    # group 0: long rows 0,1 (1 correct), short rows 2,3 (1 correct) -> tie -> short preferred
    # group 1: long rows 4,5 (2 correct), short rows 6,7 (0 correct) -> long preferred
    # group 2: rows 8, 9 both long -> no preference
    correct = [True, False, True, False, True, True, False, False, True, False]
    return AlgoContext(
        response_mask=torch.ones(10, 1),
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        group_ids=torch.tensor([0] * 4 + [1] * 4 + [2] * 2),
        extras={"reasoning_mode": torch.tensor([1, 1, 0, 0, 1, 1, 0, 0, 1, 1])},
    )


def test_preferred_mode_and_bonus() -> None:
    ctx = make_ctx()
    shaper = reward.build("adr_reward", {"bonus": 0.5})
    out = shaper(ctx)
    assert ctx.extras["preferred_mode"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, -1, -1]
    # bonuses: row 2 (correct short in group 0), rows 4, 5 (correct long in group 1)
    assert out.tolist() == [1.0, 0.0, 1.5, 0.0, 1.5, 1.5, 0.0, 0.0, 1.0, 0.0]
    metrics = shaper.prepare(ctx)
    assert metrics["adr_reward/prefer_short_frac"] == 0.5
    # delta -0.1: short must beat long by 0.1, so group 0's tie now prefers long
    strict = make_ctx()
    reward.build("adr_reward", {"delta": -0.1})(strict)
    assert strict.extras["preferred_mode"].tolist()[:4] == [1, 1, 1, 1]


def test_switch_loss_and_gradient() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]], requires_grad=True)
    ctx = AlgoContext(response_mask=torch.ones(3, 1), extras={"mode_logits": logits, "preferred_mode": torch.tensor([1, 1, -1])})
    ctx.micro_batch_fraction = 0.5
    out = regularizer.build("adr_switch", {**TOKENS, "coef": 1.0})(ctx)
    ce0 = -math.log(math.exp(0.0) / (math.exp(2.0) + 1.0))
    ce1 = -math.log(math.exp(1.0) / (1.0 + math.exp(1.0)))
    assert out.loss.item() == pytest.approx((ce0 + ce1) / 3 * 0.5)
    assert out.metrics["adr_switch/agreement"] == 0.5
    out.loss.backward()
    p0 = math.exp(2.0) / (math.exp(2.0) + 1.0)
    assert logits.grad[0].tolist() == pytest.approx([p0 / 6, -p0 / 6])  # softmax - onehot, / 3 rows * 0.5
    assert logits.grad[2].tolist() == [0.0, 0.0]
    margin = regularizer.build("adr_switch", {**TOKENS, "coef": 1.0, "form": "margin", "margin": 1.5})(ctx)
    # row 0: 1.5 - (0 - 2) = 3.5; row 1: 1.5 - (1 - 0) = 0.5
    assert margin.loss.item() == pytest.approx((3.5 + 0.5) / 3 * 0.5)


def test_missing_inputs() -> None:
    ctx = make_ctx()
    del ctx.extras["reasoning_mode"]
    with pytest.raises(MissingInputError, match="reasoning_mode"):
        reward.build("adr_reward")(ctx)
    with pytest.raises(MissingInputError, match="mode_logits"):
        regularizer.build("adr_switch", TOKENS)(AlgoContext(response_mask=torch.ones(2, 1)))
    bare = AlgoContext(response_mask=torch.ones(2, 1), extras={"mode_logits": torch.zeros(2, 2)})
    with pytest.raises(MissingInputError, match="preferred_mode"):
        regularizer.build("adr_switch", TOKENS)(bare)


def test_switch_calls_the_trainers_forward_with_the_micro_batch_rows() -> None:
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    asked = []

    def forward(rows: torch.Tensor) -> torch.Tensor:
        asked.append(rows.tolist())
        return table[rows]

    ctx = AlgoContext(
        response_mask=torch.ones(3, 1),
        extras={"mode_logits": forward, "preferred_mode": torch.tensor([-1, 1, 1]), "row_index": torch.arange(3)},
    )
    part = ctx.select(torch.tensor([2, 1]))  # a micro-batch: rows 2 and 1 of the rollout
    out = regularizer.build("adr_switch", {**TOKENS, "coef": 1.0})(part)
    assert asked == [[2, 1]]
    ce = -math.log(math.exp(1.0) / (1.0 + math.exp(1.0))) - math.log(1.0 / (math.exp(2.0) + 1.0))
    assert out.loss.item() == pytest.approx(ce / 2)


def test_mode_knobs_are_checked() -> None:
    assert reward.build("adr_reward").fn.mode_prompts == ("[Please answer with Short CoT]\n{prompt}", "[Please answer with Long CoT]\n{prompt}")
    with pytest.raises(ConfigError, match="prompt"):
        reward.build("adr_reward", {"long_prompt": "long please"})
    with pytest.raises(ConfigError, match="differ"):
        reward.build("adr_reward", {"long_prompt": "{prompt}", "short_prompt": "{prompt}"})
    with pytest.raises(ConfigError, match="two different"):
        regularizer.build("adr_switch", {"short_token": "x", "long_token": "x"})
    with pytest.raises(ConfigError, match="needs knob"):
        regularizer.build("adr_switch")
