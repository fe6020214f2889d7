"""budget_curriculum: the budget schedules and the thinking-length reward."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.budget_curriculum import budget_at, budget_reward


def test_budget_schedules() -> None:
    # exponential: 256 * 0.7^floor(t/50)
    assert budget_at(0, 256, 0.7, 50) == 256
    assert budget_at(49, 256, 0.7, 50) == 256
    assert budget_at(50, 256, 0.7, 50) == pytest.approx(179.2)  # 256 * 0.7
    assert budget_at(100, 256, 0.7, 50) == pytest.approx(125.44)  # 256 * 0.49
    assert budget_at(1000, 256, 0.7, 50) == 1.0  # 256 * 0.7^20 = 0.204 -> max(1, .)
    # linear: 256 - 76.8 * floor(t/50), slope (1 - 0.7) * 256 = 76.8
    assert budget_at(50, 256, 0.7, 50, "linear") == pytest.approx(179.2)
    assert budget_at(100, 256, 0.7, 50, "linear") == pytest.approx(102.4)
    assert budget_at(200, 256, 0.7, 50, "linear") == 1.0  # 256 - 307.2 < 1
    assert budget_at(100, 256, 0.7, 50, "linear", slope=100) == 56.0


def test_budget_reward_shape() -> None:
    # B = 8: L 4, 8 -> 1;  L 11 -> 1 - 3/8 = 0.625;  L 16, 20 -> 0
    assert budget_reward(torch.tensor([4, 8, 11, 16, 20]), 8).tolist() == pytest.approx([1, 1, 0.625, 0, 0])


def test_budget_curriculum_reward_on_thinking_length() -> None:
    texts = ["abc</think>x", "</think>yy", "zzzz", "ab</think>", "w" * 18]
    lengths = [13, 11, 5, 6, 18]  # rows 0-3 end with EOS (one token more than the text); row 4 is cut off
    truncated = [False, False, False, False, True]
    correct = [True, True, False, True, True]
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0] * n + [0.0] * (18 - n) for n in lengths]),
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        truncated=torch.tensor(truncated),
        step=10,
        extras={"responses": texts},
    )
    comp = reward.build("budget_curriculum", {"b0": 16, "gamma": 0.5, "interval": 10})
    # B(10) = 16 * 0.5 = 8. thinking lengths: row 0 exact (12 chars = 12 text tokens): 3 + 8 = 11;
    # row 1 exact: 8;  row 2 no marker: all 5;  row 3 approx (10 chars, 5 text tokens): round(6 * 10/10) = 6;
    # row 4 no marker: 18.  r_len = 0.625, 1, 1, 1, 0; x coef 0.5 on correct rows (row 2 is wrong)
    assert comp(ctx).tolist() == pytest.approx([1.3125, 1.5, 0.0, 1.5, 1.0])
    metrics = comp.prepare(ctx)
    assert metrics["budget_curriculum/budget"] == 8.0
    assert metrics["budget_curriculum/frac_within_budget"] == pytest.approx(0.6)  # 8, 5, 6 of 11, 8, 5, 6, 18
    assert metrics["budget_curriculum/mean_think_length"] == pytest.approx(48 / 5)
    assert metrics["budget_curriculum/frac_split_exact"] == pytest.approx(0.4)
    assert metrics["budget_curriculum/frac_split_approx"] == pytest.approx(0.2)
    assert metrics["budget_curriculum/frac_split_no_marker"] == pytest.approx(0.4)
    # think_marker "" -> whole lengths 13, 11, 5, 6, 18: r_len 0.375, 0.625, -, 1, 0
    whole = reward.build("budget_curriculum", {"b0": 16, "gamma": 0.5, "interval": 10, "think_marker": ""})
    assert whole(ctx).tolist() == pytest.approx([1.1875, 1.3125, 0.0, 1.5, 1.0])
