"""Lp-Reg, low-probability regularization towards a min-p proxy (arXiv 2510.03222) (stage: policy_loss).

Official code CarlanLark/Lp-Reg-dev (``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_lp_reg``,
``verl/workers/actor/dp_actor.py`` ``apply_min_p``, ``recipe/lp_reg/*.sh``).

**Proxy.** ``log pi_proxy(o_t)`` is the log-prob of the sampled token under the rollout policy's
min-p filtered distribution (keep ``p_v >= kappa * max p`` on the raw logits, then apply the
temperature and renormalise, as the official forward; ``rlvr.ops.minp``), read
from ``ctx.old_minp_logprobs`` (official ``minp_old_log_prob=True``: computed from the old policy at
rollout-logprob time, detached). The threshold ``kappa`` is this component's ``min_p`` knob, which
the trainer computes that forward with (:meth:`LpReg.forward_quantities`). Default 0.02 (all official scripts); the
official code default is 0.1.

**Selection** (per micro-batch, as the official policy loss). Among the valid tokens with ``A < 0``,
take the ``k = max(1, int(neg_ratio * N_neg))`` with the lowest *current* log-prob (``torch.topk``,
``largest=False``); of those, keep the ones with ``log pi_theta < log pi_proxy`` (the proxy raises
their probability; a token filtered out by min-p has a proxy log-prob near ``-1e4 / T`` and is
skipped). The same on the ``A > 0`` side with ``pos_ratio`` (default 0, as officially: no
positive-side selection).
Official quirk: the code regularises a side only ``if k > 1``, so a micro-batch with fewer than
``2 / neg_ratio`` negative tokens (200 at 1%) gets no regularisation at all. ``official_min_k=True``
reproduces that; the default (False) also regularises when ``k == 1``.

**Loss.** Selected tokens: ``-A r + beta * KL_k3(pi_theta || pi_proxy)`` with the unclipped ratio and
``k3 = exp(lp_proxy - lp) - (lp_proxy - lp) - 1`` clamped to [-10, 10] (``kl.kl_estimate``; the
official ``low_var_kl``), ``beta = 1``. Every other token: the PPO clipped loss (``ppo_clip``'s
``clipped_surrogate``, optional dual clip). Knob defaults are PPO's 0.2 / 0.2; the official scripts
use ``clip_ratio_low = 1.0``, ``clip_ratio_high = 9.0`` (effectively unclipped), token-mean.

Metrics: ``lp_reg/frac_selected`` (regularised tokens / valid), ``lp_reg/frac_lowest`` (the lowest-k
candidates before the proxy test), ``lp_reg/kl_selected`` (mean k3 over regularised tokens),
``lp_reg/frac_minp_filtered`` (valid tokens whose sampled token the proxy filters out, detected as
a proxy log-prob ``<= -5000``, which holds for rollout temperatures up to 2), and PPO's
``clip_frac*``, ``approx_kl``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.kl import KL_KINDS, KlKind, kl_estimate
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, check_clip, clipped_surrogate, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss
from rlvr.errors import ConfigError
from rlvr.ops.forward import MinPProxy, Quantity
from rlvr.ops.minp import FILTERED_LOGIT

LP_REG_REQUIRES = ("logprobs", "old_logprobs", "advantages", "old_minp_logprobs")


def lowest_logprob_selection(
    logprobs: Tensor,
    proxy_logprobs: Tensor,
    side: Tensor,
    *,
    ratio: float,
    official_min_k: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(selected, lowest)`` bool masks over the tokens of ``side`` (bool ``(B, T)``).

    ``lowest``: the ``max(1, int(ratio * |side|))`` side tokens of lowest ``logprobs``; ``selected``:
    those with ``logprobs < proxy_logprobs``. Empty if ``ratio <= 0``, ``side`` is empty, or
    ``official_min_k`` and ``k <= 1``.
    """
    flat_side = side.reshape(-1).nonzero().squeeze(1)
    lowest = torch.zeros(side.numel(), dtype=torch.bool, device=side.device)
    n = flat_side.numel()
    if ratio > 0 and n > 0:
        k = max(1, int(n * ratio))
        if k > 1 or not official_min_k:
            lp = logprobs.detach().reshape(-1)
            low = torch.topk(lp[flat_side], k, largest=False).indices
            lowest[flat_side[low]] = True
    lowest = lowest.view_as(side)
    selected = lowest & (logprobs.detach() < proxy_logprobs.detach())
    return selected, lowest


