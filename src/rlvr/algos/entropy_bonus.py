"""Entropy bonus (stage: regularizer): ``loss = -coef * aggregate(H)``.

``H`` is the per-token entropy of the current policy over the full vocabulary (``ctx.entropy``,
with gradient). Maximising entropy is the classic exploration bonus of PPO (arXiv 1707.06347,
``c_2 S[pi]``); verl's ``entropy_coeff`` adds the same term, aggregated with the loss mode. It is
also the "naive entropy regularization" baseline of SIREN (arXiv 2509.25133, official
``naive_entropy_reg``, coef 0.005), whose actor aggregates it with the policy loss's mode.
"""

from __future__ import annotations

import torch

from rlvr.algos.aggregation import AggMode
from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import regularizer


@regularizer.register("entropy_bonus", requires=("entropy",))
def entropy_bonus(ctx: AlgoContext, *, coef: float = 0.001, agg_mode: AggMode | None = None) -> RegularizerOutput:
    """``-coef * aggregate(H)`` with ``agg_mode`` (None: the run's mode); metric ``entropy`` is the token mean."""
    ctx.require("entropy", who="regularizer 'entropy_bonus'")
    assert ctx.entropy is not None
    entropy = torch.where(ctx.response_mask > 0, ctx.entropy, torch.zeros_like(ctx.entropy))
    return RegularizerOutput(
        loss=-coef * ctx.aggregate(entropy, mode=agg_mode), metrics={"entropy": masked_float(entropy, ctx.response_mask)}
    )
