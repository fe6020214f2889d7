"""Decomposing the Entropy-Performance Exchange: perplexity- and position-based shaping, arXiv 2508.02260.

**Partly inferred.** Only the abstract and secondary summaries were available, and no code. Sourced:
in the rising stage, entropy reduction in *negative* samples drives the gains; in the plateau stage,
learning efficiency correlates with high-entropy tokens in **low-perplexity** samples and with tokens
**near the end** of a sequence; the paper proposes a "PPL-based" and a "position-based" reward /
advantage shaping on these findings. The two functions below are our reconstructions
[INFERENCE], registered separately so that either or both can be used:

**ep_ppl** (stage: advantage, wraps a ``base`` advantage, default ``"grpo"``). With the response's
log-perplexity under the rollout policy ``l_i = -mean_t log pi_old(o_t)`` (valid tokens) and its
z-score within the group ``z_i = (l_i - mean_g l) / (std_g l + eps)`` (unbiased std; 0 for a singleton
group)::

    A_{i,t} <- A_{i,t} * (1 + alpha * clip(-z_i, -c, c))

so lower-perplexity responses of a group get a larger share of their advantage and higher-perplexity
ones a smaller share. Defaults ``alpha = 0.2``, ``c = 1``.

**ep_position** (stage: token_weight). With ``t`` the 1-based index of a token among its response's
``n`` valid tokens::

    w_t = 1 + beta * t / n

(``scope="all"``, default), or the same boost only on the response's high-entropy tokens
(``scope="high_entropy"``: rollout entropy ``H_t >= quantile_q(H_{i,.})``, linear interpolation,
``q = 0.8``; other tokens keep weight 1). Default ``beta = 0.2``. The weight multiplies the per-token
policy loss (no renormalisation: the mean weight is about ``1 + beta/2``). It declares
``old_entropy`` (for ``scope="high_entropy"``), which makes the learner run the rollout-policy forward
even with one update per rollout.

Metrics: ``ep_ppl/log_ppl_mean``, ``ep_ppl/scale_min`` / ``ep_ppl/scale_max``;
``ep_position/weight_mean``, ``ep_position/frac_boosted``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.groups import group_count, group_mean, group_std
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage, token_weight
from rlvr.algos.shaping import check_choice
from rlvr.errors import ConfigError

EP_PPL_REQUIRES = ("rewards", "group_ids", "old_logprobs")
PositionScope = Literal["all", "high_entropy"]
POSITION_SCOPES: tuple[str, ...] = get_args(PositionScope)


def log_perplexity(logprobs: Tensor, mask: Tensor) -> Tensor:
    """``-mean_t log pi(o_t)`` over each row's valid tokens, ``(B,)`` (padding may hold NaN)."""
    valid = mask > 0
    lp = torch.where(valid, logprobs.detach(), torch.zeros_like(logprobs))
    return -lp.sum(-1) / valid.sum(-1).clamp(min=1).to(lp.dtype)


def group_zscore(values: Tensor, group_ids: Tensor, eps: float) -> Tensor:
    """``(v - mean_g) / (std_g + eps)`` with the unbiased std; 0 for a singleton group."""
    count = group_count(group_ids)
    z = (values - group_mean(values, group_ids)) / (group_std(values, group_ids, unbiased=True) + eps)
    return torch.where(count > 1, z, torch.zeros_like(z))


def ppl_scale(log_ppl: Tensor, group_ids: Tensor, alpha: float, clip: float, eps: float) -> Tensor:
    """``1 + alpha * clip(-z_g(log ppl), -clip, clip)`` per response, ``(B,)``."""
    return 1.0 + alpha * torch.clamp(-group_zscore(log_ppl, group_ids, eps), -clip, clip)


