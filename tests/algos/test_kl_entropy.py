"""KL estimators, the KL regularizer and the entropy bonus."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, regularizer
from rlvr.algos.kl import kl_estimate
from rlvr.errors import ConfigError, MissingInputError

# d = logp - ref = [0.5, -1.0]
LOGP = torch.tensor([-1.0, -2.0])
REF = torch.tensor([-1.5, -1.0])


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (("k1", "kl"), [0.5, -1.0]),
        (("abs",), [0.5, 1.0]),
        (("k2", "mse"), [0.125, 0.5]),  # d^2 / 2
        # exp(-d) + d - 1: exp(-.5) - .5 = 0.6065307 - 0.5 = 0.1065307 ; exp(1) - 2 = 0.7182818
        (("k3", "low_var_kl"), [0.1065307, 0.7182818]),
    ],
)
def test_kl_estimators(kinds: tuple[str, ...], expected: list[float]) -> None:
    for kind in kinds:
        assert kl_estimate(LOGP, REF, kind).tolist() == pytest.approx(expected, abs=1e-6)


def test_k3_clamped_and_gradient() -> None:
    # d = -30 -> -d clamped to 20 -> exp(20) - 21 -> clamped to 10 ; d = 30 -> exp(-20) + 20 - 1 = 19 -> 10
    assert kl_estimate(torch.tensor([-30.0, 30.0]), torch.zeros(2), "k3").tolist() == [10.0, 10.0]
    # d k3 / d logp = 1 - exp(-d): d = 0.5 -> 1 - 0.6065307 = 0.3934693 ; d = -1 -> 1 - e = -1.7182818
    logp = LOGP.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_estimate(logp, REF, "k3").sum(), logp)
    assert grad.tolist() == pytest.approx([0.3934693, -1.7182818], abs=1e-6)


def test_unknown_kl_kind() -> None:
    with pytest.raises(ConfigError, match=r"unknown KL estimator 'k4'; valid: .*low_var_kl"):
        kl_estimate(LOGP, REF, "k4")


def reg_ctx(**fields: torch.Tensor) -> AlgoContext:
    return AlgoContext(response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), **fields)


def test_kl_regularizer() -> None:
    # k1 per token: [[0.5, -1, pad], [2, pad, pad]] ; token-mean = (0.5 - 1 + 2)/3 = 0.5 ; loss = 0.1 * 0.5
    logp = torch.tensor([[0.5, -1.0, float("nan")], [2.0, 7.0, 7.0]], requires_grad=True)
    ctx = reg_ctx(logprobs=logp, ref_logprobs=torch.zeros(2, 3))
    out = regularizer.build("kl", {"coef": 0.1, "estimator": "k1"})(ctx)
    assert out.loss.item() == pytest.approx(0.05)
    assert out.metrics == {"kl": pytest.approx(0.5)}
    (grad,) = torch.autograd.grad(out.loss, logp)
    assert grad.flatten().tolist() == pytest.approx([0.1 / 3, 0.1 / 3, 0.0, 0.1 / 3, 0.0, 0.0])
    # default coef 0.001 and k3; seq-mean-token-mean of k3: row0 (0.1065307 + 0.7182818)/2 = 0.4124063,
    # row1 exp(-2) + 1 = 1.1353353 ; mean 0.7738708 -> loss 7.738708e-4
    ctx.agg_mode = "seq-mean-token-mean"
    ctx.ref_logprobs = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ctx.logprobs = torch.tensor([[0.5, -1.0, float("nan")], [2.0, float("nan"), 0.0]], requires_grad=True)
    out = regularizer.build("kl")(ctx)
    assert out.loss.item() == pytest.approx(7.738708e-4, abs=1e-9)
    # NaN on padding does not leak into the gradient: d/dlogp = coef * (1 - exp(-d)) / (B * |o_i|)
    # row0: 0.001 * 0.3934693 / 4 = 9.836733e-5, 0.001 * -1.7182818 / 4 = -4.2957045e-4
    # row1: 0.001 * (1 - exp(-2)) / 2 = 0.001 * 0.8646647 / 2 = 4.3233235e-4
    (grad,) = torch.autograd.grad(out.loss, ctx.logprobs)
    expected = [9.836733e-5, -4.2957045e-4, 0.0, 4.3233235e-4, 0.0, 0.0]
    assert grad.flatten().tolist() == pytest.approx(expected, abs=1e-9)


def test_kl_regularizer_errors() -> None:
    ctx = reg_ctx(logprobs=torch.zeros(2, 3))
    with pytest.raises(MissingInputError, match="ref_logprobs"):
        regularizer.build("kl")(ctx)
    ctx.ref_logprobs = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="bogus"):
        regularizer.build("kl", {"estimator": "bogus"})(ctx)


def test_entropy_bonus() -> None:
    # valid entropies 1, 2 | 4 -> token-mean 7/3 ; loss = -0.001 * 7/3 = -0.0023333
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    ctx = reg_ctx(entropy=ent)
    out = regularizer.build("entropy_bonus")(ctx)
    assert out.loss.item() == pytest.approx(-0.0023333, abs=1e-7)
    assert out.metrics == {"entropy": pytest.approx(7 / 3)}
    (grad,) = torch.autograd.grad(out.loss, ent)
    g = -0.001 / 3
    assert grad.flatten().tolist() == pytest.approx([g, g, 0.0, g, 0.0, 0.0])
    # seq-mean-token-mean: (1.5 + 4)/2 = 2.75 ; coef 0.01 -> -0.0275
    ctx.agg_mode = "seq-mean-token-mean"
    assert regularizer.build("entropy_bonus", {"coef": 0.01})(ctx).loss.item() == pytest.approx(-0.0275)
    assert regularizer.entry("entropy_bonus").requires == frozenset({"entropy"})


def test_entropy_bonus_agg_mode_override() -> None:
    # Two rows: entropies [1, 3] (2 tokens) and [2] (1 token).
    # token-mean = (1+3+2)/3 = 2;  seq-mean-token-mean = (2 + 2)/2 = 2;  seq-mean-token-sum = (4+2)/2 = 3.
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ctx = AlgoContext(response_mask=mask, entropy=torch.tensor([[1.0, 3.0], [2.0, 9.0]]), agg_mode="token-mean")
    assert regularizer.build("entropy_bonus", {"coef": 0.5})(ctx).loss.item() == pytest.approx(-1.0)
    out = regularizer.build("entropy_bonus", {"coef": 0.5, "agg_mode": "seq-mean-token-sum"})(ctx)
    assert out.loss.item() == pytest.approx(-1.5)
