"""DAPO overlong filtering: truncated responses leave the loss (stage: token_weight), arXiv 2503.14476.

A response that hit the maximum length without EOS (``ctx.truncated``) gets ``loss_mask = 0`` on
all its tokens, so it contributes no policy gradient (TRL ``mask_truncated_completions=True``; the
verl DAPO docs report their best runs did not use it, and use the soft ``overlong_shaping`` reward
instead). Weights stay 1.

Note on the denominator: ``TokenWeightOutput.loss_mask`` replaces the response mask in the
aggregation, but under gradient accumulation the trainer divides by the mini-batch totals of the
*response* mask (``ctx.global_num_tokens`` / ``global_num_seqs``), so masked truncated tokens still
count in the ``token-mean`` denominator (TRL excludes them). Reported to the lead.
"""

from __future__ import annotations

import torch

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.registry import token_weight


@token_weight.register("mask_truncated", requires=("truncated",))
def mask_truncated(ctx: AlgoContext) -> TokenWeightOutput:
    """``loss_mask[i, t] = 1 - truncated_i`` (on valid tokens); weights 1. Metrics: masked fractions."""
    ctx.require("truncated", who="token_weight 'mask_truncated'")
    assert ctx.truncated is not None
    mask = ctx.response_mask
    keep = (~ctx.truncated.bool()).to(mask.dtype).unsqueeze(-1) * mask
    seqs = (mask.sum(-1) > 0).to(torch.float64)
    masked_seqs = float((ctx.truncated.bool().to(torch.float64) * seqs).sum())
    tokens = float(mask.sum())
    metrics = {
        "mask_truncated/frac_seqs_masked": masked_seqs / float(seqs.sum()) if float(seqs.sum()) > 0 else 0.0,
        "mask_truncated/frac_tokens_masked": float((mask - keep).sum()) / tokens if tokens > 0 else 0.0,
    }
    return TokenWeightOutput(weights=torch.ones_like(mask), loss_mask=keep, metrics=metrics)
