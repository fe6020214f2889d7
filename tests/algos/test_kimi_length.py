"""kimi_length: Kimi-1.5 group length penalty against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.kimi_length import kimi_lambda


def ctx_of(lengths: list[int], rewards: list[float], correct: list[bool], group_ids: list[int]) -> AlgoContext:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor(rewards),
        correct=torch.tensor(correct),
        group_ids=torch.tensor(group_ids),
    )


# group 0: L = 2, 6, 4, 3 (L_min 2, L_max 6), group 1: L = 5, 5 (equal), group 2: a singleton
LENGTHS = [2, 6, 4, 3, 5, 5, 3]
CORRECT = [True, False, True, False, True, False, True]
GROUPS = [0, 0, 0, 0, 1, 1, 2]
REWARDS = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_kimi_lambda_per_group() -> None:
    lam = kimi_lambda(torch.tensor(LENGTHS, dtype=torch.float64), torch.tensor(GROUPS), eps=0.0)
    # group 0: 0.5 - (L - 2) / (6 - 2): L=2 -> 0.5, 6 -> -0.5, 4 -> 0.0, 3 -> 0.25
    # group 1: L_max == L_min -> 0;  singleton group 2 -> 0
    assert lam.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.25, 0.0, 0.0, 0.0])


def test_kimi_length_rewards_and_metrics() -> None:
    comp = reward.build("kimi_length", {"eps": 0.0})
    out = comp(ctx_of(LENGTHS, REWARDS, CORRECT, GROUPS))
    # coef 0.4: correct L=2: 1 + 0.4*0.5 = 1.2;  wrong L=6: 0 + 0.4*min(0,-0.5) = -0.2
    # correct L=4: 1 + 0 = 1.0;  wrong L=3: 0 + 0.4*min(0, 0.25) = 0.0;  groups 1, 2 unchanged
    assert out.tolist() == pytest.approx([1.2, -0.2, 1.0, 0.0, 1.0, 0.0, 1.0])
    metrics = comp.prepare(ctx_of(LENGTHS, REWARDS, CORRECT, GROUPS))
    # terms 0.2, -0.2, 0, 0, 0, 0, 0: mean 0, one of 7 negative, one of 7 positive
    assert metrics["kimi_length/mean_term"] == pytest.approx(0.0)
    assert metrics["kimi_length/frac_penalised"] == pytest.approx(1 / 7)
    assert metrics["kimi_length/frac_bonus"] == pytest.approx(1 / 7)
    assert comp.prepare(ctx_of(LENGTHS, REWARDS, CORRECT, GROUPS)) == {}  # metrics are handed out once


def test_kimi_length_default_eps_and_no_in_place_change() -> None:
    ctx = ctx_of(LENGTHS, REWARDS, CORRECT, GROUPS)
    before = ctx.rewards.clone()
    out = reward.build("kimi_length", {"coef": 1.0})(ctx)
    # eps = 1e-6: 0.5 - 0/(4 + 1e-6) = 0.5 for the shortest correct response
    assert out[0].item() == pytest.approx(1.5, abs=1e-6)
    assert torch.equal(ctx.rewards, before)
    assert reward.entry("kimi_length").requires == frozenset({"rewards", "correct", "group_ids"})
