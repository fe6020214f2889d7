"""CISPO, Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585) (stage: policy_loss).

Per token, with ``r = exp(clamp(log pi - log pi_old, -20, 20))``:

    l_{i,t} = -sg[clip(r, 1 - clip_low, 1 + clip_high)] * A_{i,t} * log pi(o_{i,t})

The importance weight is clipped and detached, so every token keeps a REINFORCE gradient
``-w A grad log pi`` (PPO would zero it once the ratio leaves the trust region). The paper
normalises by the total token count, i.e. ``agg_mode="token-mean"``.

Defaults. The paper sets no lower bound ("setting eps_low^IS to a large value") and only tunes
eps_high^IS, whose value it does not state. ``clip_low = 1.0`` makes the lower bound 0 (no bound,
as r > 0). ``clip_high = 4.0`` caps the weight at 5.0, TRL's recommended ``epsilon_high = 5.0`` for
``loss_type="cispo"`` (TRL clamps ``r <= epsilon_high``), citing the ScaleRL paper's eps_max
(arXiv 2510.13786). Other ports use different caps (e.g. 1 + 0.28), so tune it.

The per-token value is a surrogate whose *gradient* is the CISPO gradient; its value is not
comparable with PPO losses. Metrics: ``clip_frac`` (weight clipped either side), ``clip_frac_low``,
``clip_frac_high`` and ``approx_kl`` (mean of ``log pi_old - log pi``).
"""

from __future__ import annotations

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, check_clip, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss


@policy_loss.register("cispo", requires=("logprobs", "old_logprobs", "advantages"))
def cispo(ctx: AlgoContext, *, clip_low: float = 1.0, clip_high: float = 4.0) -> LossOutput:
    """CISPO (arXiv 2506.13585): ``-sg[clip(r, 1-clip_low, 1+clip_high)] * A * log pi`` per token."""
    who = "policy_loss 'cispo'"
    check_clip(who, clip_low, clip_high)
    logprobs, log_ratio, advantages, mask = policy_inputs(ctx, who)
    ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp().detach()
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = -weight * advantages * logprobs * mask
    low = (ratio < 1.0 - clip_low).to(mask.dtype)
    high = (ratio > 1.0 + clip_high).to(mask.dtype)
    metrics = {
        "clip_frac": masked_float(low + high, mask),
        "clip_frac_low": masked_float(low, mask),
        "clip_frac_high": masked_float(high, mask),
        "approx_kl": masked_float(-log_ratio, mask),
    }
    return LossOutput(per_token=per_token, metrics=metrics)
