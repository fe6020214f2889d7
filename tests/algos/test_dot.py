"""dot (inferred): long-length outliers of fully-correct groups lose `penalty`."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward


def ctx_of() -> AlgoContext:
    # g0: all correct, L 2, 2, 2, 6 -> mu 3, population var (1+1+1+9)/4 = 3, sigma = sqrt(3) = 1.732
    # g1: the same lengths but one wrong answer -> never affected
    lengths = [2, 2, 2, 6, 2, 2, 2, 6]
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    correct = [True] * 7 + [False]
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        group_ids=torch.tensor([0] * 4 + [1] * 4),
    )


def test_dot_penalises_outliers_of_all_correct_groups() -> None:
    comp = reward.build("dot", {"k_sigma": 1.5})
    # threshold mu + 1.5 sigma = 3 + 2.598 = 5.598 < 6 -> row 3 is an outlier: 1 - 1 = 0
    assert comp(ctx_of()).tolist() == pytest.approx([1, 1, 1, 0, 1, 1, 1, 0])
    metrics = comp.prepare(ctx_of())
    assert metrics["dot/frac_penalised"] == pytest.approx(1 / 8)
    assert metrics["dot/frac_all_correct"] == pytest.approx(0.5)
    # k 2: 3 + 3.464 = 6.464 > 6 -> nobody; the default k 3 can never fire with G = 4 (max z = sqrt(3))
    assert reward.build("dot", {"k_sigma": 2.0})(ctx_of()).tolist() == pytest.approx([1] * 7 + [0])
    assert reward.build("dot", {})(ctx_of()).tolist() == pytest.approx([1] * 7 + [0])
    assert reward.build("dot", {"k_sigma": 1.5, "penalty": 0.5})(ctx_of())[3].item() == pytest.approx(0.5)
