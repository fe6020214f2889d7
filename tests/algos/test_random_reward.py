"""Spurious random reward (arXiv 2512.16912): Bernoulli(p) draws, seeding, resume, metrics."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import ConfigError


def _ctx(n: int, generator: torch.Generator | None = None, correct: list[int] | None = None) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.ones(n, 2),
        rewards=torch.full((n,), 0.25),
        correct=torch.tensor(correct) if correct is not None else None,
        generator=generator,
    )


def _shaper(**knobs):
    return reward.build("random_reward", knobs)


def test_random_reward_is_the_seeded_coin_flip():
    ctx = _ctx(6, correct=[1, 1, 0, 0, 1, 0])
    shaper = _shaper(p=0.5, seed=3)
    out = shaper(ctx)
    expected = (torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) < 0.5).float()
    assert out.tolist() == expected.tolist()
    assert set(out.tolist()) <= {0.0, 1.0} and out.dtype == ctx.rewards.dtype
    assert ctx.rewards.tolist() == [0.25] * 6  # not changed in place
    metrics = shaper.prepare(ctx)
    assert metrics["random_reward/mean"] == pytest.approx(float(expected.mean()))
    agree = sum(float(e) == c for e, c in zip(expected.tolist(), [1, 1, 0, 0, 1, 0])) / 6
    assert metrics["random_reward/agree_frac"] == pytest.approx(agree)
    assert shaper.prepare(ctx) == {}  # reported once


def test_random_reward_edges_and_rate():
    assert _shaper(p=0.0, seed=1)(_ctx(5)).tolist() == [0.0] * 5
    assert _shaper(p=1.0, seed=1)(_ctx(5)).tolist() == [1.0] * 5
    draws = _shaper(p=0.3, seed=0)(_ctx(4000))
    assert abs(float(draws.mean()) - 0.3) < 0.03  # 4000 draws: sd 0.0072
    with pytest.raises(ConfigError, match="p must be in"):
        _shaper(p=1.5)


def test_random_reward_resumes_from_its_state():
    first = _shaper(seed=7)
    first(_ctx(8))
    state = first.state_dict()
    expected = first(_ctx(8))
    resumed = _shaper(seed=7)
    resumed.load_state_dict(state)
    assert resumed(_ctx(8)).tolist() == expected.tolist()
    assert _shaper(seed=7)(_ctx(8)).tolist() != expected.tolist()  # a fresh one repeats the first draw instead


def test_random_reward_without_seed_draws_from_the_trainer_generator():
    gen = torch.Generator().manual_seed(11)
    twin = torch.Generator().manual_seed(11)
    out = _shaper()(_ctx(6, generator=gen))
    assert out.tolist() == (torch.rand(6, generator=twin, dtype=torch.float64) < 0.5).float().tolist()
    assert torch.equal(gen.get_state(), twin.get_state())  # the trainer's generator moved on, as a checkpoint records
    seeded = _shaper(seed=11)(_ctx(6, generator=torch.Generator().manual_seed(99)))
    assert seeded.tolist() == out.tolist()  # an int seed ignores the trainer's generator
