"""luspo: GSPO sequence loss times |o_i|, checked against the TRL formula 1/B sum_i |o_i| l_i."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss


def ctx_of(delta: float = 0.0) -> tuple[AlgoContext, torch.Tensor]:
    # row 0: 2 tokens, A = +1;  row 1: 4 tokens, A = -1;  log pi = log pi_old + delta
    old = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-0.5, -1.0, -1.5, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    logprobs = (old + delta).clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ctx = AlgoContext(
        response_mask=mask, logprobs=logprobs, old_logprobs=old, advantages=adv, agg_mode="seq-mean-token-mean"
    )
    return ctx, logprobs


def test_luspo_value_gradient_and_metrics() -> None:
    ctx, logprobs = ctx_of()
    out = policy_loss.build("luspo")(ctx)
    # ratio 1 (inside the clip range): l_i = -A_i -> -1, +1; per token l_i * |o_i| -> -2 on row 0, +4 on row 1
    assert out.per_token.flatten().tolist() == pytest.approx([-2.0, -2.0, 0.0, 0.0, 4.0, 4.0, 4.0, 4.0])
    loss = ctx.aggregate(out.per_token)
    # seq-mean-token-mean: (mean(-2, -2) + mean(4, 4, 4, 4)) / 2 = (-2 + 4) / 2 = 1 = 1/B sum |o_i| l_i
    assert loss.item() == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(loss, logprobs)
    # TRL: d/dlogp_t of 1/B |o_i| (-A_i s_i) = -A_i s_i / B = -1/2 (row 0), +1/2 (row 1), 0 on padding
    assert grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert out.metrics["luspo/mean_length_weight"] == pytest.approx(3.0)
    assert out.metrics["clip_frac"] == 0.0


def test_luspo_matches_trl_sequence_formula_when_clipped() -> None:
    ctx, logprobs = ctx_of(delta=0.01)  # s_i = e^0.01 = 1.01005 > 1 + 2.5e-3: clipped for A > 0 only
    loss = ctx.aggregate(policy_loss.build("luspo")(ctx).per_token)
    # TRL's sequence-level form: l_i = max(-A s_i, -A clip(s_i)), loss = mean_i(l_i * |o_i|)
    lengths = ctx.response_mask.sum(-1)
    s = (((logprobs - ctx.old_logprobs) * ctx.response_mask).sum(-1) / lengths).exp()
    a = torch.tensor([1.0, -1.0])
    reference = (torch.maximum(-a * s, -a * s.clamp(1 - 2e-3, 1 + 2.5e-3)) * lengths).mean()
    # row 0 clipped: -1.0025 * 2 = -2.005;  row 1: +1.01005 * 4 = 4.0402 -> mean 1.01760
    assert loss.item() == pytest.approx(reference.item())
    assert loss.item() == pytest.approx(1.0176, abs=1e-4)
    (g_loss,) = torch.autograd.grad(loss, logprobs)
    (g_ref,) = torch.autograd.grad(reference, logprobs)
    # row 0 is clipped (no gradient); row 1: -A s / B = 1.01005 / 2 = 0.50503 per token
    assert g_loss.flatten().tolist() == pytest.approx(g_ref.flatten().tolist())
    assert g_loss[1, 0].item() == pytest.approx(0.505025, abs=1e-6)
