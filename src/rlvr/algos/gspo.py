"""GSPO, Group Sequence Policy Optimization (arXiv 2507.18071), token form (stage: policy_loss).

Sequence ratio ``s_i = exp(1/|o_i| sum_t (log pi - log pi_old))`` (the length-normalised geometric
mean of the token ratios). GSPO-token, as in verl's ``compute_policy_loss_gspo``, uses per token

    s_{i,t} = sg[s_i] * pi(o_{i,t}) / sg[pi(o_{i,t})],   with log s_{i,t} clamped to <= 10,
    l_{i,t} = max(-A_{i,t} s_{i,t}, -A_{i,t} clip(s_{i,t}, 1 - clip_low, 1 + clip_high)).

``s_{i,t}`` equals ``s_i`` in value, so the clip decision is per sequence; its gradient is
``s_i * grad log pi(o_{i,t})``. With a sequence-constant advantage and the paper's aggregation,
``agg_mode="seq-mean-token-mean"``, the gradient equals that of sequence-level GSPO
``1/G sum_i max(-A_i s_i, -A_i clip(s_i))``. (Set that aggregation in the config: this function
returns per-token values and does not aggregate.) Defaults are the paper's (§5.1):
``clip_low = 3e-4``, ``clip_high = 4e-4``.
"""

from __future__ import annotations

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.ppo_clip import check_clip, clipped_surrogate, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss

LOG_SEQ_RATIO_MAX = 10.0


@policy_loss.register("gspo", requires=("logprobs", "old_logprobs", "advantages"))
def gspo(ctx: AlgoContext, *, clip_low: float = 3e-4, clip_high: float = 4e-4) -> LossOutput:
    """GSPO-token loss (arXiv 2507.18071); aggregate with ``seq-mean-token-mean`` as the paper does."""
    who = "policy_loss 'gspo'"
    check_clip(who, clip_low, clip_high)
    logprobs, log_ratio, advantages, mask = policy_inputs(ctx, who)
    seq_log_ratio = masked_mean(log_ratio, mask, dim=-1)  # log s_i, (B,)
    log_s = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
    log_s = log_s.clamp(max=LOG_SEQ_RATIO_MAX)
    per_token, metrics = clipped_surrogate(log_s.exp(), advantages, mask, clip_low, clip_high)
    metrics.pop("dual_clip_frac")
    metrics["approx_kl"] = masked_float(-log_ratio, mask)
    metrics["seq_ratio_mean"] = masked_float(seq_log_ratio.exp(), (mask.sum(-1) > 0).to(mask.dtype))
    return LossOutput(per_token=per_token, metrics=metrics)
