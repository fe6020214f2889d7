"""Policy losses (ppo_clip, gspo, cispo) against hand-computed values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.aggregation import masked_mean
from rlvr.errors import ConfigError, MissingInputError


def token_ctx(ratios: list[float], advs: list[float], pad: int = 1) -> tuple[AlgoContext, torch.Tensor]:
    """One row with old log-prob 0, so ``logprobs = log(ratio)``; ``pad`` NaN padding tokens at the end."""
    logprobs = torch.tensor([[math.log(r) for r in ratios] + [float("nan")] * pad], requires_grad=True)
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0] * len(ratios) + [0.0] * pad]),
        logprobs=logprobs,
        old_logprobs=torch.zeros(1, len(ratios) + pad),
        advantages=torch.tensor([advs + [0.0] * pad]),
    )
    return ctx, logprobs


def run(name: str, ctx: AlgoContext, **knobs: object):
    return policy_loss.build(name, dict(knobs))(ctx)


def grad_of(per_token: torch.Tensor, logprobs: torch.Tensor) -> list[float]:
    (grad,) = torch.autograd.grad(per_token.sum(), logprobs)
    return grad[0].tolist()


# ---------------------------------------------------------------- ppo_clip


def test_ppo_clip_symmetric_values_metrics_and_grad() -> None:
    # clip 0.2/0.2; per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.5 A=+1: max(-1.5, -1.2) = -1.2   clipped (high)
    #   r=0.5 A=+1: max(-0.5, -0.8) = -0.5
    #   r=0.5 A=-1: max( 0.5,  0.8) =  0.8   clipped (low)
    #   r=1.5 A=-1: max( 1.5,  1.2) =  1.5
    #   r=1.1 A=+2: max(-2.2, -2.2) = -2.2   (inside the range)
    ctx, lp = token_ctx([1.5, 0.5, 0.5, 1.5, 1.1], [1.0, 1.0, -1.0, -1.0, 2.0])
    out = run("ppo_clip", ctx)
    assert out.per_token[0].tolist() == pytest.approx([-1.2, -0.5, 0.8, 1.5, -2.2, 0.0], abs=1e-6)
    assert out.metrics["clip_frac"] == pytest.approx(0.4)  # 2 of 5 valid tokens
    assert out.metrics["clip_frac_low"] == pytest.approx(0.2)
    assert out.metrics["clip_frac_high"] == pytest.approx(0.2)
    assert out.metrics["dual_clip_frac"] == 0.0
    # approx_kl = mean(-log r) = -(2 ln1.5 + 2 ln0.5 + ln1.1)/5 = -(0.8109302 - 1.3862944 + 0.0953102)/5
    assert out.metrics["approx_kl"] == pytest.approx(0.0960108, abs=1e-6)
    assert all(isinstance(v, float) for v in out.metrics.values())
    # d/dlogp of -A r = -A r on unclipped tokens, 0 on clipped ones and on padding (even with NaN there)
    assert grad_of(out.per_token, lp) == pytest.approx([0.0, -0.5, 0.0, 1.5, -2.2, 0.0], abs=1e-6)


def test_ppo_clip_higher() -> None:
    # DAPO clip-higher 0.2/0.28, A=+1: r=1.5 -> -1.28 (clipped),
    #   r=1.25 -> -1.25 (not clipped; 0.2/0.2 gives -1.2)
    # A=-1, r=0.7 -> max(0.7, 0.8) = 0.8 (lower clip stays at 0.2)
    ctx, _ = token_ctx([1.5, 1.25, 0.7], [1.0, 1.0, -1.0])
    out = run("ppo_clip", ctx, clip_high=0.28)
    assert out.per_token[0, :3].tolist() == pytest.approx([-1.28, -1.25, 0.8], abs=1e-6)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 3)
    assert out.metrics["clip_frac_low"] == pytest.approx(1 / 3)
    sym = run("ppo_clip", ctx)
    assert sym.per_token[0, 1].item() == pytest.approx(-1.2, abs=1e-6)


def test_ppo_dual_clip() -> None:
    # clip_ratio_c = 3, A = -1: r=5 -> PPO loss max(5, 1.2) = 5, dual bound -A c = 3 -> 3 (dual-clipped)
    #                           r=2 -> max(2, 1.2) = 2 < 3 -> 2
    # A = +1, r=5: PPO -1.2, dual clip does not apply to positive advantages
    ctx, lp = token_ctx([5.0, 2.0, 5.0], [-1.0, -1.0, 1.0])
    out = run("ppo_clip", ctx, clip_ratio_c=3.0)
    assert out.per_token[0, :3].tolist() == pytest.approx([3.0, 2.0, -1.2], abs=1e-6)
    assert out.metrics["dual_clip_frac"] == pytest.approx(1 / 3)
    # gradient: 0 where dual-clipped (constant), -A r = 2 on the unclipped token, 0 on the PPO-clipped one
    assert grad_of(out.per_token, lp) == pytest.approx([0.0, 2.0, 0.0, 0.0], abs=1e-6)
    without = run("ppo_clip", ctx)
    assert without.per_token[0, 0].item() == pytest.approx(5.0, abs=1e-5)
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        run("ppo_clip", ctx, clip_ratio_c=0.5)


def test_ppo_log_ratio_clamped() -> None:
    # log r = 30 is clamped to 20: loss with A=-1 is exp(20) = 4.8516520e8
    ctx = AlgoContext(
        response_mask=torch.ones(1, 1),
        logprobs=torch.tensor([[0.0]]),
        old_logprobs=torch.tensor([[-30.0]]),
        advantages=torch.tensor([[-1.0]]),
    )
    assert run("ppo_clip", ctx).per_token.item() == pytest.approx(4.8516520e8, rel=1e-5)


def test_policy_loss_missing_input() -> None:
    ctx = AlgoContext(
        response_mask=torch.ones(1, 2), logprobs=torch.zeros(1, 2), advantages=torch.zeros(1, 2)
    )
    with pytest.raises(MissingInputError, match="old_logprobs"):
        run("ppo_clip", ctx)


# ---------------------------------------------------------------- gspo


def gspo_ctx(log_ratios: list[list[float]], mask: list[list[float]], advs: list[float]) -> AlgoContext:
    old = torch.full((len(mask), len(mask[0])), -1.0)
    logprobs = (old + torch.tensor(log_ratios)).requires_grad_(True)
    m = torch.tensor(mask)
    return AlgoContext(
        response_mask=m,
        logprobs=logprobs,
        old_logprobs=old,
        advantages=torch.tensor(advs).unsqueeze(-1) * m,
        agg_mode="seq-mean-token-mean",
    )


def test_gspo_values_metrics_and_grad() -> None:
    # seq 0: log ratios .1 -.2 .4 -> mean .1, s0 = exp(.1) = 1.1051709;
    #   A = -1: max(1.1051709, 1.0004) = 1.1051709
    # seq 1: log ratios .001 .001 -> s1 = exp(.001) = 1.0010005 > 1 + 4e-4;
    #   A = +1: max(-1.0010005, -1.0004) = -1.0004
    ctx = gspo_ctx([[0.1, -0.2, 0.4], [0.001, 0.001, 0.0]], [[1, 1, 1], [1, 1, 0]], [-1.0, 1.0])
    out = run("gspo", ctx)
    torch.testing.assert_close(
        out.per_token, torch.tensor([[1.1051709] * 3, [-1.0004, -1.0004, 0.0]]), atol=1e-6, rtol=0.0
    )
    assert out.metrics["clip_frac"] == pytest.approx(0.4)  # the 2 tokens of seq 1 of 5 valid tokens
    assert out.metrics["clip_frac_high"] == pytest.approx(0.4)
    assert out.metrics["clip_frac_low"] == 0.0
    # seq-mean-token-mean gradient: seq 0 tokens get (1/B)(1/|o_0|)(-A) s0
    #   = 1/2 * 1/3 * 1.1051709 = 0.1841952;
    # seq 1 is clipped -> 0
    (grad,) = torch.autograd.grad(ctx.aggregate(out.per_token), ctx.logprobs)
    torch.testing.assert_close(
        grad, torch.tensor([[0.1841952] * 3, [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0.0
    )


def test_gspo_token_gradient_equals_sequence_gspo() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 6, 5
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()
    log_ratios = (torch.randn(b, t, generator=gen) * 2e-3).tolist()
    advs = torch.randn(b, generator=gen).tolist()
    ctx = gspo_ctx(log_ratios, mask.tolist(), advs)
    token_loss = ctx.aggregate(run("gspo", ctx).per_token)
    (g_token,) = torch.autograd.grad(token_loss, ctx.logprobs)

    # sequence-level GSPO (paper eq.): 1/G sum_i max(-A_i s_i, -A_i clip(s_i, 1-3e-4, 1+4e-4))
    lp = ctx.logprobs.detach().clone().requires_grad_(True)
    s = torch.exp(masked_mean(lp - ctx.old_logprobs, mask, dim=-1))
    a = torch.tensor(advs)
    seq_loss = torch.maximum(-a * s, -a * s.clamp(1 - 3e-4, 1 + 4e-4)).mean()
    (g_seq,) = torch.autograd.grad(seq_loss, lp)
    torch.testing.assert_close(token_loss, seq_loss)
    torch.testing.assert_close(g_token, g_seq)
    assert g_token.abs().sum() > 0  # some sequences unclipped


def test_gspo_log_ratio_capped() -> None:
    # mean log ratio 12 is clamped to 10: loss with A = -1 is exp(10) = 22026.466
    ctx = gspo_ctx([[12.0, 12.0]], [[1, 1]], [-1.0])
    assert run("gspo", ctx).per_token[0].tolist() == pytest.approx([22026.466, 22026.466], rel=1e-6)


# ---------------------------------------------------------------- cispo


def test_cispo_values_and_defaults() -> None:
    # defaults clip_low=1.0 (no lower bound), clip_high=4.0 (weight <= 5):
    #   r=1.5, A=+1: w=1.5 -> -1.5 * 1 * ln1.5 = -0.6081977
    #   r=6,   A=+1: w=5   -> -5 * ln6 = -8.9587973 (clipped)
    #   r=0.1, A=-1: w=0.1 -> -0.1 * -1 * ln0.1 = -0.2302585 (no lower bound)
    ctx, lp = token_ctx([1.5, 6.0, 0.1], [1.0, 1.0, -1.0])
    out = run("cispo", ctx)
    assert out.per_token[0].tolist() == pytest.approx([-0.6081977, -8.9587973, -0.2302585, 0.0], abs=1e-6)
    assert out.metrics["clip_frac"] == pytest.approx(1 / 3)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 3)
    assert out.metrics["clip_frac_low"] == 0.0
    # gradient flows only through log pi, with the detached weight: d/dlogp = -w A
    # (a non-detached ratio would add -w A log pi on unclipped tokens); clipped tokens keep their gradient
    assert grad_of(out.per_token, lp) == pytest.approx([-1.5, -5.0, 0.1, 0.0], abs=1e-6)


def test_cispo_lower_clip_and_no_grad_to_old() -> None:
    # clip_low = 0.2: r = 0.5, A = -1 -> w = 0.8 -> -0.8 * -1 * ln0.5 = -0.5545177, grad -w A = 0.8
    ctx, lp = token_ctx([0.5], [-1.0], pad=0)
    ctx.old_logprobs.requires_grad_(True)
    out = run("cispo", ctx, clip_low=0.2, clip_high=0.28)
    assert out.per_token.item() == pytest.approx(-0.5545177, abs=1e-6)
    assert out.metrics["clip_frac_low"] == 1.0
    g_lp, g_old = torch.autograd.grad(out.per_token.sum(), [lp, ctx.old_logprobs], allow_unused=True)
    assert g_lp.item() == pytest.approx(0.8)
    assert g_old is None or g_old.abs().sum() == 0


def test_clip_validation() -> None:
    ctx, _ = token_ctx([1.0], [1.0])
    for name in ("ppo_clip", "gspo", "cispo"):
        with pytest.raises(ConfigError, match="clip_low"):
            run(name, ctx, clip_low=1.5)
