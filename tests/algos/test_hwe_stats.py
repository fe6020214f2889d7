"""ARES-style high-window-entropy statistics against hand values and a loop reference."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, controller
from rlvr.algos.hwe_stats import difficulty_buckets, high_window_entropy_mask, window_entropy


def _loop_windows(entropy, mask, window):
    out = torch.zeros_like(entropy)
    for i in range(entropy.shape[0]):
        n = int(mask[i].sum())
        for t in range(n):
            out[i, t] = entropy[i, t : min(t + window, n)].mean()
    return out


def test_window_entropy_by_hand():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    # row 0, w=2: (1+2)/2, (2+3)/2, (3+4)/2, 4 ; row 1: (4+0)/2, 0, padding 0
    expected = torch.tensor([[1.5, 2.5, 3.5, 4.0], [2.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(window_entropy(entropy, mask, 2), expected)


def test_window_entropy_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(5, 13, generator=gen)
    lengths = torch.tensor([13, 1, 7, 0, 10])
    mask = (torch.arange(13) < lengths[:, None]).float()
    for window in (1, 3, 8, 20):
        assert torch.allclose(window_entropy(entropy, mask, window), _loop_windows(entropy, mask, window), atol=1e-6)


def test_hwe_mask_and_buckets():
    entropy = torch.tensor([[0.1, 0.1, 5.0, 0.1]])
    mask = torch.ones(1, 4)
    # w=1: window means are the entropies; the 0.98-quantile is 5*0.94+0.1*0.06 -> only position 2 reaches it
    assert high_window_entropy_mask(entropy, mask, window=1).tolist() == [[False, False, True, False]]
    correct = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    # group accuracies 1, 1/3, 0 -> easy, medium, hard
    assert difficulty_buckets(correct, groups).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_hwe_stats_metrics():
    stats = controller.build("hwe_stats", {"window": 1, "quantile": 0.5}).fn
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]),
        old_entropy=torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 5.0, 0.0, 0.0]]),
        correct=torch.tensor([True, False]),
        group_ids=torch.tensor([0, 1]),
    )
    metrics = stats.prepare(ctx)
    # row 0: median 2 -> positions with H >= 2: 2 tokens; row 1: median 5 -> both: 2 tokens
    assert metrics["hwe/count_mean"] == pytest.approx(2.0)
    assert metrics["hwe/count_easy"] == pytest.approx(2.0) and metrics["hwe/count_hard"] == pytest.approx(2.0)
    assert "hwe/count_medium" not in metrics
