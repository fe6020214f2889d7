"""EARL, Entropy-Aware RL (for RTL code generation): response-level entropy gate (stage: token_weight), arXiv 2511.12033.

**Partly inferred.** No code was released ("upon acceptance"); sourced from the abstract and a
secondary summary: policy gradients are gated to high-entropy tokens using **response-level**
entropy thresholds, under a KL-regularised objective, with multi-signal rewards (syntax, functional
tests). The gate below is our reading [INFERENCE]: per response ``i``, keep its valid tokens whose
rollout-policy entropy reaches the response's own ``q``-quantile::

    keep_{i,t} = 1[H_{i,t} >= quantile_q(H_{i,1..n_i})]        (linear interpolation; ties kept)

i.e. the 80/20 forking-token mask (``forking_tokens``) with a per-response instead of a per-micro-batch
pool, so every response keeps about ``1 - q`` of its tokens however uncertain it is overall. Default
``q = 0.8``. The entropy is the rollout policy's (``ctx.old_entropy``), so the selection is known
before the update and the loss's denominator counts only the kept tokens exactly (the mask is also
the ``loss_mask``). Add the ``kl`` regularizer for the KL term; the multi-signal reward is the task's.

Metrics: ``earl/frac_selected``, ``earl/entropy_selected`` / ``earl/entropy_unselected``.
"""

from __future__ import annotations

import torch

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.entropy_performance import row_quantile_mask
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import token_weight
from rlvr.errors import ConfigError


@token_weight.register("earl", requires=("old_entropy",))
def earl(ctx: AlgoContext, *, quantile: float = 0.8) -> TokenWeightOutput:
    """EARL (arXiv 2511.12033, gate inferred): train on the tokens at or above their response's ``quantile`` of rollout entropy."""
    who = "token_weight 'earl'"
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"{who}: quantile must be in [0, 1], got {quantile}")
    ctx.require("old_entropy", who=who)
    assert ctx.old_entropy is not None
    mask = ctx.response_mask
    selected = row_quantile_mask(ctx.old_entropy, mask, quantile).to(mask.dtype)
    entropy = torch.where(mask > 0, ctx.old_entropy.detach(), torch.zeros_like(ctx.old_entropy)).to(mask.dtype)
    metrics = {
        "earl/frac_selected": masked_float(selected, mask),
        "earl/entropy_selected": masked_float(entropy, selected),
        "earl/entropy_unselected": masked_float(entropy, (mask > 0).to(mask.dtype) - selected),
    }
    return TokenWeightOutput(weights=selected, loss_mask=selected, metrics=metrics)
