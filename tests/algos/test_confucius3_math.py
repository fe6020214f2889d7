"""Confucius3-Math: targeted entropy regularization and policy-specific hardness weighting, by hand."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, advantage, regularizer
from rlvr.errors import ConfigError

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def ter_ctx(values, agg_mode="token-mean", fraction=1.0) -> tuple[AlgoContext, torch.Tensor]:
    entropy = torch.tensor(values, requires_grad=True)
    ctx = AlgoContext(response_mask=MASK, entropy=entropy, agg_mode=agg_mode, micro_batch_fraction=fraction)
    return ctx, entropy


def test_ter_above_target_pushes_entropy_down() -> None:
    # token-mean H = (1 + 0.5 + 0.2) / 3 = 0.5667 > 0.55: loss |0.01667|, gradient +coef/3 per valid token
    ctx, entropy = ter_ctx([[1.0, 0.5, float("nan")], [0.2, float("nan"), float("nan")]])
    out = regularizer.build("confucius_ter", {"coef": 1.0})(ctx)
    assert out.loss.item() == pytest.approx(1.7 / 3 - 0.55)
    (grad,) = torch.autograd.grad(out.loss, entropy)
    assert grad.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3, 0.0, 0.0])
    assert out.metrics["confucius_ter/deviation"] == pytest.approx(1.7 / 3 - 0.55)


def test_ter_below_target_pushes_entropy_up_and_scales_by_fraction() -> None:
    # seq-mean-token-mean H = (0.75 + 0.2) / 2 = 0.475 < 0.55: loss 0.075 * f, gradient -f/2 * (1/2, 1)
    ctx, entropy = ter_ctx([[1.0, 0.5, 0.0], [0.2, 0.0, 0.0]], agg_mode="seq-mean-token-mean", fraction=0.5)
    out = regularizer.build("confucius_ter", {"coef": 1.0})(ctx)
    assert out.loss.item() == pytest.approx(0.075 * 0.5)
    (grad,) = torch.autograd.grad(out.loss, entropy)
    assert grad.flatten().tolist() == pytest.approx([-0.125, -0.125, 0.0, -0.25, 0.0, 0.0])
    sq = regularizer.build("confucius_ter", {"coef": 1.0, "form": "sq"})(ter_ctx([[1.0, 0.5, 0.0], [0.2, 0.0, 0.0]], "seq-mean-token-mean")[0])
    assert sq.loss.item() == pytest.approx(0.075**2)
    with pytest.raises(ConfigError, match="form"):
        regularizer.build("confucius_ter", {"form": "huber"}).fn(ctx)


REWARDS = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3]


def pshw_ctx() -> AlgoContext:
    return AlgoContext(response_mask=torch.ones(12, 2), rewards=torch.tensor(REWARDS), group_ids=torch.tensor(GROUPS))


def test_pshw_by_hand() -> None:
    # signed R: group 0 (1,1,1,-1) mu = .5, D = -.256 * .5 + 1.256 = 1.128; group 1 mu = -.5, D = 1.384;
    # group 2 all correct: D = 1.0 and A = 0; group 3 all wrong: D = 1.512 and A = 0
    fn = advantage.build("confucius_pshw").fn
    adv = fn(pshw_ctx())
    expected = [0.5 * 1.128] * 3 + [-1.5 * 1.128] + [-0.5 * 1.384] * 3 + [1.5 * 1.384] + [0.0] * 4
    assert adv[:, 0].tolist() == pytest.approx(expected)
    assert torch.equal(adv[:, 0], adv[:, 1])
    assert fn.metrics["confucius_pshw/weight_mean"] == pytest.approx((4 * 1.128 + 4 * 1.384 + 2 * 1.0 + 2 * 1.512) / 12)


def test_pshw_identity_map_and_grpo_base() -> None:
    # raw rewards: group 0 mu = .75, D = -.256 * .75 + 1.256 = 1.064; base R - mu = .25 / -.75
    adv = advantage.build("confucius_pshw", {"reward_map": "identity"})(pshw_ctx())
    assert adv[:4, 0].tolist() == pytest.approx([0.25 * 1.064] * 3 + [-0.75 * 1.064])
    # GRPO is invariant to R -> 2R - 1 (up to eps), so the signed PSHW on a GRPO base is GRPO * D
    ctx = pshw_ctx()
    weighted = advantage.build("confucius_pshw", {"base": "grpo"})(ctx)
    grpo = advantage.build("grpo")(ctx)
    d = torch.tensor([1.128] * 4 + [1.384] * 4 + [1.0] * 2 + [1.512] * 2)
    assert torch.allclose(weighted[:, 0], grpo[:, 0] * d, atol=1e-5)
    with pytest.raises(ConfigError, match="itself"):
        advantage.build("confucius_pshw", {"base": "confucius_pshw"})
