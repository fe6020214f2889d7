"""laser_d: difficulty buckets, coverage targets, the monitor schedule and checkpoint state."""

from __future__ import annotations

import io

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.laser_d import choose_targets, monitor_buckets, reward_buckets


def ctx_of(lengths: list[int], correct: list[bool], group_ids: list[int], step: int = 0) -> AlgoContext:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        group_ids=torch.tensor(group_ids),
        step=step,
        max_response_length=10,
    )


# three prompts, n = 3: g0 3/3 correct, g1 1/3, g2 2/3
LENGTHS = [3, 5, 9, 4, 7, 10, 6, 6, 9]
CORRECT = [True, True, True, True, False, False, True, True, False]
GROUPS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
KNOBS = {"monitor_freq": 2, "lower_bound": 4, "upper_bound": 8, "interval": 2}  # thresholds 4, 6, 8


def test_bucket_conventions_differ_at_the_boundaries() -> None:
    correct, groups = torch.tensor(CORRECT), torch.tensor(GROUPS)
    # monitor: k/n <= 1/3 low, <= 2/3 medium, else high -> g0 high, g1 (1/3) low, g2 (2/3) medium
    assert monitor_buckets(correct, groups) == ["high"] * 3 + ["low"] * 3 + ["medium"] * 3
    # reward: k/n >= 2/3 high, >= 1/3 medium -> g0 high, g1 (1/3) medium, g2 (2/3) high
    assert reward_buckets(correct, groups) == ["high"] * 3 + ["medium"] * 3 + ["high"] * 3


def test_choose_targets_floor_and_ceil() -> None:
    buckets = ["high"] * 3 + ["low"] * 3 + ["medium"] * 3
    targets = choose_targets(LENGTHS, buckets, [4, 6, 8], n_rollout=3, max_response_length=10)
    # high: n_lower = floor(2*3/3) = 2, lengths 3, 5, 9: l=4 covers 1 -> floor(1/3*2) = 0;
    #       l=6 covers 2 -> floor(2/3*2) = 1 >= 1 -> target 6
    # medium: n_lower = floor(3/3) = 1, lengths 6, 6, 9: l=8 covers 2 -> floor(2/3) = 0 -> none -> max 10
    # low: n_lower = 1, lengths 4, 7, 10: at most 2 of 3 covered -> floor(2/3) = 0 -> max 10
    assert targets == {"low": 10, "medium": 10, "high": 6}
    # n = 4: floor(8/3) = 2 as above, ceil(8/3) = 3: l=4 covers 1 -> 1/3 * 3 = 1 >= 1 -> target 4
    high = ["high"] * 3
    assert choose_targets([3, 5, 9], high, [4, 6, 8], 4, 10)["high"] == 6
    assert choose_targets([3, 5, 9], high, [4, 6, 8], 4, 10, round_method="ceil")["high"] == 4
    # an empty bucket gets the maximum length
    assert choose_targets([3], ["low"], [4], 3, 10) == {"low": 4, "medium": 10, "high": 10}


def test_laser_d_bootstraps_targets_then_rewards() -> None:
    comp = reward.build("laser_d", KNOBS)
    out = comp(ctx_of(LENGTHS, CORRECT, GROUPS))
    # targets from this batch (first call): high 6, medium 10, low 10 (test above).
    # reward buckets: g0 high (6): L 3, 5 correct -> +0.5, L 9 -> 0
    #                 g1 medium (10): L 4 correct -> +0.5;  g2 high (6): L 6, 6 correct -> +0.5, L 9 wrong
    assert out.tolist() == pytest.approx([1.5, 1.5, 1.0, 1.5, 0.0, 0.0, 1.5, 1.5, 0.0])
    metrics = comp.prepare(ctx_of(LENGTHS, CORRECT, GROUPS))
    assert metrics["laser_d/monitored"] == 0.0  # step 0 already monitored by the bootstrap
    assert (metrics["laser_d/target_low"], metrics["laser_d/target_medium"], metrics["laser_d/target_high"]) == (
        10.0,
        10.0,
        6.0,
    )
    assert metrics["laser_d/frac_rewarded"] == pytest.approx(5 / 9)
    # mean target over responses: (6*3 + 10*3 + 6*3) / 9 = 66/9
    assert metrics["laser_d/mean_target"] == pytest.approx(66 / 9)


def test_laser_d_monitor_schedule_and_state_round_trip() -> None:
    comp = reward.build("laser_d", {**KNOBS, "target_length": 7})
    first = ctx_of(LENGTHS, CORRECT, GROUPS, step=0)
    out = comp(first)
    # initial target 7 for every bucket: correct rows with L <= 7 get +0.5 (rows 0, 1, 3, 6, 7)
    assert out.tolist() == pytest.approx([1.5, 1.5, 1.0, 1.5, 0.0, 0.0, 1.5, 1.5, 0.0])
    assert comp.prepare(first)["laser_d/monitored"] == 1.0  # step 0 % 2 == 0: statistics of this batch
    assert comp.state_dict() == {"targets": {"low": 10, "medium": 10, "high": 6}, "monitor_step": 0}
    # step 1: no refresh, even though this batch (all short and all correct) would give other targets
    short = ctx_of([2, 2, 2], [True, True, True], [0, 0, 0], step=1)
    comp(short)
    assert comp.prepare(short)["laser_d/monitored"] == 0.0
    assert comp.state_dict()["targets"]["high"] == 6
    # step 2: refresh from the short batch: high bucket, l=4 covers 3/3 -> floor(1 * 2) = 2 >= 1 -> 4
    short.step = 2
    comp(short)
    assert comp.prepare(short)["laser_d/target_high"] == 4.0
    # checkpoint round trip (weights_only load, as a plain dict of str -> int)
    buffer = io.BytesIO()
    torch.save(comp.state_dict(), buffer)
    buffer.seek(0)
    fresh = reward.build("laser_d", KNOBS)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.state_dict() == comp.state_dict()
    assert fresh(ctx_of([5, 3], [True, True], [0, 0], step=3)).tolist() == pytest.approx([1.0, 1.5])  # high: 4
