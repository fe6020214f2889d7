"""SAR: Self-Aligned Reward (stage: reward), arXiv 2509.05489.

Code: amazon-science/Self-Aligned-Reward-Towards_Effective_and_Efficient_Reasoners
``verl/utils/reward_score/efficiency_reward.compute_ppl_qa_log`` and ``ray_trainer``
(``compute_perplexity``, ``create_ans_only_batch``). With the rollout (old) policy,

    ppl(a|q) = exp(-mean_t log pi_old(a_t | q, a_<t))       (the normal old-policy forward)
    ppl(a)   = exp(-mean_t log pi_old(a_t | q0, a_<t))      (the answer WITHOUT the query)
    R_SA     = max((ppl(a) - ppl(a|q)) / (ppl(a) + 1e-9), -1)
    R        = R_in + coef * R_SA,      coef = 0.2

(``use_denominator=True``, ``use_log=False``, no term clipping: the released defaults). ``use_log``
replaces both perplexities by their logs (the mean negative log-probs); ``clip_value > 1`` caps
both terms at that value before the ratio. The means run over the response mask (EOS included).
The reward is used for training only; validation uses the base reward.

**Needs the trainer** (reported to the lead): ``ppl(a)`` requires one extra no-grad forward of
every response with the query replaced by an empty placeholder. In the official code ``q0`` is the
chat template with the system prompt and an *empty* user turn (``add_generation_prompt=True``),
or ``"System: {SYS}\\nUser: \\nAssistant: "`` without a chat template; position ids continue
from the placeholder. The trainer must put the result in ``ctx.extras``, one of:

* ``"answer_only_logprobs"``: ``(B, T)`` per-token log-probs aligned with ``response_mask``, or a
  ``(B,)`` tensor of the per-response *mean* token log-prob;
* ``"answer_only_ppl"``: ``(B,)`` perplexities ``ppl(a)``.

(``requires`` lists ``answer_only_logprobs`` so the trainer can see that some method wants it.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, float_rewards, fraction, mean_of
from rlvr.errors import MissingInputError

SAR_EPS = 1e-9


def perplexity(logprobs: Tensor, mask: Tensor) -> Tensor:
    """``exp(-mean_t log p)`` over the valid tokens of each row, ``(B,)`` float64."""
    clean = torch.where(mask > 0, logprobs, torch.zeros_like(logprobs)).to(torch.float64)
    return torch.exp(-masked_mean(clean, mask.to(torch.float64), dim=-1))


def self_aligned_reward(
    ppl_qa: Tensor, ppl_a: Tensor, *, use_log: bool = False, clip_value: float | None = None
) -> Tensor:
    """``R_SA = max((A - QA) / (A + 1e-9), -1)`` with ``A``/``QA`` the (log-)perplexity terms."""
    qa = ppl_qa.to(torch.float64)
    a = ppl_a.to(torch.float64)
    if use_log:
        qa, a = qa.log(), a.log()
    if clip_value is not None and clip_value > 1:
        qa, a = qa.clamp(max=clip_value), a.clamp(max=clip_value)
    return ((a - qa) / (a + SAR_EPS)).clamp(min=-1.0)


def answer_only_ppl(ctx: AlgoContext, who: str) -> Tensor:
    """``ppl(a)`` from ``ctx.extras`` (per-token or mean log-probs, or perplexities)."""
    if "answer_only_ppl" in ctx.extras:
        return torch.as_tensor(ctx.extras["answer_only_ppl"], dtype=torch.float64)
    logprobs = ctx.extras.get("answer_only_logprobs")
    if logprobs is None:
        raise MissingInputError(
            f"{who} needs ctx.extras['answer_only_logprobs'] ((B, T) per-token or (B,) mean log-probs of each "
            "response without its query) or ctx.extras['answer_only_ppl']; the trainer computes them with an "
            "extra forward pass of the answer-only batch"
        )
    logprobs = torch.as_tensor(logprobs)
    if logprobs.dim() == 1:
        return torch.exp(-logprobs.to(torch.float64))
    return perplexity(logprobs, ctx.response_mask)


@reward.register("sar", requires=("rewards", "old_logprobs", "answer_only_logprobs"))
class SelfAlignedReward(RewardShaper):
    """SAR (arXiv 2509.05489): ``R += coef * max((ppl(a) - ppl(a|q)) / ppl(a), -1)``.

    Knobs: ``coef`` (0.2), ``use_log`` (False), ``clip_value`` (None = no clipping).
    Needs ``ctx.extras['answer_only_logprobs']`` (or ``'answer_only_ppl'``) from the trainer.
    Metrics: ``mean_sar``, ``mean_ppl_qa``, ``mean_ppl_a``, ``frac_floor`` (R_SA at -1).
    """

    name = "sar"

    def __init__(self, *, coef: float = 0.2, use_log: bool = False, clip_value: float | None = None) -> None:
        super().__init__()
        self.coef = float(coef)
        self.use_log = bool(use_log)
        self.clip_value = clip_value

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        ctx.require("old_logprobs", who=self.who())
        assert ctx.old_logprobs is not None
        ppl_qa = perplexity(ctx.old_logprobs, ctx.response_mask)
        ppl_a = answer_only_ppl(ctx, self.who())
        sar = self_aligned_reward(ppl_qa, ppl_a, use_log=self.use_log, clip_value=self.clip_value)
        metrics = {
            "mean_sar": mean_of(sar),
            "mean_ppl_qa": mean_of(ppl_qa),
            "mean_ppl_a": mean_of(ppl_a),
            "frac_floor": fraction(sar <= -1.0),
        }
        return rewards + (self.coef * sar).to(rewards.dtype), metrics
