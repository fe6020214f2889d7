"""real: the anchored group-classification loss and its gradient by hand; labels, uniform groups, split groups."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")
# log pi - log pi_old per token: s = mean over valid tokens
# group 0 (rows 0-2): s = 0.2, -0.4, 0.6; group 1 (rows 3-5): s = 0.1, -0.3, 0.5
DIFF = [[0.1, 0.3], [-0.4, NAN], [0.6, 0.6], [0.1, 0.1], [-0.3, NAN], [0.2, 0.8]]
MASK = [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
S = [0.2, -0.4, 0.6, 0.1, -0.3, 0.5]


def make_ctx(adv_sign: list[float], correct: list[bool] | None = None) -> AlgoContext:
    old = torch.full((6, 2), -1.0, dtype=torch.float64)
    logprobs = (old + torch.tensor(DIFF, dtype=torch.float64)).requires_grad_(True)
    mask = torch.tensor(MASK, dtype=torch.float64)
    return AlgoContext(
        response_mask=mask,
        logprobs=logprobs,
        old_logprobs=old,
        advantages=torch.tensor(adv_sign, dtype=torch.float64).unsqueeze(-1) * mask,
        correct=torch.tensor(correct if correct is not None else [a > 0 for a in adv_sign]),
        group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
    )


def group_loss(scores: list[float], labels: list[bool], tau: float) -> float:
    pos = sum(math.exp(-s / tau) for s, y in zip(scores, labels) if y)
    neg = sum(math.exp(s / tau) for s, y in zip(scores, labels) if not y)
    return math.log(1 + pos) + math.log(1 + neg)


def test_loss_is_the_anchored_log_sum_exp_per_mixed_group() -> None:
    # group 0 labels +, -, - (mixed); group 1 all + (uniform: skipped by default, as the ms-swift port)
    ctx = make_ctx([1.0, -1.0, -0.5, 0.3, 0.2, 0.1])
    out = policy_loss.build("real")(ctx)
    # log(1 + e^{-0.4}) + log(1 + e^{-0.8} + e^{1.2}), divided by the 2 groups of the micro-batch
    expected = (math.log(1 + math.exp(-0.4)) + math.log(1 + math.exp(-0.8) + math.exp(1.2))) / 2
    assert out.per_token is None
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["real/valid_groups_frac"] == 0.5
    assert out.metrics["real/score_neg"] == pytest.approx(0.1, abs=1e-12)
    kept = policy_loss.build("real", {"skip_uniform": False})(make_ctx([1.0, -1.0, -0.5, 0.3, 0.2, 0.1]))
    uniform = group_loss(S[3:], [True] * 3, 0.5)
    assert kept.loss.item() == pytest.approx(expected + uniform / 2, abs=1e-12)


def test_gradient_weight_is_bounded_by_one_over_tau() -> None:
    tau = 0.5
    ctx = make_ctx([1.0, -1.0, -0.5, 0.3, 0.2, 0.1])
    policy_loss.build("real", {"tau": tau})(ctx).loss.backward()
    grad = ctx.logprobs.grad
    # d L / d s_0 = -(1/tau) e^{-s0/tau} / (1 + e^{-s0/tau}); d s_0 / d lp_{0,t} = 1/2; loss / 2 groups
    e0 = math.exp(-S[0] / tau)
    assert float(grad[0, 0]) == pytest.approx(-(1 / tau) * e0 / (1 + e0) / 2 / 2, abs=1e-12)
    # negatives: (1/tau) e^{s_j/tau} / (1 + sum_neg e^{s/tau}); row 1 has one token, so d s_1 / d lp = 1
    z = 1 + math.exp(S[1] / tau) + math.exp(S[2] / tau)
    assert float(grad[1, 0]) == pytest.approx((1 / tau) * math.exp(S[1] / tau) / z / 2, abs=1e-12)
    assert float(grad[2, 1]) == pytest.approx((1 / tau) * math.exp(S[2] / tau) / z / 2 / 2, abs=1e-12)
    assert float(grad[1, 1]) == 0.0 and torch.isfinite(grad).all()
    assert float(grad[3:].abs().sum()) == 0.0  # the uniform group is skipped
    # per-response weights |dL/ds_k| = 2 groups * |sum_t dL/d lp_{k,t}| are at most 1/tau
    assert (2 * grad.sum(-1).abs() <= 1 / tau).all()


def test_correct_labels_and_micro_batch_share() -> None:
    # by correctness: group 1 becomes mixed (+, -, +)
    ctx = make_ctx([1.0, -1.0, -0.5, 0.3, 0.2, 0.1], correct=[True, False, False, True, False, True])
    ctx.micro_batch_fraction = 0.25
    out = policy_loss.build("real", {"label": "correct", "tau": 1.0})(ctx)
    g0 = group_loss(S[:3], [True, False, False], 1.0)
    g1 = group_loss(S[3:], [True, False, True], 1.0)
    assert out.loss.item() == pytest.approx(0.25 * (g0 + g1) / 2, abs=1e-12)
    assert out.metrics["real/loss"] == pytest.approx((g0 + g1) / 2, abs=1e-12)


def test_split_group_and_missing_inputs_raise() -> None:
    loss = policy_loss.build("real")
    ctx = make_ctx([1.0, -1.0, -0.5, 0.3, 0.2, 0.1])
    loss.prepare(ctx)
    with pytest.raises(ConfigError, match="must be whole"):
        loss(ctx.select(torch.tensor([0, 1, 3, 4, 5])))
    assert torch.isfinite(loss(ctx.select(torch.tensor([3, 4, 5]))).loss)
    ctx.old_logprobs = None
    with pytest.raises(MissingInputError, match="old_logprobs"):
        loss(ctx)
    with pytest.raises(ConfigError, match="tau"):
        policy_loss.build("real", {"tau": 0.0})
