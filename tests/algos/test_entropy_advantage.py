"""Entropy-based advantage (Cheng et al., arXiv 2506.14758) as a policy-loss transform."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.entropy_advantage import entropy_shaped_advantages
from rlvr.errors import ConfigError, MissingInputError

A = [1.0, -1.0, 0.5, 0.0, -3.0]
H = [0.5, 3.0, 0.1, 2.0, 1.0]


def make_ctx(ratio: float = 1.0) -> tuple[AlgoContext, torch.Tensor, torch.Tensor]:
    nan = float("nan")
    logprobs = torch.tensor([[math.log(ratio)] * 5 + [nan]], dtype=torch.float64, requires_grad=True)
    entropy = torch.tensor([H + [nan]], dtype=torch.float64, requires_grad=True)
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0] * 5 + [0.0]], dtype=torch.float64),
        logprobs=logprobs,
        old_logprobs=torch.zeros(1, 6, dtype=torch.float64),
        advantages=torch.tensor([A + [nan]], dtype=torch.float64),
        entropy=entropy,
    )
    return ctx, logprobs, entropy


def test_shaped_advantages_by_hand() -> None:
    ctx, _, _ = make_ctx()
    shaped, bonus, capped = entropy_shaped_advantages(ctx.advantages, ctx.entropy, ctx.response_mask, alpha=0.4, kappa=2.0)
    # bonus = min(0.4 H, |A| / 2): min(.2,.5)=.2  min(1.2,.5)=.5  min(.04,.25)=.04  min(.8,0)=0  min(.4,1.5)=.4
    assert bonus[0].tolist() == pytest.approx([0.2, 0.5, 0.04, 0.0, 0.4, 0.0])
    assert shaped[0].tolist() == pytest.approx([1.2, -0.5, 0.54, 0.0, -2.6, 0.0])
    assert capped[0].tolist() == [False, True, False, True, False, False]
    # kappa = 1 (SIREN baseline): a negative advantage can reach 0 but never flip sign
    shaped1, _, _ = entropy_shaped_advantages(ctx.advantages, ctx.entropy * 10, ctx.response_mask, alpha=0.4, kappa=1.0)
    assert shaped1[0, 1].item() == 0.0 and shaped1[0, 4].item() == 0.0


def test_delegates_to_ppo_clip_with_shaped_advantages() -> None:
    ctx, lp, ent = make_ctx()
    out = policy_loss.build("entropy_adv", {})(ctx)
    assert out.per_token[0].tolist() == pytest.approx([-1.2, 0.5, -0.54, 0.0, 2.6, 0.0])
    (g_lp, g_ent) = torch.autograd.grad(out.per_token.sum(), (lp, ent), allow_unused=True)
    assert g_lp[0].tolist() == pytest.approx([-1.2, 0.5, -0.54, 0.0, 2.6, 0.0])
    assert g_ent is None or (g_ent == 0).all()  # sg[H]: no gradient into the entropy
    m = out.metrics
    assert m["entropy_adv/bonus_mean"] == pytest.approx((0.2 + 0.5 + 0.04 + 0.0 + 0.4) / 5)
    assert m["entropy_adv/frac_capped"] == pytest.approx(0.4)
    assert m["entropy_adv/entropy"] == pytest.approx(sum(H) / 5)
    assert "clip_frac" in m and "approx_kl" in m
    assert torch.isnan(ctx.advantages[0, 5])  # the caller's context is not modified


def test_base_kwargs_and_other_bases() -> None:
    ctx, _, _ = make_ctx(ratio=1.5)
    # clip_high 0.28 passes through to ppo_clip: A' = 1.2 > 0 at r = 1.5 -> -1.2 * 1.28
    out = policy_loss.build("entropy_adv", {"base_kwargs": {"clip_high": 0.28}})(ctx)
    assert out.per_token[0, 0].item() == pytest.approx(-1.2 * 1.28)
    cispo = policy_loss.build("entropy_adv", {"base": "cispo"})(ctx)
    assert cispo.per_token[0, 0].item() == pytest.approx(-1.5 * 1.2 * math.log(1.5))
    # a stateful base: its prepare and state are forwarded
    comp = policy_loss.build("entropy_adv", {"base": "clip_cov", "base_kwargs": {"scope": "micro", "seed": 3}})
    assert comp.prepare(ctx) == {}
    assert "base" in comp.state_dict() and "generator" in comp.state_dict()["base"]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="old_minp_logprobs"):
        policy_loss.build("entropy_adv", {"base": "lp_reg"})
    with pytest.raises(ConfigError, match="itself"):
        policy_loss.build("entropy_adv", {"base": "entropy_adv"})
    with pytest.raises(ConfigError):
        policy_loss.build("entropy_adv", {"base_kwargs": {"nope": 1}})
    with pytest.raises(ConfigError):
        policy_loss.build("entropy_adv", {"kappa": 0.0})
    ctx, _, _ = make_ctx()
    ctx.entropy = None
    with pytest.raises(MissingInputError, match="entropy"):
        policy_loss.build("entropy_adv", {})(ctx)
