"""AEPO: Arbitrary-Entropy Policy Optimization (arXiv 2510.08141, official ``597358816/AEPO``).

A sampling + controller step that replaces the entropy bonus. This module is its pure math; the
rollout-stage component that samples the extra responses is :class:`rlvr.rollout.aepo.AEPOSampler`.
Each step:

1. ``H`` = mean token entropy of the previous step's rollouts (0 before the first step);
2. ``T_reg`` = ``temperature_high`` if ``H <= target`` else ``temperature_low``;
3. the first ``prompt_fraction`` of this step's prompts get ``group_size`` extra responses at
   ``T_reg``; they are scored and given GRPO advantages within their groups;
4. the extra responses with advantage > ``adv_threshold`` are kept with advantage := 1 (a plain
   REINFORCE term on temperature-adjusted samples); ``k = min(max_samples, kept)``, halved when
   ``H > target``;
5. they replace the first ``k`` rows of the normal batch; old (and reference) log-probs of the mixed
   batch are computed at the actor's normal temperature, and the update is the usual one.

Higher temperature raises entropy and lower temperature lowers it, so the positive samples pull
the policy's entropy toward the target. Reading chosen here: the entropy measured is the rollout
entropy of the previous step (the official code uses the previous update's ``entropy_loss``
metric, the same quantity up to the off-policy drift of one update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.algos.groups import broadcast_to_tokens, group_mean, group_std
from rlvr.rollout.base import RolloutBatch, concat_batches
from rlvr.tasks.base import Problem


@dataclass
class AEPOMix:
    """The mixed batch: rows, per-row problems, rewards and token advantages (padded to the new width)."""

    problems: list[Problem]
    batch: RolloutBatch
    rewards: Tensor
    correct: Tensor
    advantages: Tensor
    stats: dict[str, float]


def select_positive(rewards: Tensor, group_ids: Tensor, threshold: float, eps: float = 1e-6) -> Tensor:
    """Indices of responses whose GRPO advantage ``(R - mean_g) / (std_g + eps)`` exceeds ``threshold``."""
    adv = (rewards - group_mean(rewards, group_ids)) / (group_std(rewards, group_ids) + eps)
    return (adv > threshold).nonzero().squeeze(-1)


def mix(
    main: RolloutBatch,
    main_problems: list[Problem],
    main_rewards: Tensor,
    main_correct: Tensor,
    main_advantages: Tensor,
    extra: RolloutBatch,
    extra_problems: list[Problem],
    extra_rewards: Tensor,
    *,
    entropy: float,
    target: float,
    max_samples: int,
    adv_threshold: float,
    pad_token_id: int,
) -> AEPOMix:
    """Replace the first ``k`` rows of ``main`` by the positive extra samples (advantage 1)."""
    chosen = select_positive(extra_rewards, extra.group_ids, adv_threshold)
    k = min(max_samples, int(chosen.numel()), main.input_ids.shape[0])
    if entropy > target:
        k //= 2
    stats = {"aepo/positive": float(chosen.numel()), "aepo/replaced": float(k)}
    if k == 0:
        return AEPOMix(main_problems, main, main_rewards, main_correct, main_advantages, stats)
    chosen = chosen[:k]
    keep = torch.arange(k, main.input_ids.shape[0], device=main_advantages.device)
    batch = concat_batches([extra.rows(chosen), main.rows(keep)], pad_token_id)
    width = batch.response_mask.shape[1]
    new_adv = broadcast_to_tokens(torch.ones(k, device=main_advantages.device), batch.response_mask[:k])
    old_adv = torch.nn.functional.pad(main_advantages[keep], (0, width - main_advantages.shape[1]))
    return AEPOMix(
        problems=[extra_problems[i] for i in chosen.tolist()] + [main_problems[i] for i in keep.tolist()],
        batch=batch,
        rewards=torch.cat([extra_rewards[chosen], main_rewards[keep]]),
        correct=torch.cat([extra_rewards[chosen] >= 1.0, main_correct[keep]]),
        advantages=torch.cat([new_adv, old_adv]),
        stats=stats,
    )


def aepo_temperature(entropy: float, target: float, high: float, low: float) -> float:
    """``T_reg``: ``high`` while the measured entropy is at or below the target, else ``low``."""
    return high if entropy <= target else low


def sub_prompt_count(num_prompts: int, fraction: float) -> int:
    """How many of the step's prompts get the extra temperature-adjusted rollout (at least 1)."""
    return max(1, math.floor(num_prompts * fraction))
