"""dynamic_sampling: DAPO's filter keeps groups whose rewards are not all equal, and singletons."""

from __future__ import annotations

import torch

from rlvr.algos.dynamic_sampling import informative_group_ids, keep_informative_groups


def test_keep_informative_groups() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.1, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4])
    # g0 all 1, g2 all 0, g4 equal floats -> dropped; g1 mixed -> kept; g3 a singleton -> kept
    # (official DAPO filter, verl recipe/dapo/dapo_ray_trainer.py: keep if std > 0 or len == 1)
    expected = [False, False, True, True, False, False, True, False, False]
    assert keep_informative_groups(rewards, groups).tolist() == expected
    assert informative_group_ids(rewards, groups).tolist() == [1, 3]
    # integer rewards and arbitrary (non-contiguous) ids work too
    assert keep_informative_groups(torch.tensor([1, 0, 1, 1]), torch.tensor([7, 7, 3, 3])).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_singleton_groups_are_kept() -> None:
    # group_size 1: every group has one response, and the official filter keeps them all
    rewards = torch.tensor([1.0, 0.0, 0.0])
    assert keep_informative_groups(rewards, torch.tensor([5, 2, 9])).tolist() == [True, True, True]
    # a singleton next to a constant pair: only the singleton survives
    assert keep_informative_groups(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0, 0, 1])).tolist() == [
        False,
        False,
        True,
    ]