@policy_loss.register("lp_reg", requires=LP_REG_REQUIRES)
class LpReg:
    """Lp-Reg (arXiv 2510.03222): PPO-clip, and on the lowest-prob negative tokens ``-A r + beta KL(pi || proxy)``.

    Knobs: ``min_p`` (proxy threshold kappa, 0.02; the forward quantity :class:`rlvr.ops.forward.MinPProxy`), ``neg_ratio`` (0.01, official
    ``logp_neg_k_percent``, a fraction), ``pos_ratio`` (0.0), ``beta`` (1.0, ``ppo_kl_coef``),
    ``kl_estimator`` (``"k3"``), ``clip_low`` / ``clip_high`` (0.2 / 0.2; official scripts 1.0 / 9.0),
    ``clip_ratio_c`` (dual clip on the unselected tokens, off), ``official_min_k`` (False).
    """

    name = "lp_reg"

    def __init__(
        self,
        *,
        min_p: float = 0.02,
        neg_ratio: float = 0.01,
        pos_ratio: float = 0.0,
        beta: float = 1.0,
        kl_estimator: KlKind = "k3",
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_ratio_c: float | None = None,
        official_min_k: bool = False,
    ) -> None:
        who = f"policy_loss '{self.name}'"
        check_clip(who, clip_low, clip_high)
        if not 0.0 <= min_p <= 1.0:
            raise ConfigError(f"{who}: min_p (kappa) must be in [0, 1], got {min_p}")
        for knob, value in (("neg_ratio", neg_ratio), ("pos_ratio", pos_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{who}: {knob} is a fraction in [0, 1] (1% = 0.01), got {value}")
        if beta < 0:
            raise ConfigError(f"{who}: beta must be >= 0, got {beta}")
        if kl_estimator not in KL_KINDS:
            raise ConfigError(f"{who}: unknown kl_estimator '{kl_estimator}'; valid: {', '.join(KL_KINDS)}")
        if clip_ratio_c is not None and clip_ratio_c <= 1.0:
            raise ConfigError(f"{who}: clip_ratio_c must be > 1 (or None to disable), got {clip_ratio_c}")
        self.min_p = float(min_p)
        self.neg_ratio = float(neg_ratio)
        self.pos_ratio = float(pos_ratio)
        self.beta = float(beta)
        self.kl_estimator = kl_estimator
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)
        self.clip_ratio_c = clip_ratio_c
        self.official_min_k = bool(official_min_k)


    def forward_quantities(self) -> list[Quantity]:
        """The min-p proxy at this loss's ``min_p`` threshold (the trainer computes it)."""
        return [MinPProxy(kappa=self.min_p)]

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        who = f"policy_loss '{self.name}'"
        logprobs, log_ratio, advantages, mask = policy_inputs(ctx, who)
        ctx.require("old_minp_logprobs", who=who)
        assert ctx.old_minp_logprobs is not None
        valid = mask > 0
        proxy = torch.where(valid, ctx.old_minp_logprobs.detach().to(logprobs.dtype), torch.zeros_like(logprobs))
        ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
        base, metrics = clipped_surrogate(ratio, advantages, mask, self.clip_low, self.clip_high, self.clip_ratio_c)
        selected = torch.zeros_like(valid)
        lowest = torch.zeros_like(valid)
        sides = ((self.neg_ratio, valid & (advantages < 0)), (self.pos_ratio, valid & (advantages > 0)))
        for ratio_k, side in sides:
            sel, low = lowest_logprob_selection(logprobs, proxy, side, ratio=ratio_k, official_min_k=self.official_min_k)
            selected |= sel
            lowest |= low
        kl = kl_estimate(logprobs, proxy, self.kl_estimator)
        regularised = -advantages * ratio + self.beta * kl
        per_token = torch.where(selected, regularised, base) * mask
        sel = selected.to(mask.dtype)
        metrics.update(
            {
                f"{self.name}/frac_selected": masked_float(sel, mask),
                f"{self.name}/frac_lowest": masked_float(lowest.to(mask.dtype), mask),
                f"{self.name}/kl_selected": masked_float(kl, sel),
                f"{self.name}/frac_minp_filtered": masked_float((proxy <= FILTERED_LOGIT / 2).to(mask.dtype), mask),
                "approx_kl": masked_float(-log_ratio, mask),
            }
        )
        return LossOutput(per_token=per_token, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {}
