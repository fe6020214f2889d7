"""GRPO and Dr. GRPO outcome advantages (stage: advantage).

* GRPO (DeepSeekMath, arXiv 2402.03300):  A_i = (R_i - mean_g(R)) / (std_g(R) + eps), broadcast to tokens.
* Dr. GRPO ("Understanding R1-Zero-Like Training", arXiv 2503.20783):  A_i = R_i - mean_g(R).

``std`` is the unbiased (``torch.std``) standard deviation. Singleton groups follow verl's
``compute_grpo_outcome_advantage``: a group of one response gets mean 0 and std 1, so its
advantage is the raw reward ``R_i`` (``R_i / (1 + eps)`` with std normalisation). This is handled
explicitly here: ``groups.group_mean`` alone would return ``R_i`` for a singleton and give 0.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_count, group_mean, group_std
from rlvr.algos.registry import advantage
from rlvr.errors import ConfigError

GrpoScale = Literal["group", "batch"]
GRPO_SCALES: tuple[str, ...] = get_args(GrpoScale)


def seq_rewards(ctx: AlgoContext, who: str, *, groups: bool = True) -> Tensor:
    """``ctx.rewards`` as a floating ``(B,)`` tensor, after checking it (and ``group_ids``) is set."""
    ctx.require("rewards", *(("group_ids",) if groups else ()), who=who)
    rewards = ctx.rewards
    assert rewards is not None
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def group_baseline(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Group mean of the rewards, ``(B,)``; 0 for a singleton group (verl's convention)."""
    count = group_count(group_ids).to(rewards.dtype)
    return torch.where(count > 1, group_mean(rewards, group_ids), torch.zeros_like(rewards))


def to_tokens(seq_values: Tensor, response_mask: Tensor) -> Tensor:
    """Broadcast ``(B,)`` -> ``(B, T)``, zero on padding."""
    return seq_values.unsqueeze(-1) * response_mask.to(seq_values.dtype)


@advantage.register("grpo", requires=("rewards", "group_ids"))
def grpo(
    ctx: AlgoContext, *, norm_by_std: bool = True, eps: float = 1e-6, scale: GrpoScale = "group"
) -> Tensor:
    """GRPO advantage ``(R - mean_g) / (std + eps)`` (arXiv 2402.03300), shape ``(B, T)``.

    ``scale="group"``: std within each prompt's group (verl; singleton group -> std 1).
    ``scale="batch"``: one std of the raw rewards over the whole (mini-)batch (TRL
    ``scale_rewards="batch"``); the centring stays per group. ``norm_by_std=False`` is Dr. GRPO.
    verl uses ``eps=1e-6``, TRL ``1e-4``.
    """
    if scale not in GRPO_SCALES:
        raise ConfigError(f"advantage 'grpo': unknown scale '{scale}'; valid: {', '.join(GRPO_SCALES)}")
    rewards = seq_rewards(ctx, "advantage 'grpo'")
    group_ids = ctx.group_ids
    assert group_ids is not None
    adv = rewards - group_baseline(rewards, group_ids)
    if norm_by_std:
        if scale == "group":
            std = group_std(rewards, group_ids, unbiased=True)  # singleton -> 1
        elif rewards.numel() > 1:
            std = rewards.std().expand_as(rewards)
        else:
            std = torch.ones_like(rewards)
        adv = adv / (std + eps)
    return to_tokens(adv, ctx.response_mask)


@advantage.register("dr_grpo", requires=("rewards", "group_ids"))
def dr_grpo(ctx: AlgoContext) -> Tensor:
    """Dr. GRPO advantage ``R - mean_g(R)`` with no std division (arXiv 2503.20783), ``(B, T)``.

    Pair it with ``agg_mode="seq-mean-token-sum-norm"`` to get the paper's constant-length loss.
    """
    return grpo(ctx, norm_by_std=False)
