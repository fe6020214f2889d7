"""overlong_shaping: DAPO's soft overlong penalty min(-(L - (L_max - L_cache)) / L_cache * factor, 0)."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import ConfigError


def ctx_of(lengths: list[int], rewards: list[float]) -> AlgoContext:
    mask = torch.tensor([[1.0] * n + [0.0] * (20 - n) for n in lengths])
    return AlgoContext(response_mask=mask, rewards=torch.tensor(rewards), max_response_length=20)


def test_overlong_penalty_values() -> None:
    ctx = ctx_of([10, 16, 18, 20], [1.0, 1.0, 1.0, 0.0])
    # L_max 20, L_cache 4 -> expected 16: L=10, 16 -> 0; L=18 -> -(2/4) = -0.5; L=20 -> -(4/4) = -1
    comp = reward.build("overlong_shaping", {"cache_length": 4, "max_length": 20})
    assert comp(ctx).tolist() == pytest.approx([1.0, 1.0, 0.5, -1.0])
    metrics = comp.prepare(ctx)
    assert metrics["overlong_shaping/frac_penalised"] == pytest.approx(0.5)
    assert metrics["overlong_shaping/mean_penalty"] == pytest.approx(-0.375)  # (-0.5 - 1) / 4
    assert metrics["overlong_shaping/expected_length"] == 16.0
    # factor 0.5 halves the penalties
    half = reward.build("overlong_shaping", {"cache_length": 4, "factor": 0.5})
    assert half(ctx).tolist() == pytest.approx([1.0, 1.0, 0.75, -0.5])


def test_overlong_defaults_follow_max_response_length() -> None:
    # max_length = ctx.max_response_length = 20, cache = 20 // 5 = 4: same as above
    assert reward.build("overlong_shaping", {})(ctx_of([18], [1.0])).tolist() == pytest.approx([0.5])
    with pytest.raises(ConfigError, match="exceeds max_length"):
        reward.build("overlong_shaping", {"cache_length": 30})(ctx_of([18], [1.0]))
