"""pacs: the BCE loss and gradient by hand (RLOO, balanced weights), baselines, scores, micro-batches, split groups."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.pacs import balanced_weights, relative_logit
from rlvr.errors import ConfigError

NAN = float("nan")
# psi_i = sum_t (log pi - log pi_old) = 0.4, 0.0, -0.2, 0.2 (rows 0 and 2 spread it over two tokens)
DELTAS = [[0.25, 0.15], [0.0, NAN], [-0.1, -0.1], [0.2, NAN]]
MASK = [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]


def make_ctx(correct: list[bool], groups: list[int] | None = None, copies: int = 1) -> tuple[AlgoContext, torch.Tensor]:
    deltas = torch.tensor(DELTAS * copies, dtype=torch.float64)
    mask = torch.tensor(MASK * copies, dtype=torch.float64)
    logprobs = torch.where(mask > 0, torch.log(torch.tensor(0.5, dtype=torch.float64)) + deltas, torch.full_like(deltas, NAN))
    logprobs.requires_grad_(True)
    old = torch.where(mask > 0, torch.full_like(deltas, math.log(0.5)), torch.full_like(deltas, NAN))
    ctx = AlgoContext(
        response_mask=mask,
        logprobs=logprobs,
        old_logprobs=old,
        correct=torch.tensor(correct),
        rewards=torch.tensor([float(c) for c in correct]),
        group_ids=torch.tensor(groups if groups is not None else [0] * len(correct)),
    )
    return ctx, logprobs


def test_pacs_loss_and_gradient_by_hand() -> None:
    ctx, logprobs = make_ctx([True, False, False, False])
    comp = policy_loss.build("pacs")
    comp.prepare(ctx)
    out = comp(ctx)
    assert out.per_token is None
    # RLOO: psi_hat_i = psi_i - (0.4 - psi_i)/3 = 0.4, -0.133333, -0.4, 0.133333
    # balanced weights (1 correct, 3 wrong of G = 4): 4/(2*1) = 2, 4/(2*3) = 0.666667
    # BCE: ln(1 + e^-0.4) = 0.513015, ln(1 + e^-0.133333) = 0.628700, ln(1 + e^-0.4) = 0.513015,
    #      ln(1 + e^0.133333) = 0.762034; loss = (2 * 0.513015 + 0.666667 * 1.903749) / 4 = 0.573799
    assert out.loss.item() == pytest.approx(0.573799, abs=1e-6)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    # dL/dpsi_hat = w (sigmoid(psi_hat) - y)/4 = -0.200656, 0.077786, 0.066885, 0.088881 (sum 0.032896);
    # dL/dpsi_j = 4/3 g_j - 1/3 sum g = -0.278507, 0.092749, 0.078215, 0.107542 on every valid token of row j
    expected = [[-0.278507, -0.278507], [0.092749, 0.0], [0.078215, 0.078215], [0.107542, 0.0]]
    assert grad.tolist() == [pytest.approx(row, abs=1e-5) for row in expected]
    assert out.metrics["pacs/score_mean"] == pytest.approx(0.1)
    assert out.metrics["pacs/logit_pos"] == pytest.approx(0.4)
    assert out.metrics["pacs/accuracy"] == pytest.approx(0.75)  # rows 0, 1, 2 on the right side of 0


def test_balanced_weights_follow_sklearn_per_group() -> None:
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    # group 0: 4/(2*1) = 2 and 4/(2*3); group 1 single label -> 1; group 2: 2/(2*1) = 1
    expected = [2.0, 2 / 3, 2 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert balanced_weights(labels, groups).tolist() == pytest.approx(expected)
    # three label values (soft rewards): G / (3 n_c)
    soft = balanced_weights(torch.tensor([0.0, 0.5, 1.0, 1.0]), torch.zeros(4))
    assert soft.tolist() == pytest.approx([4 / 3, 4 / 3, 2 / 3, 2 / 3])


def test_baselines_by_hand() -> None:
    psi = torch.tensor([0.4, 0.0, -0.2, 0.2, 0.7], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1])
    rloo = relative_logit(psi, groups, "rloo", True, 1e-6)
    assert rloo.tolist() == pytest.approx([0.4, -0.133333, -0.4, 0.133333, 0.7], abs=1e-6)  # singleton: no baseline
    # grpo: mean 0.1, unbiased std sqrt((0.09 + 0.01 + 0.09 + 0.01)/3) = 0.258199; singleton: mean 0, std 1
    grpo = relative_logit(psi, groups, "grpo", True, 0.0)
    assert grpo.tolist() == pytest.approx([1.161895, -0.387298, -1.161895, 0.387298, 0.7], abs=1e-6)
    assert relative_logit(psi, groups, "grpo", False, 0.0).tolist() == pytest.approx([0.3, -0.1, -0.3, 0.1, 0.7])
    assert torch.equal(relative_logit(psi, groups, "none", True, 0.0), psi)


def test_grpo_baseline_at_the_first_mini_batch_has_a_finite_gradient() -> None:
    ctx, logprobs = make_ctx([True, True, False, False])
    ctx.old_logprobs = logprobs.detach().clone()  # pi == pi_old: every psi is exactly 0, std 0
    out = policy_loss.build("pacs", {"baseline": "grpo"})(ctx)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    assert bool(torch.isfinite(grad).all())
    # psi_hat = 0 / (0 + 1e-6) = 0, sigmoid 1/2: dL/dpsi_hat = (1/2 - y)/4, times 1/(std + eps) = 1e6 through
    # the centring (the std contributes 0): -0.125e6 for correct rows, +0.125e6 for wrong, minus the mean (0)
    assert grad[0, 0].item() == pytest.approx(-0.125e6, rel=1e-6)
    assert grad[2, 0].item() == pytest.approx(0.125e6, rel=1e-6)


def test_score_mean_logprob_and_weight_modes() -> None:
    ctx, _ = make_ctx([True, False, False, False])
    # mean_logprob with beta 2: psi = 2 * mean_t log pi = 2 (ln .5 + 0.2) = -0.986294 (row 0), 2 ln .5 (row 1)
    out = policy_loss.build("pacs", {"score": "mean_logprob", "beta": 2.0, "baseline": "none", "weight": "none"})(ctx)
    psi0, psi1 = 2 * (math.log(0.5) + 0.2), 2 * math.log(0.5)
    psi2, psi3 = 2 * (math.log(0.5) - 0.1), 2 * (math.log(0.5) + 0.2)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(-psi0) + softplus(psi1) + softplus(psi2) + softplus(psi3)) / 4
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)
    # only_positive keeps row 0's term: w = 1, 0, 0, 0 -> loss = ln(1 + e^-0.4) / 4
    only_pos = policy_loss.build("pacs", {"weight": "only_positive"})(ctx)
    assert only_pos.loss.item() == pytest.approx(0.513015 / 4, abs=1e-6)


def test_micro_batches_of_whole_groups_add_up_to_the_mini_batch() -> None:
    ctx, logprobs = make_ctx([True, False, False, False] * 2, groups=[0] * 4 + [1] * 4, copies=2)
    comp = policy_loss.build("pacs")
    comp.prepare(ctx)
    full = comp(ctx).loss
    (g_full,) = torch.autograd.grad(full, logprobs)
    total = 0.0
    g_sum = torch.zeros_like(logprobs)
    for rows in (torch.arange(4), torch.arange(4, 8)):
        micro = ctx.select(rows)
        micro.micro_batch_fraction = 0.5
        loss = comp(micro).loss
        (g,) = torch.autograd.grad(loss, logprobs)
        total += loss.item()
        g_sum += g
    assert full.item() == pytest.approx(0.573799, abs=1e-6)  # two copies of the hand-computed group
    assert total == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(g_sum, g_full, atol=1e-12)


def test_a_split_group_raises_and_reward_labels_are_checked() -> None:
    ctx, _ = make_ctx([True, False, False, False])
    comp = policy_loss.build("pacs")
    comp.prepare(ctx)
    with pytest.raises(ConfigError, match="train.shuffle=groups"):
        comp(ctx.select(torch.tensor([0, 1])))
    ctx.rewards = torch.tensor([2.0, 0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match=r"rewards in \[0, 1\]"):
        policy_loss.build("pacs", {"label": "reward"})(ctx)
    ctx.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    by_reward = policy_loss.build("pacs", {"label": "reward"})(ctx).loss.item()
    assert by_reward == pytest.approx(0.573799, abs=1e-6)


def test_helpers_reject_unknown_choices() -> None:
    from rlvr.algos.pacs import implicit_score, pacs_weights

    ones = torch.ones(2, 2)
    with pytest.raises(ConfigError, match="score 'bogus'"):
        implicit_score(ones, ones, ones, 1.0, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="baseline 'bogus'"):
        relative_logit(torch.ones(2), torch.zeros(2), "bogus", True, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="weight 'bogus'"):
        pacs_weights(torch.ones(2), torch.zeros(2), "bogus")  # type: ignore[arg-type]
