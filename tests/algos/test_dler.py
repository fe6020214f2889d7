"""dler: the truncation penalty R <- 0.1 R on truncated responses."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import MissingInputError


def test_dler_truncation_penalty() -> None:
    ctx = AlgoContext(
        response_mask=torch.ones(4, 3),
        rewards=torch.tensor([1.0, 1.0, 0.0, 0.5]),
        truncated=torch.tensor([False, True, True, True]),
    )
    comp = reward.build("dler", {})
    # truncated rows are scaled by 0.1: 1 -> 0.1, 0 -> 0, 0.5 -> 0.05
    assert comp(ctx).tolist() == pytest.approx([1.0, 0.1, 0.0, 0.05])
    metrics = comp.prepare(ctx)
    assert metrics["dler/frac_truncated"] == pytest.approx(0.75)
    assert metrics["dler/frac_penalised"] == pytest.approx(0.5)  # truncated with a non-zero reward: rows 1, 3
    assert reward.build("dler", {"penalty_coef": 0.0})(ctx).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_dler_needs_truncated() -> None:
    with pytest.raises(MissingInputError, match="truncated"):
        reward.build("dler", {})(AlgoContext(response_mask=torch.ones(1, 1), rewards=torch.ones(1)))
