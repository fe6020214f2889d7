"""Clipping-bias diagnostics by sign of the advantage (arXiv 2512.16912) against hand-counted tokens."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.ppo_clip import clip_bias_metrics

# token:     0     1     2     3     4     5     6 (padding)
RATIO = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 3.0, 9.0]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 0.0, 5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])


def test_clip_bias_by_hand():
    # A > 0: tokens 0, 1, 4 -> r=1.5 above 1.2 (clipped), r=0.5 below 0.8 (not clipped), r=1.1 inside
    # A < 0: tokens 2, 3 -> r=0.5 below 0.8 (clipped), r=1.5 above 1.2 (not clipped)
    # token 5 (A = 0) counts only in the sign shares; padding token 6 nowhere
    m = clip_bias_metrics(RATIO, ADV, MASK, 0.2, 0.2)
    assert m["clip/pos_high_frac"] == pytest.approx(1 / 3) and m["clip/pos_low_frac"] == pytest.approx(1 / 3)
    assert m["clip/neg_low_frac"] == pytest.approx(1 / 2) and m["clip/neg_high_frac"] == pytest.approx(1 / 2)
    assert m["clip/pos_frac"] == pytest.approx(3 / 6) and m["clip/neg_frac"] == pytest.approx(2 / 6)
    wide = clip_bias_metrics(RATIO, ADV, MASK, 0.6, 0.6)  # range [0.4, 1.6]: nothing beyond it
    assert all(wide[k] == 0.0 for k in ("clip/pos_high_frac", "clip/pos_low_frac", "clip/neg_low_frac", "clip/neg_high_frac"))
    # per-token bounds (HAPO-H's adaptive clip): clip_high 0.6 on token 0, 0.05 on token 4
    per_token = torch.tensor([[0.6, 0.2, 0.2, 0.2, 0.05, 0.2, 0.2]])
    m = clip_bias_metrics(RATIO, ADV, MASK, 0.2, per_token)
    assert m["clip/pos_high_frac"] == pytest.approx(1 / 3)  # token 4 (1.1 > 1.05), not token 0 (1.5 < 1.6)
    assert m["clip/neg_high_frac"] == pytest.approx(1 / 2)
    only_pos = clip_bias_metrics(RATIO, ADV.abs(), MASK, 0.2, 0.2)  # no negative advantage: its shares are 0
    assert only_pos["clip/neg_low_frac"] == 0.0 and only_pos["clip/neg_frac"] == 0.0


def _ctx(ratios: list[float], advs: list[float]) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.ones(1, len(ratios)),
        logprobs=torch.tensor([[math.log(r) for r in ratios]]),
        old_logprobs=torch.zeros(1, len(ratios)),
        advantages=torch.tensor([advs]),
    )


def test_ppo_clip_logs_clip_bias_consistent_with_clip_fracs():
    ctx = _ctx([1.5, 0.5, 0.5, 1.5, 1.1], [1.0, 1.0, -1.0, -1.0, 2.0])
    out = policy_loss.build("ppo_clip", {})(ctx)
    m = out.metrics
    assert m["clip/pos_high_frac"] == pytest.approx(1 / 3) and m["clip/neg_low_frac"] == pytest.approx(1 / 2)
    assert m["clip/pos_high_frac"] * m["clip/pos_frac"] == pytest.approx(m["clip_frac_high"])
    assert m["clip/neg_low_frac"] * m["clip/neg_frac"] == pytest.approx(m["clip_frac_low"])
    # the loss is PPO's: max(-A r, -A clip(r, 0.8, 1.2))
    assert out.per_token[0].tolist() == pytest.approx([-1.2, -0.5, 0.8, 1.5, -2.2], abs=1e-6)


def test_gspo_logs_clip_bias_on_the_sequence_ratio():
    # one sequence, mean log-ratio ln(1.5): s = 1.5 for every token, above GSPO's 1 + 4e-4, A > 0
    ctx = _ctx([1.5, 1.5], [1.0, 1.0])
    m = policy_loss.build("gspo", {})(ctx).metrics
    assert m["clip/pos_high_frac"] == pytest.approx(1.0) and m["clip/pos_low_frac"] == 0.0 and m["clip/neg_frac"] == 0.0