def row_quantile_mask(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """Bool ``(B, T)``: valid positions whose value reaches their row's ``q``-quantile of valid values (ties kept)."""
    valid = mask > 0
    pool = torch.where(valid, values.detach().double(), torch.full_like(values, float("nan"), dtype=torch.float64))
    threshold = torch.nanquantile(pool, q, dim=-1, keepdim=True)
    return valid & (values.detach().double() >= threshold)


def position_weights(mask: Tensor, beta: float) -> Tensor:
    """``1 + beta * t / n`` on valid tokens (``t`` 1-based among the row's ``n`` valid tokens), 0 on padding."""
    valid = (mask > 0).to(mask.dtype)
    rank = valid.cumsum(-1)
    n = valid.sum(-1, keepdim=True).clamp(min=1.0)
    return (1.0 + beta * rank / n) * valid


@advantage.register("ep_ppl", requires=EP_PPL_REQUIRES)
class EpPerplexity(WrapsBase):
    """Perplexity shaping (arXiv 2508.02260, form inferred): ``A * (1 + alpha clip(-z_g(log ppl), -c, c))``.

    Knobs: ``alpha`` (0.2), ``clip`` (1.0), ``eps`` (1e-6), ``base`` (``"grpo"``), ``base_kwargs``.
    """

    name = "ep_ppl"

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        clip: float = 1.0,
        eps: float = 1e-6,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        if not alpha >= 0 or not clip >= 0 or not eps >= 0:
            raise ConfigError(f"{who}: alpha, clip and eps must be >= 0, got {alpha}, {clip}, {eps}")
        self.alpha, self.clip, self.eps = float(alpha), float(clip), float(eps)
        self.base = build_base_component(advantage, base, base_kwargs, EP_PPL_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        ctx.require(*EP_PPL_REQUIRES, who=f"advantage '{self.name}'")
        assert ctx.old_logprobs is not None and ctx.group_ids is not None
        base = self.base(ctx)
        dtype = torch.promote_types(base.dtype, torch.float32)
        log_ppl = log_perplexity(ctx.old_logprobs.to(dtype), ctx.response_mask)
        scale = ppl_scale(log_ppl, ctx.group_ids, self.alpha, self.clip, self.eps)
        self.metrics = {
            f"{self.name}/log_ppl_mean": float(log_ppl.mean()) if ctx.batch_size else 0.0,
            f"{self.name}/scale_min": float(scale.min()) if ctx.batch_size else 0.0,
            f"{self.name}/scale_max": float(scale.max()) if ctx.batch_size else 0.0,
        }
        return (base.to(dtype) * scale.unsqueeze(-1)).to(base.dtype)


@token_weight.register("ep_position", requires=("old_entropy",))
def ep_position(
    ctx: AlgoContext, *, beta: float = 0.2, scope: PositionScope = "all", quantile: float = 0.8
) -> TokenWeightOutput:
    """Position shaping (arXiv 2508.02260, form inferred): weight ``1 + beta * t / n``, later tokens more.

    Knobs: ``beta`` (0.2), ``scope`` (all | high_entropy: only tokens at or above the response's
    ``quantile`` of rollout entropy are boosted), ``quantile`` (0.8).
    """
    who = "token_weight 'ep_position'"
    check_choice(who, "scope", scope, POSITION_SCOPES)
    if not beta >= 0:
        raise ConfigError(f"{who}: beta must be >= 0, got {beta}")
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"{who}: quantile must be in [0, 1], got {quantile}")
    mask = ctx.response_mask
    weights = position_weights(mask, beta)
    boosted = mask > 0
    if scope == "high_entropy":
        ctx.require("old_entropy", who=who)
        assert ctx.old_entropy is not None
        boosted = row_quantile_mask(ctx.old_entropy, mask, quantile)
        weights = torch.where(boosted, weights, (mask > 0).to(weights.dtype))
    metrics = {
        "ep_position/weight_mean": masked_float(weights, mask),
        "ep_position/frac_boosted": masked_float(boosted.to(mask.dtype), mask),
    }
    return TokenWeightOutput(weights=weights, metrics=metrics)
