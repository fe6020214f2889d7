"""drpo: the decoupled-reward loss value and gradient by hand, KL constraint, micro-batches and split groups."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.errors import ConfigError

LN = math.log
NAN = float("nan")


def make_ctx(extra_group: bool = False, kl_shift: float = 0.0) -> tuple[AlgoContext, torch.Tensor]:
    """Group 0: positives r0 (2 tokens), r1 (1 token); negatives r2 (2 tokens), r3 (1 token).

    Scores s = mean log pi: s0 = ln .5 = -0.693147, s1 = ln .25 = -1.386294,
    s2 = (ln .125 + ln .5)/2 = -1.386294, s3 = ln .5 = -0.693147.
    ``extra_group`` adds group 1: four correct responses (an invalid question).
    """
    rows = [[LN(0.5), LN(0.5)], [LN(0.25), NAN], [LN(0.125), LN(0.5)], [LN(0.5), NAN]]
    mask = [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]
    correct = [True, True, False, False]
    groups = [0, 0, 0, 0]
    if extra_group:
        rows += [[LN(0.5), LN(0.5)]] * 4
        mask += [[1.0, 1.0]] * 4
        correct += [True] * 4
        groups += [1] * 4
    logprobs = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    old = torch.where(torch.tensor(mask) > 0, logprobs.detach() + kl_shift, torch.zeros_like(logprobs))
    ctx = AlgoContext(
        response_mask=torch.tensor(mask, dtype=torch.float64),
        logprobs=logprobs,
        old_logprobs=old,
        correct=torch.tensor(correct),
        group_ids=torch.tensor(groups),
        max_response_length=4,
    )
    return ctx, logprobs


# lam 0.5, L_max 4: w0 = exp((1 - 2/4)/0.5) = e = 2.718282, w1 = exp((1 - 1/4)/0.5) = e^1.5 = 4.481689
# J = (w0 s0 + w1 s1)/(w0 + w1) - tau * 1 = (-1.884169 - 6.212936)/7.199971 - 10 = -1.124603 - 10
J = -11.124603
KNOBS = {"lam": 0.5, "tau": 10.0}


def test_drpo_value_and_gradient() -> None:
    ctx, logprobs = make_ctx()
    out = policy_loss.build("drpo", KNOBS)(ctx)
    assert out.per_token is None
    assert out.loss.item() == pytest.approx(-J, abs=1e-5)  # one question, no KL (pi == pi_old)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    # positives: d(-J)/ds_i = -w_i / sum w, spread over |o_i| tokens: r0 -(2.718282/7.199971)/2 = -0.188770,
    # r1 -4.481689/7.199971 = -0.622459. negatives: +softmax_j(s_j/tau): e^-0.1386294 = 0.870551,
    # e^-0.0693147 = 0.933033 -> 0.482679 (r2, over 2 tokens: 0.241339 each), 0.517322 (r3)
    expected = [-0.188770, -0.188770, -0.622459, 0.0, 0.241339, 0.241339, 0.517322, 0.0]
    assert grad.flatten().tolist() == pytest.approx(expected, abs=1e-5)
    assert out.metrics["drpo/frac_valid_questions"] == 1.0
    assert out.metrics["drpo/kl"] == 0.0 and out.metrics["drpo/kl_active"] == 0.0
    assert out.metrics["drpo/score_pos"] == pytest.approx((LN(0.5) + LN(0.25)) / 2)


def test_drpo_kl_constraint() -> None:
    ctx, logprobs = make_ctx(kl_shift=0.01)  # log pi_old = log pi + 0.01 on the 6 valid tokens
    out = policy_loss.build("drpo", KNOBS)(ctx)
    # KL = 0.01 > delta 1e-4: coefficient sg[1000 * (0.01 - 0.0001)] = 9.9, term 9.9 * 0.01 = 0.099
    assert out.loss.item() == pytest.approx(-J + 0.099, abs=1e-5)
    assert out.metrics["drpo/kl_active"] == 1.0
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    # the KL term adds 9.9 * d(mean(old - new))/d new = -9.9 / 6 = -1.65 on every valid token
    assert grad[0, 0].item() == pytest.approx(-0.188770 - 1.65, abs=1e-5)


def test_drpo_invalid_questions_count_and_micro_batches_add_up() -> None:
    ctx, _ = make_ctx(extra_group=True)
    comp = policy_loss.build("drpo", KNOBS)
    # N_Q = 2 questions (group 1 is all correct: no J term, but it counts) -> -J / 2
    full = comp(ctx).loss.item()
    assert full == pytest.approx(-J / 2, abs=1e-5)
    # whole groups of equal size in two micro-batches with shares f = 4/8: f * (-J / 1) + f * 0 = -J / 2
    assert comp.prepare(ctx)["drpo/batch_frac_valid_questions"] == 0.5
    parts = []
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        micro = ctx.select(torch.tensor(rows))
        micro.micro_batch_fraction = 0.5
        parts.append(comp(micro).loss.item())
    assert sum(parts) == pytest.approx(full, abs=1e-6)


def test_drpo_split_groups() -> None:
    ctx, _ = make_ctx(extra_group=True)
    comp = policy_loss.build("drpo", KNOBS)
    comp.prepare(ctx)
    part = ctx.select(torch.tensor([0, 1, 2]))  # 3 of group 0's 4 responses
    with pytest.raises(ConfigError, match="group 0 has 3 of its 4 responses"):
        comp(part)
    present = policy_loss.build("drpo", {**KNOBS, "split_groups": "present"})
    present.prepare(ctx)
    # rows present: positives r0, r1, negative r2 only -> same positive part, log-sum-exp over r2 alone
    assert present(part).loss.item() == pytest.approx(-J, abs=1e-5)
