"""mask_truncated: DAPO overlong filtering as a loss mask."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, token_weight


def test_mask_truncated() -> None:
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]),
        truncated=torch.tensor([False, True]),
    )
    out = token_weight.build("mask_truncated")(ctx)
    assert out.weights.tolist() == [[1.0] * 4] * 2
    assert out.loss_mask.tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert out.metrics["mask_truncated/frac_seqs_masked"] == pytest.approx(0.5)
    assert out.metrics["mask_truncated/frac_tokens_masked"] == pytest.approx(0.4)  # 2 of 5 valid tokens
    assert token_weight.entry("mask_truncated").requires == frozenset({"truncated"})
