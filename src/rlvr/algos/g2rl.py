"""G2RL, Gradient-Guided RL: rewards scaled by how novel each response's gradient direction is in its group (stage: reward), arXiv 2512.15687.

**Mostly inferred.** Sourced only from the abstract and the section titles of the paper ("Policy-Referential
Sensitivity", "Groupwise Gradient-Guided Exploration Score", "Gradient-Guided Reward Shaping",
"Practical Reward Rescaling", appendix "First-Order Sensitivity at the Last Layer"); no code was found.
What is sourced: each response gets a sequence-level feature from the final-layer sensitivity,
available from the ordinary forward pass; the features are compared within the group to give an
exploration score; responses whose directions are novel get a **bounded multiplicative reward
scaler** above 1, redundant ones below 1; the method composes with PPO clipping and KL.

What is inferred [INFERENCE], exactly:

1. Feature: ``phi_i = normalize(mean_t W^T (e_{y_t} - p_t))``, the mean over response ``i``'s tokens of
   the gradient of ``log pi(y_t)`` with respect to the final hidden state (up to the constant
   ``1 / T``), under the rollout policy at the sampling temperature
   (``ctx.extras["old_gradient_feature"]``, :class:`rlvr.ops.forward.GradientFeature`, one ``D``-vector
   per response from the rollout-policy forward). A response without tokens has ``phi = 0``.
2. Exploration score (novelty): ``nu_i = 1 - max_{j != i} cos(phi_i, phi_j)`` over the other members
   of the group (``novelty="max"``, default), or ``1 - mean_{j != i} cos(phi_i, phi_j)`` (``"mean"``);
   0 for a group of one.
3. Scaler: ``s_i = clip(1 + coef * (nu_i - mean_group(nu)), 1 - bound, 1 + bound)`` (``coef = 1``,
   ``bound = 0.2``; the paper's values are unknown). A group's scalers centre on 1.
4. Reward: ``R_i <- s_i * R_i`` where ``R_i > 0`` (``apply_to="positive"``, default: only correct
   responses are re-weighted, a wrong one keeps its reward), or for every response (``"all"``),
   before the advantage stage.

Metrics: ``g2rl/novelty_mean``, ``g2rl/scale_mean``, ``g2rl/scale_min``, ``g2rl/scale_max``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_mean
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, check_choice, float_rewards, group_ids_of
from rlvr.errors import ConfigError, MissingInputError

Novelty = Literal["max", "mean"]
NOVELTIES: tuple[str, ...] = get_args(Novelty)
ApplyTo = Literal["positive", "all"]
APPLY_TO: tuple[str, ...] = get_args(ApplyTo)


def group_novelty(features: Tensor, group_ids: Tensor, mode: Novelty = "max") -> Tensor:
    """``(B,)`` float64: ``1 - max`` (or ``1 - mean``) of the cosine between each row's feature and its group's other rows'; 0 alone."""
    phi = torch.nn.functional.normalize(features.detach().double(), dim=-1)
    cos = phi @ phi.T
    others = (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(len(group_ids), dtype=torch.bool, device=group_ids.device)
    count = others.sum(-1)
    if mode == "max":
        nearest = cos.masked_fill(~others, float("-inf")).amax(-1)
    else:
        nearest = (cos * others).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, 1.0 - nearest, torch.zeros_like(nearest))


def novelty_scale(novelty: Tensor, group_ids: Tensor, coef: float, bound: float) -> Tensor:
    """``clip(1 + coef * (nu - mean_group(nu)), 1 - bound, 1 + bound)``, ``(B,)``."""
    return (1.0 + coef * (novelty - group_mean(novelty, group_ids))).clamp(1.0 - bound, 1.0 + bound)


@reward.register("g2rl", requires=("rewards", "group_ids", "old_gradient_feature"))
class G2rl(RewardShaper):
    """G2RL (arXiv 2512.15687, feature and scaler inferred): rewards scaled by the group novelty of the last-layer gradient direction.

    Knobs: ``coef`` (1.0), ``bound`` (0.2: scalers in [0.8, 1.2]), ``novelty`` (max | mean), ``apply_to``
    (positive | all). Reads ``ctx.extras["old_gradient_feature"]`` (the trainer computes it).
    """

    name = "g2rl"

    def __init__(self, *, coef: float = 1.0, bound: float = 0.2, novelty: Novelty = "max", apply_to: ApplyTo = "positive") -> None:
        super().__init__()
        check_choice(self.who(), "novelty", novelty, NOVELTIES)
        check_choice(self.who(), "apply_to", apply_to, APPLY_TO)
        if not 0.0 <= bound < 1.0:
            raise ConfigError(f"{self.who()}: bound must be in [0, 1), got {bound}")
        self.coef = float(coef)
        self.bound = float(bound)
        self.novelty = novelty
        self.apply_to = apply_to

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        group_ids = group_ids_of(ctx, self.who())
        features = ctx.extras.get("old_gradient_feature")
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] != ctx.batch_size:
            raise MissingInputError(
                f"{self.who()} needs ctx.extras['old_gradient_feature'] (B={ctx.batch_size}, D): the mean last-layer "
                "gradient direction of each response under the rollout policy (the trainer's forward computes it)"
            )
        novelty = group_novelty(features.to(rewards.device), group_ids, self.novelty)
        scale = novelty_scale(novelty, group_ids, self.coef, self.bound)
        applied = scale if self.apply_to == "all" else torch.where(rewards > 0, scale, torch.ones_like(scale))
        out = rewards * applied.to(rewards.dtype)
        metrics = {
            "novelty_mean": float(novelty.mean()) if novelty.numel() else 0.0,
            "scale_mean": float(scale.mean()) if scale.numel() else 0.0,
            "scale_min": float(scale.min()) if scale.numel() else 0.0,
            "scale_max": float(scale.max()) if scale.numel() else 0.0,
        }
        return out, metrics
