"""REINFORCE++ advantages (stage: advantage), REINFORCE++ paper arXiv 2501.03262.

``reinforce_pp`` (verl ``adv_estimator=reinforce_plus_plus``): the outcome reward ``R_i`` is the
reward of the last valid token; each token gets its discounted return, with no baseline,

    G_{i,t} = gamma^{k_{i,t}} * R_i,   k_{i,t} = number of valid tokens of sequence i after t,

and the returns are whitened over every valid token of the batch:
``A = (G - mu) / sqrt(var + 1e-8)`` (token-weighted mean, unbiased variance; ``masked_whiten``).
Reading chosen: ``k`` counts *valid* tokens only. For the usual contiguous response mask this is
exactly verl's reverse loop; verl's loop additionally resets the return at a masked gap inside a
response (tokens before the gap then get 0), which we do not copy. verl may also fold a per-token
KL penalty into the token rewards (``use_kl_in_reward``); here KL is a separate regularizer.

``reinforce_pp_baseline`` (verl ``reinforce_plus_plus_baseline``; the estimator DLER, arXiv
2510.15110, uses for batch-wise reward normalisation):

    A_{i,t} = whiten_batch(R_i - mean_g(R))   over all valid tokens of the batch,

with verl's convention that a singleton group has baseline 0. Both whitenings are token-weighted,
so long responses weigh more in the batch mean and variance.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.algos.aggregation import masked_whiten
from rlvr.algos.context import AlgoContext
from rlvr.algos.grpo import group_baseline, seq_rewards, to_tokens
from rlvr.algos.registry import advantage
from rlvr.errors import ConfigError


@advantage.register("reinforce_pp", requires=("rewards",))
def reinforce_pp(ctx: AlgoContext, *, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ (arXiv 2501.03262): ``whiten_batch(gamma^{k_t} R)``, ``k_t`` = valid tokens after t."""
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"advantage 'reinforce_pp': gamma must be in [0, 1], got {gamma}")
    rewards = seq_rewards(ctx, "advantage 'reinforce_pp'", groups=False)
    mask = ctx.response_mask.to(rewards.dtype)
    after = mask.flip(-1).cumsum(-1).flip(-1) - mask  # valid tokens strictly after t
    returns = to_tokens(rewards, mask) * gamma**after
    return masked_whiten(returns, mask) * mask


@advantage.register("reinforce_pp_baseline", requires=("rewards", "group_ids"))
def reinforce_pp_baseline(ctx: AlgoContext) -> Tensor:
    """REINFORCE++-baseline / DLER (arXiv 2510.15110): ``whiten_batch(R - mean_g(R))`` over valid tokens."""
    rewards = seq_rewards(ctx, "advantage 'reinforce_pp_baseline'")
    group_ids = ctx.group_ids
    assert group_ids is not None
    mask = ctx.response_mask.to(rewards.dtype)
    centered = to_tokens(rewards - group_baseline(rewards, group_ids), mask)
    return masked_whiten(centered, mask) * mask
