"""DAPO dynamic sampling: keep only informative groups (stage: sampling; pure functions, not registered).

DAPO (arXiv 2503.14476; verl ``recipe/dapo/dapo_ray_trainer.py``, ``algorithm.filter_groups``)
drops every group of two or more responses whose metric (accuracy, score or ``seq_reward``; DLER
uses ``seq_reward``) has standard deviation 0 across its responses, i.e. all-correct and all-wrong
groups, whose GRPO advantages are all zero; it then re-samples prompts until ``train_batch_size``
groups survive (at most ``max_num_gen_batches`` rounds) and truncates to exactly that many groups.
The refill loop belongs to the trainer; this module only decides which responses to keep.

"std 0" is tested as ``max == min`` within the group, which is exact (a float std of equal values
can come out as a tiny non-zero number). A group of a single response is kept, as in verl, whose
filter keeps a group when ``std > 0 or len(group) == 1``.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.algos.groups import group_count
from rlvr.algos.shaping import group_extreme


def keep_informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """``(B,)`` bool: True where the response's group has non-constant rewards (std > 0) or one response."""
    values = rewards.detach().double()
    varies = group_extreme(values, group_ids, "amax") > group_extreme(values, group_ids, "amin")
    return varies | (group_count(group_ids) == 1)


def informative_group_ids(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """The distinct ids of the groups :func:`keep_informative_groups` keeps, in sorted order."""
    return group_ids[keep_informative_groups(rewards, group_ids)].unique()
