"""Entropy bonus (stage: regularizer): ``loss = -coef * aggregate(H)``.

``H`` is the per-token entropy of the current policy over the full vocabulary (``ctx.entropy``,
with gradient). Maximising entropy is the classic exploration bonus of PPO (arXiv 1707.06347,
``c_2 S[pi]``); verl's ``entropy_coeff`` adds the same term, aggregated with the loss mode.
"""

from __future__ import annotations

import torch

from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import regularizer


@regularizer.register("entropy_bonus", requires=("entropy",))
def entropy_bonus(ctx: AlgoContext, *, coef: float = 0.001) -> RegularizerOutput:
    """``-coef * aggregate(H)``; metric ``entropy`` is the mean over valid tokens."""
    ctx.require("entropy", who="regularizer 'entropy_bonus'")
    assert ctx.entropy is not None
    entropy = torch.where(ctx.response_mask > 0, ctx.entropy, torch.zeros_like(ctx.entropy))
    return RegularizerOutput(
        loss=-coef * ctx.aggregate(entropy), metrics={"entropy": masked_float(entropy, ctx.response_mask)}
    )
