"""RLOO leave-one-out baseline (stage: advantage).

REINFORCE Leave-One-Out (Kool et al. 2019; "Back to Basics", Ahmadian et al., arXiv 2402.14740):

    A_i = R_i - 1/(G-1) * sum_{j != i} R_j  =  G/(G-1) * (R_i - mean_g(R))

broadcast to every response token. A singleton group has no other sample to form a baseline; as in
verl's ``compute_rloo_outcome_advantage`` its advantage is the raw reward ``R_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.grpo import seq_rewards, to_tokens
from rlvr.algos.groups import group_count, group_sum
from rlvr.algos.registry import advantage


@advantage.register("rloo", requires=("rewards", "group_ids"))
def rloo(ctx: AlgoContext) -> Tensor:
    """``A_i = R_i - mean_{j != i, j in g(i)} R_j`` (arXiv 2402.14740); singleton group -> ``R_i``."""
    rewards = seq_rewards(ctx, "advantage 'rloo'")
    group_ids = ctx.group_ids
    assert group_ids is not None
    count = group_count(group_ids).to(rewards.dtype)
    others = (group_sum(rewards, group_ids) - rewards) / (count - 1).clamp_min(1.0)
    baseline = torch.where(count > 1, others, torch.zeros_like(rewards))
    return to_tokens(rewards - baseline, ctx.response_mask)
