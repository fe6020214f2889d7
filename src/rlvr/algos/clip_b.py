"""Clip_B: the entropy-discriminator clipping mask (stage: token_weight).

"On the Entropy Dynamics in Reinforcement Fine-Tuning of Large Language Models", arXiv 2602.03392.
Official code: agentscope-ai/Trinity-RFT ``trinity/algorithm/advantage_fn/clipb_advantage.py``
(``ClipBAdvantageFn``) with ``examples/entropy/clipb.yaml``.

A first-order analysis of one logit update shows that raising the probability of a sampled token
changes the entropy by ``-eps * S`` with the **entropy discriminator**

    S_t = p_t (H_t + log p_t),   p_t = pi(o_t),  H_t = full-vocabulary entropy at position t,

so penalising (``A < 0``) a token with very negative ``S`` (a rare token, ``log p << -H``) drives
entropy down. Clip_B removes exactly those updates, with statistics over **every valid token of the
rollout batch** (``S_bar`` and the population std ``sigma_S``):

    keep_t = 1                                    if A_t >= 0
    keep_t = 1[S_t - S_bar >= -mu * sigma_S]      if A_t < 0
    keep_t = 1 for every token                    if sigma_S < 1e-12

``S`` uses the rollout (old) policy's log-prob and entropy at the training temperature
(``ctx.old_logprobs``, ``ctx.old_entropy``; the official code reads the recomputed
``rollout_log_probs`` / ``entropys``), detached. The mask is returned as the weight **and** the
``loss_mask``: it replaces the response mask, so it also shrinks the token-mean denominator (the
official code overwrites ``response_mask``). The token weight reads no current-policy field, so the
trainer also applies it to the mini-batch denominators. Default ``mu = 2.5`` (official).

The official class also computes the GRPO advantage itself; here the mask reads ``ctx.advantages``,
so it composes with any advantage (``grpo`` reproduces the official pairing).

**Scope** (knob ``scope``). ``"batch"`` (default): ``prepare(ctx)`` (once per step, on the whole
rollout batch) stores ``S_bar`` and ``sigma_S``; each micro-batch then evaluates the rule on its own
tokens. The rule depends on the batch only through those two scalars, so no per-row selection (and
no ``ctx.extras["row_index"]``) is needed. ``"micro"``, or ``"batch"`` when ``prepare`` did not run
for this step (one warning, metric ``clip_b/batch_scope = 0``): statistics over the micro-batch.

Metrics: ``clip_b/frac_clipped`` (of valid tokens), ``clip_b/frac_clipped_neg`` (of negative-advantage
tokens), ``clip_b/s_mean``, ``clip_b/s_std``, ``clip_b/batch_scope``; ``prepare`` reports the
rollout batch's ``clip_b/batch/frac_clipped`` and ``clip_b/batch/frac_clipped_neg``.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import token_weight
from rlvr.algos.shaping import check_choice
from rlvr.errors import ConfigError

ClipBScope = Literal["batch", "micro"]
CLIP_B_SCOPES: tuple[str, ...] = get_args(ClipBScope)
MIN_STD = 1e-12


def entropy_discriminator(logprobs: Tensor, entropy: Tensor, mask: Tensor) -> Tensor:
    """``S = p (H + log p)`` per token (float32 or wider, no grad), 0 on padding (which may hold NaN)."""
    valid = mask > 0
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    lp = torch.where(valid, logprobs.detach().to(dtype), torch.zeros((), dtype=dtype, device=mask.device))
    h = torch.where(valid, entropy.detach().to(dtype), torch.zeros((), dtype=dtype, device=mask.device))
    return torch.where(valid, lp.exp() * (h + lp), torch.zeros_like(lp))


def discriminator_stats(s: Tensor, mask: Tensor) -> tuple[float, float]:
    """Mean and population std of ``s`` over the valid tokens (0, 0 when there are none)."""
    values = s[mask > 0].double()
    if values.numel() == 0:
        return 0.0, 0.0
    return float(values.mean()), float(values.std(unbiased=False))


def clip_b_keep(s: Tensor, advantages: Tensor, mask: Tensor, s_mean: float, s_std: float, mu: float) -> Tensor:
    """Bool ``(B, T)`` keep mask over the valid tokens: all with ``A >= 0``; ``A < 0`` ones with ``S - S_bar >= -mu sigma_S``."""
    valid = mask > 0
    if s_std < MIN_STD:
        return valid
    negative = advantages.detach() < 0
    return valid & (~negative | (s - s_mean >= -mu * s_std))


@token_weight.register("clip_b", requires=("old_logprobs", "old_entropy", "advantages"))
class ClipB:
    """Clip_B (arXiv 2602.03392): drop negative-advantage tokens whose entropy discriminator is far below the batch mean.

    ``S = p (H + log p)`` from the rollout policy; a token with ``A < 0`` is kept only if
    ``S - mean(S) >= -mu * std(S)`` (batch statistics over all valid tokens). Knobs: ``mu`` (2.5),
    ``scope`` (``"batch"`` | ``"micro"``, see the module docstring). Returns the keep mask as weight
    and ``loss_mask``.
    """

    name = "clip_b"

    def __init__(self, *, mu: float = 2.5, scope: ClipBScope = "batch") -> None:
        who = f"token_weight '{self.name}'"
        check_choice(who, "scope", scope, CLIP_B_SCOPES)
        if not mu >= 0:
            raise ConfigError(f"{who}: mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self.scope = scope
        self._stats: tuple[float, float] | None = None
        self._stats_step: int | None = None
        self._warned = False

    def _inputs(self, ctx: AlgoContext) -> tuple[Tensor, Tensor, Tensor]:
        ctx.require("old_logprobs", "old_entropy", "advantages", who=f"token_weight '{self.name}'")
        assert ctx.old_logprobs is not None and ctx.old_entropy is not None and ctx.advantages is not None
        mask = ctx.response_mask
        return entropy_discriminator(ctx.old_logprobs, ctx.old_entropy, mask), ctx.advantages, mask

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Batch scope: ``S_bar`` and ``sigma_S`` over every valid token of the rollout batch."""
        self._stats, self._stats_step = None, None
        if self.scope != "batch":
            return {}
        s, advantages, mask = self._inputs(ctx)
        self._stats, self._stats_step = discriminator_stats(s, mask), ctx.step
        keep = clip_b_keep(s, advantages, mask, *self._stats, self.mu)
        return {f"{self.name}/batch/{k}": v for k, v in _clip_fractions(keep, advantages, mask).items()}

    def _batch_stats(self, ctx: AlgoContext) -> tuple[float, float] | None:
        if self.scope != "batch":
            return None
        if self._stats is None or self._stats_step != ctx.step:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"token_weight '{self.name}': scope='batch' unavailable (prepare(ctx) did not run on this "
                    "step's rollout batch); using the micro-batch's statistics"
                )
            return None
        return self._stats

    def __call__(self, ctx: AlgoContext) -> TokenWeightOutput:
        s, advantages, mask = self._inputs(ctx)
        stats = self._batch_stats(ctx)
        s_mean, s_std = stats if stats is not None else discriminator_stats(s, mask)
        keep = clip_b_keep(s, advantages, mask, s_mean, s_std, self.mu).to(mask.dtype)
        metrics = {f"{self.name}/{k}": v for k, v in _clip_fractions(keep > 0, advantages, mask).items()}
        metrics.update(
            {
                f"{self.name}/s_mean": s_mean,
                f"{self.name}/s_std": s_std,
                f"{self.name}/batch_scope": float(stats is not None),
            }
        )
        return TokenWeightOutput(weights=keep, loss_mask=keep, metrics=metrics)


def _clip_fractions(keep: Tensor, advantages: Tensor, mask: Tensor) -> dict[str, float]:
    valid = (mask > 0).to(torch.float32)
    clipped = valid - keep.to(torch.float32)
    negative = valid * (advantages.detach() < 0).to(torch.float32)
    return {
        "frac_clipped": masked_float(clipped, valid),
        "frac_clipped_neg": masked_float(clipped, negative),
    }
