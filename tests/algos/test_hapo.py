"""hapo: history-aware cosine / linear length rewards, history updates and checkpoint persistence."""

from __future__ import annotations

import io
import math

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.hapo import cosine_length_reward, linear_length_reward


def ctx_of(prompts: list[str], lengths: list[int], correct: list[bool]) -> AlgoContext:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        prompt_ids=prompts,
    )


def test_cosine_length_reward_values() -> None:
    assert cosine_length_reward(5, None, True) == 0.0  # no history yet
    # h = 10: L 5 -> cos(pi/4) = 0.7071068;  L 10 -> cos(pi/2) = 0
    assert cosine_length_reward(5, 10, True) == pytest.approx(math.sqrt(0.5))
    assert cosine_length_reward(10, 10, True) == pytest.approx(0.0, abs=1e-12)
    # L 15: cos(3pi/4) = -0.7071 -> correct: max(-0.7, .) = -0.7; wrong: min(0, .) = -0.7071
    assert cosine_length_reward(15, 10, True) == pytest.approx(-0.7)
    assert cosine_length_reward(15, 10, False) == pytest.approx(-math.sqrt(0.5))
    # L 5 wrong: min(0, 0.7071) = 0;  L >= 2h: -1 -> correct -0.7, wrong -1
    assert cosine_length_reward(5, 10, False) == 0.0
    assert (cosine_length_reward(25, 10, True), cosine_length_reward(25, 10, False)) == (-0.7, -1.0)


def test_linear_length_reward_values() -> None:
    # h = 10, tolerance 0.1 -> slack 11
    assert linear_length_reward(5, 10, True) == pytest.approx(0.5)  # 1 - 5/10
    assert linear_length_reward(10, 10, True) == 0.0  # h <= L < 1.1h
    assert linear_length_reward(12, 10, True) == pytest.approx(-0.1)  # -(12 - 11)/10
    assert linear_length_reward(30, 10, True) == pytest.approx(-0.7)  # max(-0.7, -1.9)
    assert linear_length_reward(10, 10, False) == 0.0  # L < 1.1h
    assert linear_length_reward(16, 10, False) == pytest.approx(-0.5)  # -(16 - 11)/10
    assert linear_length_reward(31, 10, False) == pytest.approx(-1.0)  # max(-1, -2)


def test_hapo_scores_with_old_history_then_updates() -> None:
    comp = reward.build("hapo", {})
    # batch 1: no history -> rewards unchanged; afterwards h_p = 10 (its only correct length), q unseen
    first = ctx_of(["p", "p", "q"], [10, 20, 8], [True, False, False])
    assert comp(first).tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert comp.state_dict() == {"history": {"p": 10.0}, "counts": {}}
    metrics = comp.prepare(first)
    assert metrics["hapo/history_size"] == 1.0 and metrics["hapo/frac_with_history"] == 0.0
    # batch 2 scored against h_p = 10: L 5 -> +0.7071, L 10 correct -> 0, L 15 wrong -> -0.7071, L 25 correct -> -0.7
    second = ctx_of(["p", "p", "p", "p"], [5, 10, 15, 25], [True, True, False, True])
    expected = [1 + math.sqrt(0.5), 1.0, -math.sqrt(0.5), 0.3]
    assert comp(second).tolist() == pytest.approx(expected, abs=1e-6)
    assert comp.state_dict()["history"] == {"p": 5.0}  # min(10, 5, 10, 25)
    metrics = comp.prepare(second)
    assert metrics["hapo/frac_with_history"] == 1.0
    assert metrics["hapo/mean_history"] == 5.0
    assert metrics["hapo/mean_term"] == pytest.approx((math.sqrt(0.5) - math.sqrt(0.5) - 0.7) / 4, abs=1e-6)


def test_hapo_mean_update_and_linear_variant() -> None:
    comp = reward.build("hapo", {"update": "mean", "variant": "linear", "w_lr": 2.0})
    comp(ctx_of(["p", "p"], [10, 20], [True, True]))
    assert comp.state_dict() == {"history": {"p": 15.0}, "counts": {"p": 2}}  # mean(10, 20)
    # h = 15: correct L 6 -> 1 - 6/15 = 0.6, x w_lr 2 = 1.2;  then h = (1*6 + 2*15)/3 = 12
    assert comp(ctx_of(["p"], [6], [True])).tolist() == pytest.approx([2.2])
    assert comp.state_dict() == {"history": {"p": 12.0}, "counts": {"p": 3}}
    # the mean stays exact: (1 * 7 + 3 * 12) / 4 = 10.75 (the official int64 history would store 10)
    comp(ctx_of(["p"], [7], [True]))
    assert comp.state_dict() == {"history": {"p": 10.75}, "counts": {"p": 4}}


def test_hapo_history_survives_checkpoint_round_trip() -> None:
    comp = reward.build("hapo", {})
    comp(ctx_of(["p", "q"], [10, 4], [True, True]))
    buffer = io.BytesIO()
    torch.save({"pipeline": [comp.state_dict()]}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["pipeline"][0]
    fresh = reward.build("hapo", {})
    fresh.load_state_dict(restored)
    assert fresh.state_dict() == {"history": {"p": 10.0, "q": 4.0}, "counts": {}}
    batch = ctx_of(["p", "q"], [5, 8], [True, True])
    # same rewards from the restored and the original component: p: cos(pi/4); q: L 8 = 2h -> -1 -> -0.7
    assert fresh(batch).tolist() == pytest.approx(comp(batch).tolist())
    assert fresh(ctx_of(["q"], [2], [True])).tolist() == pytest.approx([1.0 + math.cos(math.pi / 2 * 2 / 4)])
