"""R^3's entropy ranking reward (arXiv 2601.19620; the statistic is inferred): L, G, tied ranks and the band, by hand."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.r3 import average_ranks, entropy_structure, rank_bonus
from rlvr.errors import ConfigError, MissingInputError


def test_entropy_structure_by_hand() -> None:
    entropy = torch.tensor([[1.0, 3.0, 0.0, 2.0, 9.0], [4.0, 4.0, 4.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    local, level = entropy_structure(entropy, mask, window=2)
    # row 0: windows (1,3) (3,0) (0,2) -> means 2, 1.5, 1 -> L = 2; G = 6 / 4; the padded 9 is ignored
    # row 1: L = G = 4; row 2 (empty): 0 and 0
    assert local.tolist() == pytest.approx([2.0, 4.0, 0.0])
    assert level.tolist() == pytest.approx([1.5, 4.0, 0.0])
    # a window longer than the response: the whole response (L = G)
    local, level = entropy_structure(entropy[:1], mask[:1], window=16)
    assert local.tolist() == level.tolist() == pytest.approx([1.5])


def test_average_ranks_share_ties() -> None:
    assert average_ranks(torch.tensor([0.3, 0.1, 0.3, 0.2], dtype=torch.float64)).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert average_ranks(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)).tolist() == [1.0, 1.0, 1.0]


def test_rank_bonus_ranks_candidates_within_each_group() -> None:
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 7.0, 2.0, 1.0], dtype=torch.float64)
    candidates = torch.tensor([True, True, False, True, True, True, False])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    bonus, ranked = rank_bonus(scores, candidates, groups, band=0.1)
    # group 0: candidates 0.5, 0.1, 0.3 -> ranks 2, 0, 1 of n_f - 1 = 2; group 1: 7, 2 -> 1, 0; group 2: none
    assert bonus.tolist() == pytest.approx([0.1, 0.0, 0.0, 0.05, 0.1, 0.0, 0.0])
    assert ranked.tolist() == [True, True, False, True, True, True, False]
    lone, lone_ranked = rank_bonus(scores[:3], torch.tensor([True, False, False]), groups[:3], band=0.1)
    assert lone.tolist() == [0.0, 0.0, 0.0] and not lone_ranked.any()  # a lone failure gets nothing


def test_r3_rank_shapes_the_failed_rewards_only() -> None:
    entropy = torch.tensor(
        [
            [0.0, 0.0, 3.0, 3.0],  # failed: L = 3, G = 1.5 -> s = 1.5
            [1.0, 1.0, 1.0, 1.0],  # failed: s = 0
            [2.0, 0.0, 0.0, 0.0],  # failed: L = 1, G = 0.5 -> s = 0.5
            [5.0, 0.0, 0.0, 0.0],  # correct
        ]
    )
    mask = torch.ones(4, 4)
    ctx = AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([0.0, 0.0, 0.0, 1.0]),
        correct=torch.tensor([False, False, False, True]),
        group_ids=torch.tensor([0, 0, 0, 0]),
        old_entropy=entropy,
    )
    shaper = reward.build("r3_rank", {"band": 0.2, "window": 2}).fn
    out = shaper(ctx)
    assert out.tolist() == pytest.approx([0.2, 0.0, 0.1, 1.0])  # ranks 2, 0, 1 of 2; the correct row keeps 1
    assert ctx.rewards.tolist() == [0.0, 0.0, 0.0, 1.0]  # not changed in place
    metrics = shaper.prepare(ctx)
    assert metrics["r3_rank/ranked_frac"] == pytest.approx(0.75)
    assert metrics["r3_rank/score"] == pytest.approx((1.5 + 0.0 + 0.5) / 3)
    assert metrics["r3_rank/mean_bonus"] == pytest.approx(0.1)
    # every failed reward stays below a correct one for band < 1
    assert max(out[:3]) < out[3]


def test_r3_rank_checks_knobs_and_inputs() -> None:
    with pytest.raises(ConfigError, match="band"):
        reward.build("r3_rank", {"band": -1.0})
    with pytest.raises(ConfigError, match="window"):
        reward.build("r3_rank", {"window": 0})
    ctx = AlgoContext(response_mask=torch.ones(2, 2), rewards=torch.zeros(2), correct=torch.zeros(2, dtype=torch.bool),
                      group_ids=torch.zeros(2, dtype=torch.long))  # fmt: skip
    with pytest.raises(MissingInputError, match="old_entropy"):
        reward.build("r3_rank").fn(ctx)
