"""LUSPO: length-unbiased GSPO (stage: policy_loss), TRL ``loss_type="luspo"``.

GSPO's per-sequence loss ``l_i = -min(s_i A_i, clip(s_i, 1 - eps_l, 1 + eps_h) A_i)`` with the
length-normalised sequence ratio ``s_i = exp(mean_t log(pi / pi_old))`` (arXiv 2507.18071), times
the response length:

    LUSPO = 1/B sum_i |o_i| * l_i                          (TRL: ``(per_token_loss * mask.sum(1)).mean()``)

GSPO's mean over tokens inside ``s_i`` makes every token of a long response weigh ``1/|o_i|``; the
factor ``|o_i|`` removes that length bias. The official repo (murphy4122/LUSPO) was not fetchable;
the TRL port is the reference. Defaults are the paper's (via TRL): ``clip_low = 2e-3``,
``clip_high = 2.5e-3``.

Implementation: the GSPO-token per-token loss of :func:`rlvr.algos.gspo.gspo` (same value ``l_i``
on every token, gradient ``-A_i s_i grad log pi(o_t)`` when unclipped) multiplied by ``|o_i|``.
Aggregated with GSPO's ``agg_mode="seq-mean-token-mean"`` this is exactly
``1/B sum_i (1/|o_i|) sum_t |o_i| l_i = 1/B sum_i |o_i| l_i``, in value and in gradient. Use that
aggregation (with ``seq-mean-token-sum`` the length would count twice).
"""

from __future__ import annotations

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.gspo import gspo
from rlvr.algos.ppo_clip import check_clip
from rlvr.algos.registry import policy_loss


@policy_loss.register("luspo", requires=("logprobs", "old_logprobs", "advantages"))
def luspo(ctx: AlgoContext, *, clip_low: float = 2e-3, clip_high: float = 2.5e-3) -> LossOutput:
    """LUSPO (TRL ``luspo``): GSPO-token loss times ``|o_i|``; aggregate with ``seq-mean-token-mean``."""
    who = "policy_loss 'luspo'"
    check_clip(who, clip_low, clip_high)
    ctx.require("logprobs", "old_logprobs", "advantages", who=who)
    out = gspo(ctx, clip_low=clip_low, clip_high=clip_high)
    assert out.per_token is not None
    lengths = ctx.response_mask.sum(-1, keepdim=True).to(out.per_token.dtype)
    seq_lengths = lengths.squeeze(-1)
    nonempty = seq_lengths > 0
    out.metrics["luspo/mean_length_weight"] = float(seq_lengths[nonempty].mean()) if bool(nonempty.any()) else 0.0
    return LossOutput(per_token=out.per_token * lengths, metrics=out.metrics)
