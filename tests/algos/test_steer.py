"""STEER token weights: Omega and both weight maps against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, token_weight
from rlvr.algos.steer import entropy_change_magnitude, steer_weights
from rlvr.errors import ConfigError, MissingInputError
from rlvr.train.config import load_config
from rlvr.ops.forward import Entropy
from rlvr.train.learner import Learner
from rlvr.train.trainer import Trainer

# three valid tokens + one padding (NaN there must not leak)
P = [0.5, 0.9, 0.2]
P_OLD = [0.4, 0.9, 0.25]
H = [1.0, 0.3, 2.0]
A = [1.0, -2.0, 0.5]


def omega_by_hand() -> list[float]:
    return [abs(a / po * p * (1 - p) * (math.log(p) + h)) for a, p, po, h in zip(A, P, P_OLD, H)]


def make_ctx() -> AlgoContext:
    """``H`` is the rollout policy's entropy (``old_entropy``); the current policy's is different and unused."""
    nan = float("nan")
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
        logprobs=torch.tensor([[math.log(p) for p in P] + [nan]], dtype=torch.float64, requires_grad=True),
        old_logprobs=torch.tensor([[math.log(p) for p in P_OLD] + [nan]], dtype=torch.float64),
        old_entropy=torch.tensor([H + [nan]], dtype=torch.float64),
        entropy=torch.tensor([[5.0, 0.0, 9.0, nan]], dtype=torch.float64),
        advantages=torch.tensor([A + [nan]], dtype=torch.float64),
    )


def test_omega_by_hand() -> None:
    ctx = make_ctx()
    omega = entropy_change_magnitude(ctx.advantages, ctx.old_entropy, ctx.logprobs, ctx.old_logprobs, ctx.response_mask)
    # 1/.4*.25*(ln .5 + 1) = 0.191783; 2/.9*.09*(ln .9 + .3) = 0.038928; .5/.25*.16*(ln .2 + 2) = 0.124980
    assert omega[0, :3].tolist() == pytest.approx(omega_by_hand(), abs=1e-12)
    assert omega[0].tolist()[:3] == pytest.approx([0.191783, 0.038928, 0.124980], abs=1e-6)
    assert omega[0, 3].item() == 0.0 and not omega.requires_grad


def test_linear_weights() -> None:
    om = omega_by_hand()
    lo, hi = min(om), max(om)
    out = token_weight.build("steer", {})(make_ctx())  # linear, 0.8 .. 1.2
    expected = [1.2 - (o - lo) * 0.4 / (hi - lo) for o in om]  # largest Omega -> 0.8, smallest -> 1.2
    assert out.weights[0, :3].tolist() == pytest.approx(expected, abs=1e-6)
    assert out.weights[0, 3].item() == 0.0
    assert out.weights[0, 0].item() == pytest.approx(0.8) and out.weights[0, 1].item() == pytest.approx(1.2)
    assert out.loss_mask is None
    assert out.metrics["steer/weight_min"] == pytest.approx(0.8)
    assert out.metrics["steer/omega_max"] == pytest.approx(hi)


def test_exponential_weights() -> None:
    om = omega_by_hand()
    out = token_weight.build("steer", {"mode": "exponential", "w_min": 0.8})(make_ctx())
    k = -math.log(0.8) / max(max(om), 0.02)
    expected = [min(1.0, max(0.8, math.exp(-k * o))) for o in om]
    assert out.weights[0, :3].tolist() == pytest.approx(expected, abs=1e-6)
    assert out.weights[0, 0].item() == pytest.approx(0.8)  # exp(-k * Omega_max) = w_min
    # tiny Omegas: the 0.02 floor keeps the weights near 1
    ctx = make_ctx()
    ctx.advantages = ctx.advantages * 1e-3
    tiny = token_weight.build("steer", {"mode": "exponential"})(ctx)
    assert (tiny.weights[0, :3] > 0.99).all()


def test_constant_omega_gives_the_midpoint() -> None:
    ctx = AlgoContext(
        response_mask=torch.ones(1, 3),
        logprobs=torch.full((1, 3), math.log(0.5)),
        old_logprobs=torch.full((1, 3), math.log(0.5)),
        old_entropy=torch.ones(1, 3),
        advantages=torch.ones(1, 3),
    )
    out = token_weight.build("steer", {"w_min": 0.7, "w_max": 1.1})(ctx)
    assert out.weights[0].tolist() == pytest.approx([0.9, 0.9, 0.9])


def test_knob_errors() -> None:
    for knobs in ({"mode": "cubic"}, {"w_min": 0.0}, {"w_min": 1.3, "w_max": 1.2}, {"mode": "exponential", "w_min": 1.2, "w_max": 1.5}):
        with pytest.raises(ConfigError):
            token_weight.build("steer", knobs)(make_ctx())


def test_omega_reads_the_rollout_entropy() -> None:
    # official compute_token_weights gets data["entropys"], the old-policy (compute_log_prob) entropies
    entry = token_weight.entry("steer")
    assert entry.requires == frozenset({"advantages", "logprobs", "old_logprobs", "old_entropy"})
    ctx = make_ctx()  # entropy (current) = [5, 0, 9] would give other weights
    out = token_weight.build("steer", {})(ctx)
    om = omega_by_hand()
    lo, hi = min(om), max(om)
    assert out.weights[0, :3].tolist() == pytest.approx([1.2 - (o - lo) * 0.4 / (hi - lo) for o in om], abs=1e-6)
    ctx.old_entropy = None
    with pytest.raises(MissingInputError, match="old_entropy"):
        token_weight.build("steer", {})(ctx)


def test_trainer_feeds_the_rollout_entropy_to_every_mini_batch(fast_overrides, monkeypatch) -> None:
    """Two mini-batches per step: the second one's Omega uses the rollout entropies, not the updated policy's."""
    steer_run = ["task=test_checksum", "warmstart.steps=0", "algo.token_weights=[steer]", "train.mini_batch_size=8"]
    cfg = load_config(None, [*fast_overrides, *steer_run, "train.lr=0.01"])
    trainer = Trainer(cfg, quiet=True)
    trainer.learner.start()
    component = trainer.pipeline.token_weights[0]
    real_steer, real_update = component.fn, Learner.update
    seen: dict[str, object] = {}
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def entropies(rows) -> torch.Tensor:
        with torch.no_grad():
            return trainer.learner.forward(trainer.model, rows, [Entropy()])["entropy"]

    def spy_update(self, tb, step):
        seen["batch"], seen["rollout"] = tb.batch, entropies(tb.batch)  # the weights have not moved yet
        return real_update(self, tb, step)

    def spy_steer(ctx):
        out = real_steer(ctx)
        rows = ctx.extras["row_index"]
        rollout = seen["rollout"][rows]
        omega = entropy_change_magnitude(ctx.advantages, rollout, ctx.logprobs, ctx.old_logprobs, ctx.response_mask)
        expected = steer_weights(omega, ctx.response_mask, mode="linear", w_min=0.8, w_max=1.2)
        current = entropies(seen["batch"].rows(rows))
        calls.append((out.weights, expected, (current - rollout).abs().max()))
        assert torch.allclose(ctx.old_entropy, rollout, atol=1e-5)
        return out

    monkeypatch.setattr(Learner, "update", spy_update)
    monkeypatch.setattr(component, "fn", spy_steer)
    trainer.train_step()
    assert len(calls) == 2  # 16 rows, mini-batches of 8
    assert float(calls[0][2]) < 1e-5  # first mini-batch: current == rollout policy
    assert float(calls[1][2]) > 1e-3  # second: the policy moved, so the entropies differ
    for weights, expected, _ in calls:
        torch.testing.assert_close(weights, expected.to(weights.dtype), atol=1e-5, rtol=1e-5)
