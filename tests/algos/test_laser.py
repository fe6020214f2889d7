"""laser: fixed-target LASER length reward (reward / penalty / hybrid) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import ConfigError


def ctx_of(lengths: list[int], rewards: list[float], correct: list[bool], max_len: int | None = None) -> AlgoContext:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor(rewards),
        correct=torch.tensor(correct),
        max_response_length=max_len,
    )


LENGTHS, REWARDS, CORRECT = [3, 5, 8, 5], [1.0, 1.0, 1.0, 0.0], [True, True, True, False]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # target 5, alpha 0.5; only correct rows change: L=3, 5 are within, L=8 is over
        ("reward", [1.5, 1.5, 1.0, 0.0]),  # +0.5 within
        ("penalty", [1.0, 1.0, 0.5, 0.0]),  # -0.5 over
        ("hybrid", [1.5, 1.5, 0.5, 0.0]),  # both
    ],
)
def test_laser_modes(mode: str, expected: list[float]) -> None:
    comp = reward.build("laser", {"target_length": 5, "mode": mode})
    assert comp(ctx_of(LENGTHS, REWARDS, CORRECT)).tolist() == pytest.approx(expected)


def test_laser_default_target_and_metrics() -> None:
    comp = reward.build("laser", {"alpha": 0.25})
    # target = max_response_length // 4 = 20 // 4 = 5 -> rows 0, 1 get +0.25
    out = comp(ctx_of(LENGTHS, REWARDS, CORRECT, max_len=20))
    assert out.tolist() == pytest.approx([1.25, 1.25, 1.0, 0.0])
    metrics = comp.prepare(ctx_of(LENGTHS, REWARDS, CORRECT, max_len=20))
    assert metrics["laser/target_length"] == 5.0
    assert metrics["laser/frac_rewarded"] == pytest.approx(0.5)
    assert metrics["laser/frac_penalised"] == 0.0
    assert metrics["laser/mean_term"] == pytest.approx(0.125)  # 0.5 / 4


def test_laser_bad_mode() -> None:
    with pytest.raises(ConfigError, match="mode: expected 'reward', 'penalty' or 'hybrid'"):
        reward.build("laser", {"mode": "bonus"})
    with pytest.raises(ConfigError, match="unknown mode 'bonus'"):  # the class checks too (direct use)
        reward.get("laser")(mode="bonus")
