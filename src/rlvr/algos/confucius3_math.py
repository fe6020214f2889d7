"""Confucius3-Math: Targeted Entropy Regularization and Policy-Specific Hardness Weighting.

Source: the technical report "Confucius3-Math: A Lightweight High-Performance Reasoning LLM for
Chinese K-12 Mathematics Learning", arXiv 2506.18330, shipped as ``Confucius3-Math.pdf`` in
netease-youdao/Confucius3-Math (§6.1-6.3, Table 2, Algorithm 1). The repository has no training code; where the report leaves a detail open
the choice below is marked [INFERENCE]. Training: stage 1 GRPO + TER (4K context), stages 2-3
DAPO + RSR + PSHW (8K, 16K).

**Targeted Entropy Regularization** (regularizer ``confucius_ter``, §6.1): the loss gets
``|entropy_loss - entropy_target| * entropy_coeff`` with ``entropy_target = 0.55``,
``entropy_coeff = 0.001``. Unlike a bonus it pushes the entropy down when above the target and up
when below (Skywork-OR1's adaptive control only bounds it from below). [INFERENCE] ``entropy_loss``
is verl's: the current policy's token entropy aggregated with the loss mode over the micro-batch,
and each micro-batch's term is scaled by its share ``f = ctx.micro_batch_fraction`` of the
mini-batch (verl's gradient accumulation; the term is not linear in the tokens, so global
normalisers would not reproduce it). The gradient of ``|x|`` is a constant ``+-coef`` and chatters
around the target; ``form="sq"`` uses ``coef * (H - H*)^2`` instead (not in the report).

**Policy-Specific Hardness Weighting** (advantage ``confucius_pshw``, §6.2, Eq. 2-3)::

    R_i = +1 if correct else -1,   mu = mean_g(R),   A_i = (R_i - mu) D(q),   D(q) = alpha mu + 1.256

with ``alpha = -0.256``: ``D = 1`` on a prompt the policy always solves, ``1.512`` on one it never
solves, so prompts that are hard *for the current policy* get up to 1.5x larger advantages; no std
normalisation. Here ``R_i`` is ``2 r_i - 1`` of the reward ``r_i`` (``reward_map="signed"``: the
report's +-1 scores from a 0/1 verifier; ``"identity"`` keeps the rewards as they are, then
``D`` ranges over ``alpha mu + offset`` of the raw group mean). ``A_i = base advantage * D(q)``,
with ``base="dr_grpo"`` (``R_i - mu``, the report) run on the mapped rewards; any base estimator
whose inputs are among ``rewards, group_ids`` composes. The report also removes the length
normalisation of the loss (Eq. 1, ``sum_i sum_t``): use ``algo.agg_mode=seq-mean-token-sum``.

Recent Sample Recovery (§6.3, keep the valid overflow groups of DAPO's dynamic sampling for the
next step) is a rollout-stage option: ``rollout.recover_overflow=true``
(:meth:`rlvr.rollout.stage.RolloutStage.collect`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.aggregation import AggMode, aggregate
from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.groups import group_mean
from rlvr.algos.grpo import seq_rewards
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage, regularizer
from rlvr.algos.shaping import check_choice

TerForm = Literal["abs", "sq"]
TER_FORMS: tuple[str, ...] = get_args(TerForm)
RewardMap = Literal["signed", "identity"]
REWARD_MAPS: tuple[str, ...] = get_args(RewardMap)
PSHW_REQUIRES = ("rewards", "group_ids")


@regularizer.register("confucius_ter", requires=("entropy",))
def confucius_ter(
    ctx: AlgoContext,
    *,
    coef: float = 0.001,
    target: float = 0.55,
    form: TerForm = "abs",
    agg_mode: AggMode | None = None,
) -> RegularizerOutput:
    """Confucius3-Math targeted entropy regularization (arXiv 2506.18330): ``coef * |H - H*| * f``.

    ``H``: the micro-batch's current entropy aggregated with ``agg_mode`` (None: the run's mode);
    ``f``: the micro-batch's share of the mini-batch; ``form="sq"``: ``coef * (H - H*)^2 * f`` (ours,
    smooth at the target). Metrics ``confucius_ter/entropy``,
    ``confucius_ter/deviation`` (``H - H*``).
    """
    who = "regularizer 'confucius_ter'"
    check_choice(who, "form", form, TER_FORMS)
    ctx.require("entropy", who=who)
    assert ctx.entropy is not None
    clean = torch.where(ctx.response_mask > 0, ctx.entropy, torch.zeros_like(ctx.entropy))
    h_bar = aggregate(clean, ctx.response_mask, agg_mode or ctx.agg_mode, norm_length=ctx.padded_length)
    deviation = h_bar - target
    penalty = deviation.abs() if form == "abs" else deviation**2
    loss = coef * penalty * float(ctx.micro_batch_fraction)
    return RegularizerOutput(
        loss=loss,
        metrics={
            "confucius_ter/entropy": masked_float(clean, ctx.response_mask),
            "confucius_ter/deviation": float(deviation.detach()),
        },
    )


def hardness_weight(mapped_rewards: Tensor, group_ids: Tensor, alpha: float, offset: float) -> Tensor:
    """``D(q) = alpha * mean_g(R) + offset`` per response, ``(B,)``."""
    return alpha * group_mean(mapped_rewards, group_ids) + offset


@advantage.register("confucius_pshw", requires=PSHW_REQUIRES)
class PolicySpecificHardnessWeighting(WrapsBase):
    """Confucius3-Math PSHW (arXiv 2506.18330): ``A = base(R) * (alpha mean_g(R) + 1.256)``, ``R = 2r - 1``.

    Knobs: ``alpha`` (-0.256), ``offset`` (1.256), ``reward_map`` (``"signed"``: ``R = 2r - 1``;
    ``"identity"``), ``base`` (``"dr_grpo"``) and ``base_kwargs``. Metric ``confucius_pshw/weight_mean``.
    """

    name = "confucius_pshw"

    def __init__(
        self,
        *,
        alpha: float = -0.256,
        offset: float = 1.256,
        reward_map: RewardMap = "signed",
        base: str = "dr_grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_choice(who, "reward_map", reward_map, REWARD_MAPS)
        self.alpha = float(alpha)
        self.offset = float(offset)
        self.reward_map = reward_map
        self.base = build_base_component(advantage, base, base_kwargs, PSHW_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        rewards = seq_rewards(ctx, f"advantage '{self.name}'")
        assert ctx.group_ids is not None
        mapped = 2.0 * rewards - 1.0 if self.reward_map == "signed" else rewards
        weight = hardness_weight(mapped, ctx.group_ids, self.alpha, self.offset)
        base = self.base(replace(ctx, rewards=mapped))
        self.metrics = {f"{self.name}/weight_mean": float(weight.mean()) if weight.numel() else 0.0}
        return base * weight.to(device=base.device, dtype=base.dtype).unsqueeze(-1)
