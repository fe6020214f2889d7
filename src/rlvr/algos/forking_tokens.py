"""Train only on the high-entropy "forking" tokens (Beyond the 80/20 Rule, arXiv 2506.01939) (stage: token_weight).

Official code Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR (``verl/trainer/ppo/core_algos.py``
``get_global_entropy_top_mask``, ``verl/workers/actor/dp_actor.py``) and TRL
(``trl/trainer/grpo_trainer.py`` ``GRPOTrainer.get_high_entropy_mask``, ``top_entropy_quantile``).
Over **all valid response tokens of the micro-batch** (flattened, one global pool, not per
response), with ``H`` the current-policy token entropy:

* ``method="topk"`` (official): keep the ``k = max(1, ceil(top_ratio * N))`` tokens of largest ``H``
  (``torch.topk``; the ceiling is computed as the official ``int(top_ratio * N + 0.9999)``, which is
  immune to float noise such as ``0.2 * 15 = 3.0000000000000004``). Exactly ``k`` tokens.
* ``method="quantile"`` (TRL): ``tau = quantile(H_valid, 1 - top_ratio)`` (linear interpolation) and
  keep ``H >= tau``; ties at ``tau`` are all kept. TRL gathers the entropies across ranks; here the
  pool is the micro-batch, as for ``topk``.

The mask is returned as both the weight and the ``loss_mask``: the policy loss only sees the selected
tokens, and the aggregation counts only them (official ``agg_loss(pg_losses, response_mask *
entropy_top_mask)``). The entropy is used without gradient.

**Denominator under global normalisers** (knob ``renormalize``). With ``agg_mode="token-mean"`` the
trainer divides every micro-batch's sum by the mini-batch's total *response* token count
(``ctx.global_num_tokens``), not by its selected-token count, which is only known after every
micro-batch's forward. ``renormalize=True`` (default) then scales the selected tokens' weight by
``s = f * N_global / N_selected`` with ``f = ctx.micro_batch_fraction`` (the micro-batch's share of
the mini-batch's rows), so that each micro-batch contributes ``f * mean_selected(loss)``. That is
the official value: its actor takes the token-mean over the micro-batch's selected tokens and scales
it by ``1 / gradient_accumulation`` (``len(micro) / ppo_mini_batch_size`` with dynamic batch size),
i.e. by the row share, before ``backward()``. In the other modes, or without global normalisers
(``aggregate`` then divides by the selected count itself), ``s = 1``. The method is meant for
token-mean (the paper's DAPO recipe); with ``seq-mean-*`` a response with no selected token simply
contributes 0.

Metrics: ``forking/frac_selected``, ``forking/entropy_selected`` / ``forking/entropy_unselected``
(means over valid tokens), ``forking/threshold`` (smallest selected entropy), ``forking/scale`` (s).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import token_weight
from rlvr.errors import ConfigError

ForkingMethod = Literal["topk", "quantile"]
FORKING_METHODS: tuple[str, ...] = get_args(ForkingMethod)


def num_top_tokens(num_valid: int, top_ratio: float) -> int:
    """``max(1, ceil(top_ratio * N))`` computed as the official ``int(top_ratio * N + 0.9999)``, at most N."""
    return min(num_valid, max(1, int(num_valid * top_ratio + 0.9999)))


def forking_mask(
    entropy: Tensor, response_mask: Tensor, top_ratio: float = 0.2, method: ForkingMethod = "topk"
) -> Tensor:
    """Bool ``(B, T)`` mask of the selected high-entropy tokens among the valid ones (no grad)."""
    if method not in FORKING_METHODS:
        valid = ", ".join(FORKING_METHODS)
        raise ConfigError(f"token_weight 'forking_tokens': unknown method '{method}'; valid: {valid}")
    valid = response_mask > 0
    values = entropy.detach()
    flat_valid = valid.reshape(-1).nonzero().squeeze(1)
    selected = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    n = flat_valid.numel()
    if n == 0 or top_ratio <= 0:
        return selected.view_as(values)
    pool = values.reshape(-1)[flat_valid]
    if method == "topk":
        top = torch.topk(pool, num_top_tokens(n, top_ratio)).indices
        selected[flat_valid[top]] = True
        return selected.view_as(values)
    threshold = torch.quantile(pool.double(), 1.0 - min(top_ratio, 1.0))
    return (values.double() >= threshold) & valid


@token_weight.register("forking_tokens", requires=("entropy",))
def forking_tokens(
    ctx: AlgoContext, *, top_ratio: float = 0.2, method: ForkingMethod = "topk", renormalize: bool = True
) -> TokenWeightOutput:
    """Keep the top ``top_ratio`` of the micro-batch's tokens by current entropy (arXiv 2506.01939).

    Knobs: ``top_ratio`` (0.2, official ``entropy_top_ratio``), ``method`` (``"topk"`` official |
    ``"quantile"`` TRL), ``renormalize`` (token-mean denominator = selected tokens; see module doc).
    """
    who = "token_weight 'forking_tokens'"
    if not 0.0 < top_ratio <= 1.0:
        raise ConfigError(f"{who}: top_ratio must be in (0, 1], got {top_ratio}")
    ctx.require("entropy", who=who)
    assert ctx.entropy is not None
    mask = ctx.response_mask
    selected = forking_mask(ctx.entropy, mask, top_ratio, method)
    sel = selected.to(mask.dtype)
    n_sel = float(sel.sum())
    scale = 1.0
    if renormalize and ctx.agg_mode == "token-mean" and ctx.global_num_tokens is not None and n_sel > 0:
        scale = float(ctx.micro_batch_fraction) * float(ctx.global_num_tokens) / n_sel
    entropy = torch.where(mask > 0, ctx.entropy.detach(), torch.zeros_like(ctx.entropy))
    unselected = (mask > 0).to(mask.dtype) - sel
    metrics = {
        "forking/frac_selected": masked_float(sel, mask),
        "forking/entropy_selected": masked_float(entropy, sel),
        "forking/entropy_unselected": masked_float(entropy, unselected),
        "forking/threshold": float(entropy[selected].min()) if n_sel > 0 else 0.0,
        "forking/scale": scale,
    }
    return TokenWeightOutput(weights=sel * scale, loss_mask=sel, metrics=metrics)
