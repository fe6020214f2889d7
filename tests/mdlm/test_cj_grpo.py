"""CJ-GRPO's trajectory loss against hand-computed values, the official per-step loop, and micro-batching."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.cj_grpo import trajectory_step_weights
from rlvr.errors import MissingInputError
from rlvr.rollout.base import UNMASK_STEP


def test_step_weights_are_one_over_steps_times_step_size():
    # row 0: step 0 commits 1 token, step 1 two, step 2 one -> S = 3; row 1: steps 0, 1, 2 commit 1, 1, 2
    unmask_step = torch.tensor([[0, 1, 1, 2], [2, 2, 1, 0]])
    w = trajectory_step_weights(unmask_step, torch.ones(2, 4))
    assert torch.allclose(w, torch.tensor([[1 / 3, 1 / 6, 1 / 6, 1 / 3], [1 / 6, 1 / 6, 1 / 3, 1 / 3]]))
    # positions outside the mask (or never committed) weigh 0 and the rest renormalise over their steps
    w = trajectory_step_weights(torch.tensor([[0, 1, 1, -1]]), torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
    assert w.tolist() == [[0.5, 0.5, 0.0, 0.0]]


def ctx_for(logprobs, old, ref, adv, unmask_step):
    lp = torch.tensor(logprobs, requires_grad=True)
    ctx = AlgoContext(
        response_mask=torch.ones(lp.shape),
        logprobs=lp,
        old_logprobs=torch.tensor(old),
        ref_logprobs=torch.tensor(ref),
        advantages=torch.tensor(adv)[:, None].expand(lp.shape),
        extras={UNMASK_STEP: torch.tensor(unmask_step)},
    )
    return ctx, lp


def test_loss_by_hand():
    # one row, 3 tokens; steps: token 0 at step 0, tokens 1, 2 at step 1 -> weights 1/2, 1/4, 1/4; A = 1, eps = 0.5
    # ratios exp(0.7) = 2.01 (clipped to 1.5), exp(0) = 1, exp(-1) = 0.37 (A > 0: min keeps r)
    ctx, lp = ctx_for([[0.7, -1.0, -2.0]], [[0.0, -1.0, -1.0]], [[0.0, -1.0, -2.0]], [1.0], [[0, 1, 1]])
    out = policy_loss.build("cj_grpo", {"epsilon": 0.5, "beta": 0.1})(ctx)
    kl0 = math.exp(-0.7) + 0.7 - 1  # k3 with d = log pi - log ref = 0.7; tokens 1, 2 have d = 0
    expected = 0.5 * (-1.5 + 0.1 * kl0) + 0.25 * (-1.0) + 0.25 * (-math.exp(-1.0))
    assert out.per_token is None and out.loss.item() == pytest.approx(expected)
    assert out.metrics["kl"] == pytest.approx(0.5 * kl0)
    assert out.metrics["clip_frac"] == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(out.loss, lp)
    # clipped token: only the KL term, 0.5 * 0.1 * (1 - exp(-0.7)); others -w r
    assert grad[0].tolist() == pytest.approx([0.05 * (1 - math.exp(-0.7)), -0.25, -0.25 * math.exp(-1.0)])


def official_loop(ctx, epsilon, beta):
    """The official compute_loss on one micro-batch: per step, sum over rows of l * U_s / sum U_s / S."""
    unmask_step = ctx.extras[UNMASK_STEP]
    steps = int(unmask_step.max()) + 1
    loss = 0.0
    for s in range(steps):
        u = (unmask_step == s).float()
        r = torch.exp(ctx.logprobs - ctx.old_logprobs)
        a = ctx.advantages
        d = ctx.ref_logprobs - ctx.logprobs
        per = -torch.min(r * a, r.clamp(1 - epsilon, 1 + epsilon) * a) + beta * (torch.exp(d) - d - 1)
        loss = loss + (per * u).sum() / u.sum() / steps
    return loss


def random_batch(rows=6, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = [1, 2, 5]  # ASS for 8 tokens: the same |U_s| in every row, in a different order per row
    unmask_step = torch.stack([torch.repeat_interleave(torch.arange(3), torch.tensor(counts))[torch.randperm(width, generator=g)] for _ in range(rows)])
    old = -torch.rand(rows, width, generator=g) * 3
    return ctx_for(
        (old + 0.6 * torch.randn(rows, width, generator=g)).tolist(),
        old.tolist(),
        (old + 0.3 * torch.randn(rows, width, generator=g)).tolist(),
        torch.randn(rows, generator=g).tolist(),
        unmask_step.tolist(),
    )


def test_matches_the_official_per_step_loop():
    ctx, lp = random_batch()
    loss = policy_loss.build("cj_grpo", {})(ctx).loss  # epsilon 0.5, beta 0.04
    reference = official_loop(ctx, 0.5, 0.04)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    (g1,) = torch.autograd.grad(loss, lp)
    (g2,) = torch.autograd.grad(official_loop(ctx, 0.5, 0.04), lp)
    assert torch.allclose(g1, g2, atol=1e-7)


def test_micro_batches_add_up_to_the_mini_batch():
    ctx, _ = random_batch()
    loss_fn = policy_loss.build("cj_grpo", {})
    whole = loss_fn(ctx).loss
    parts = []
    for idx in (torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5])):
        micro = ctx.select(idx)
        micro.global_num_seqs = 6.0
        parts.append(loss_fn(micro).loss)
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-6)


def test_needs_a_masked_diffusion_rollout():
    ctx, _ = random_batch()
    ctx.extras = {}
    with pytest.raises(MissingInputError, match="unmask_step"):
        policy_loss.build("cj_grpo", {})(ctx)
