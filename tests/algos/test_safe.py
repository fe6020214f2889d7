"""safe_kl: the reward PID, the phase detector, the threshold, the entropy gate and the penalty's value and gradient by hand."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, regularizer
from rlvr.algos.safe import SafePID, detect_phase, entropy_factor
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")


def test_pid_on_the_reward_velocity() -> None:
    pid = SafePID(kp=0.3, ki=0.01, kd=0.05, ema=0.95, target_velocity=0.001, integral_max=1.0)
    assert pid.update(0.5) == 0.0 and pid.reward_ema == 0.5  # first call: EMA only
    # ema 0.95 * 0.5 + 0.05 * 0.7 = 0.51; e = 0.01 - 0.001 = 0.009; I = 0.009; d = 0.009 - 0
    assert pid.update(0.7) == pytest.approx(0.3 * 0.009 + 0.01 * 0.009 + 0.05 * 0.009, abs=1e-12)
    # ema 0.95 * 0.51 + 0.05 * 0.3 = 0.4995; e = -0.0105 - 0.001 = -0.0115; I = -0.0025; d = -0.0205
    assert pid.update(0.3) == pytest.approx(0.3 * -0.0115 + 0.01 * -0.0025 + 0.05 * -0.0205, abs=1e-12)
    big = SafePID(kp=0.0, ki=1.0, kd=0.0, ema=0.0, target_velocity=0.0, integral_max=1.0)
    big.update(0.0)
    assert big.update(5.0) == 1.0  # integral clipped to +-1


def test_phase_detector() -> None:
    assert detect_phase([0.5] * 49) == "WARMUP"
    assert detect_phase([0.9] * 60) == "CONVERGED"  # 50..99 rewards: old = recent, so never climbing
    assert detect_phase([0.1] * 50 + [0.3] * 50) == "CLIMBING"
    assert detect_phase([0.3] * 100) == "PLATEAU"  # flat but below 0.7
    assert detect_phase([0.8, 0.9] * 50) == "PLATEAU"  # std 0.05 >= 0.02
    assert entropy_factor(0.9, 2.0) == pytest.approx(2.0) and entropy_factor(10.0, 2.0) == 0.5


def make_ctx(kl_per_token: float) -> AlgoContext:
    ref = torch.full((2, 3), -1.0, dtype=torch.float64)
    old = ref + kl_per_token
    old[1, 2] = NAN
    ref[1, 2] = NAN
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0]),
        old_logprobs=old,
        ref_logprobs=ref,
        logprobs=old.clone().requires_grad_(True),
        # per-response token means 1.0 and 2.0 -> H = 1.5 -> gate max(0.5, 2 / 1.6) = 1.25
        old_entropy=torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, NAN]], dtype=torch.float64),
    )


def test_penalty_value_gradient_and_state() -> None:
    reg = regularizer.build("safe_kl", {"base_threshold": 0.05, "threshold_min": 0.0})
    ctx = make_ctx(2.0)
    metrics = reg.prepare(ctx)
    # step 1: u = 0, warm-up x1.5 -> tau = 0.075; KL_s = 0.1 * 2.0 = 0.2
    assert metrics["safe_kl/threshold"] == pytest.approx(0.075)
    assert metrics["safe_kl/kl_short"] == pytest.approx(0.2)
    assert metrics["safe_kl/kl_long"] == pytest.approx(0.02)
    assert metrics["safe_kl/entropy_factor"] == pytest.approx(1.25)
    assert metrics["safe_kl/active"] == 1.0 and metrics["safe_kl/phase"] == 0.0
    ctx.micro_batch_fraction = 0.5
    out = reg(ctx)
    # at the rollout weights KL_s(theta) = 0.9 * 0 + 0.1 * 2.0 = the tracker: 0.1 * 0.125^2 * 1.25 * 0.5
    assert out.loss.item() == pytest.approx(0.1 * 0.125**2 * 1.25 * 0.5, abs=1e-12)
    out.loss.backward()
    # d/d lp_t = coef * 2 * excess * gate * share * 0.1 / (5 valid tokens)
    expected = 0.1 * 2 * 0.125 * 1.25 * 0.5 * 0.1 / 5
    assert ctx.logprobs.grad[0].tolist() == pytest.approx([expected] * 3, abs=1e-12)
    assert ctx.logprobs.grad[1].tolist() == pytest.approx([expected, expected, 0.0], abs=1e-12)
    # below the threshold: no penalty, no gradient
    quiet = regularizer.build("safe_kl")
    calm = make_ctx(0.5)
    quiet.prepare(calm)
    assert quiet(calm).loss.item() == 0.0
    # step 2 moves the trackers from the saved state
    fresh = regularizer.build("safe_kl", {"base_threshold": 0.05, "threshold_min": 0.0})
    fresh.load_state_dict(reg.state_dict())
    second = fresh.prepare(make_ctx(2.0))
    assert second["safe_kl/kl_short"] == pytest.approx(0.9 * 0.2 + 0.2)
    assert fresh.fn.kl_before == pytest.approx(0.2)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="threshold_min"):
        regularizer.build("safe_kl", {"threshold_min": 0.7})
    ctx = make_ctx(1.0)
    ctx.ref_logprobs = None
    with pytest.raises(MissingInputError, match="ref_logprobs"):
        regularizer.build("safe_kl").prepare(ctx)
