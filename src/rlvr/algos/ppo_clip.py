"""PPO clipped surrogate with clip-higher and dual clip (stage: policy_loss).

Per token, with ``r = exp(clamp(log pi - log pi_old, -20, 20))`` (the clamp is verl's):

    l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))                PPO, arXiv 1707.06347
    l = min(l, -A c)   where A < 0, if clip_ratio_c = c is set             dual clip, arXiv 1912.09729

``clip_low = clip_high = 0.2`` is PPO/GRPO; DAPO's clip-higher (arXiv 2503.14476) uses
``clip_high = 0.28``. verl's dual-clip default is ``c = 3.0`` (many recipes use 10); here it is off
unless set. The per-token loss is returned unreduced; the trainer aggregates it with ``ctx.aggregate``.

Metrics (fractions of valid tokens): ``clip_frac`` (the clipped branch is active),
``clip_frac_low`` (r < 1 - clip_low with A < 0), ``clip_frac_high`` (r > 1 + clip_high with A > 0;
the two add up to ``clip_frac``), ``dual_clip_frac`` (the dual bound is active; verl calls this
``pg_clipfrac_lower``) and ``approx_kl`` = mean of ``log pi_old - log pi`` (verl's ``ppo_kl``).

Clipping-bias diagnostics by sign of the advantage ("Exploration v.s. Exploitation", arXiv
2512.16912: under spurious rewards the clipping bias lowers the entropy; the clip-high side lowers
it and the clip-low side raises it, arXiv 2509.26114). Among the valid tokens with ``A > 0``:
``clip/pos_high_frac`` (``r > 1 + clip_high``: clipped, no gradient) and ``clip/pos_low_frac``
(``r < 1 - clip_low``: outside the range but not clipped); among those with ``A < 0``:
``clip/neg_low_frac`` (``r < 1 - clip_low``: clipped) and ``clip/neg_high_frac``
(``r > 1 + clip_high``: not clipped; the dual clip's region); and the shares of valid tokens with
each sign, ``clip/pos_frac`` and ``clip/neg_frac`` (``clip_frac_high = pos_high_frac * pos_frac``,
``clip_frac_low = neg_low_frac * neg_frac``). A sign without tokens gives 0. Every loss built on
:func:`clipped_surrogate` (ppo_clip, gspo, lp_reg, hapo_h, cj_grpo) logs them; they change no loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.registry import policy_loss
from rlvr.errors import ConfigError

LOG_RATIO_LIMIT = 20.0


def masked_float(values: Tensor, mask: Tensor) -> float:
    """Mean of ``values`` over valid tokens as a python float (no gradient)."""
    return float(masked_mean(values.detach().to(torch.float32), mask.to(torch.float32)).item())


def policy_inputs(ctx: AlgoContext, who: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(logprobs, log_ratio, advantages, mask)`` with padding zeroed, after checking the fields."""
    ctx.require("logprobs", "old_logprobs", "advantages", who=who)
    assert ctx.logprobs is not None and ctx.old_logprobs is not None and ctx.advantages is not None
    valid = ctx.response_mask > 0
    logprobs = torch.where(valid, ctx.logprobs, torch.zeros_like(ctx.logprobs))
    log_ratio = torch.where(valid, ctx.logprobs - ctx.old_logprobs, torch.zeros_like(ctx.logprobs))
    advantages = torch.where(valid, ctx.advantages, torch.zeros_like(ctx.advantages))
    return logprobs, log_ratio, advantages, ctx.response_mask.to(logprobs.dtype)


def check_clip(who: str, clip_low: float, clip_high: float) -> None:
    """Reject clip ranges outside ``0 <= clip_low <= 1``, ``clip_high >= 0``."""
    if not 0.0 <= clip_low <= 1.0 or clip_high < 0.0:
        raise ConfigError(f"{who}: need 0 <= clip_low <= 1 and clip_high >= 0, got {clip_low}, {clip_high}")


def share_of(selected: Tensor, among: Tensor) -> float:
    """Fraction of the ``among`` tokens that are ``selected`` (bool tensors), 0.0 when ``among`` is empty."""
    count = among.sum()
    return float((selected & among).sum() / count) if count > 0 else 0.0


def clip_bias_metrics(
    ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float | Tensor, clip_high: float | Tensor
) -> dict[str, float]:
    """Ratios beyond each clip bound, by sign of the advantage (see the module docstring)."""
    with torch.no_grad():
        valid = mask > 0
        pos, neg = valid & (advantages > 0), valid & (advantages < 0)
        above, below = ratio > 1.0 + clip_high, ratio < 1.0 - clip_low
        return {
            "clip/pos_high_frac": share_of(above, pos),
            "clip/pos_low_frac": share_of(below, pos),
            "clip/neg_low_frac": share_of(below, neg),
            "clip/neg_high_frac": share_of(above, neg),
            "clip/pos_frac": share_of(pos, valid),
            "clip/neg_frac": share_of(neg, valid),
        }


def clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token ``max(-A r, -A clip(r))`` (optionally dual-clipped), zero on padding, and clip metrics."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).to(mask.dtype)
    metrics = {
        "clip_frac": masked_float(is_clipped, mask),
        "clip_frac_low": masked_float(is_clipped * (advantages < 0), mask),
        "clip_frac_high": masked_float(is_clipped * (advantages > 0), mask),
        "dual_clip_frac": 0.0,
        **clip_bias_metrics(ratio, advantages, mask, clip_low, clip_high),
    }
    if clip_ratio_c is not None:
        bound = -advantages * clip_ratio_c
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        metrics["dual_clip_frac"] = masked_float(dual.to(mask.dtype), mask)
    return loss * mask, metrics


@policy_loss.register("ppo_clip", requires=("logprobs", "old_logprobs", "advantages"))
def ppo_clip(
    ctx: AlgoContext,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
) -> LossOutput:
    """PPO-clip (arXiv 1707.06347) with asymmetric clip (DAPO 2503.14476) and dual clip (1912.09729)."""
    who = "policy_loss 'ppo_clip'"
    check_clip(who, clip_low, clip_high)
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ConfigError(f"{who}: clip_ratio_c must be > 1 (or None to disable), got {clip_ratio_c}")
    _, log_ratio, advantages, mask = policy_inputs(ctx, who)
    ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
    per_token, metrics = clipped_surrogate(ratio, advantages, mask, clip_low, clip_high, clip_ratio_c)
    metrics["approx_kl"] = masked_float(-log_ratio, mask)
    return LossOutput(per_token=per_token, metrics=metrics)
