"""dynamic_sampling: DAPO's filter keeps only groups whose rewards are not all equal."""

from __future__ import annotations

import torch

from rlvr.algos.dynamic_sampling import informative_group_ids, keep_informative_groups


def test_keep_informative_groups() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.1, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4])
    # g0 all 1, g2 all 0, g3 a singleton (std 0), g4 equal floats -> dropped; g1 mixed -> kept
    assert keep_informative_groups(rewards, groups).tolist() == [False, False, True, True] + [False] * 5
    assert informative_group_ids(rewards, groups).tolist() == [1]
    # integer rewards and arbitrary (non-contiguous) ids work too
    assert keep_informative_groups(torch.tensor([1, 0, 1, 1]), torch.tensor([7, 7, 3, 3])).tolist() == [
        True,
        True,
        False,
        False,
    ]
