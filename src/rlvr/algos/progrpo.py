"""ProGRPO / ARM, Advantage Re-weighting Mechanism: prompt vs answer confidence (stage: advantage), arXiv 2602.05281.

**Partly inferred.** No code was found; sourced from a review (the formula) and a summary (the
low-probability token normalisation)::

    A~_i = A_i                                       if no response of the group is correct
    A~_i = A_i + alpha * (c(q) - c(o_i | q))         otherwise

with ``A_i`` the GRPO advantage (here any ``base`` estimator, default ``"grpo"``), ``c(q)`` a confidence
of the prompt (from "prompt perplexity") and ``c(o_i | q)`` the answer's confidence computed over the
**lowest-probability** ~20% of its tokens ("Low-Probability Token Length Normalization"), so an
over-confident response (high ``c(o|q)`` relative to its prompt) gets a smaller advantage.
Our definitions [INFERENCE], both in log space so their difference is scale-free:

* ``c(o_i | q) = mean of the k lowest log pi_old(o_t)`` over the response's ``n`` valid tokens,
  ``k = max(1, ceil(low_prob_ratio * n))`` (default ratio 0.2);
* ``c(q) = mean_j log pi_old(q_j | q_<j)`` over the prompt tokens (the negative log prompt
  perplexity under the rollout policy).

``c(q)`` is one value per prompt: within a group it only shifts every advantage by the same amount
(which still matters, the advantages no longer sum to 0). Default ``alpha = 0.1`` (unknown; the
summaries suggest trying 0.1-1).

**Input** (``prompt_term=True``, the default): ``ctx.extras["prompt_logprobs"]``, a ``(B, P)`` float
tensor of the log-prob of each prompt token given the tokens before it under the rollout policy,
with ``ctx.extras["prompt_mask"]`` ``(B, P)`` (1 on the prompt tokens that have a log-prob, i.e. all
but the first); the trainer fills both with a no-grad forward over each distinct prompt
(:class:`rlvr.ops.forward.PromptLogProbs`, requested by ``prompt_logprobs`` in ``requires``). Absent:
MissingInputError. ``prompt_term=False`` drops ``c(q)`` (``A_i - alpha c(o_i|q)``); the prompt forward
still runs (``requires`` is fixed per method).

Metrics: ``progrpo/prompt_confidence``, ``progrpo/answer_confidence``, ``progrpo/shift_mean`` (mean
``alpha (c(q) - c(o|q))`` over re-weighted responses), ``progrpo/reweighted_frac``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.forking_tokens import num_top_tokens
from rlvr.algos.groups import group_sum
from rlvr.algos.logprob_reward import extras_with_mask
from rlvr.algos.registry import advantage
from rlvr.errors import ConfigError

PROGRPO_REQUIRES = ("rewards", "group_ids", "correct", "old_logprobs")


def low_probability_confidence(logprobs: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Mean of each row's ``max(1, ceil(ratio * n))`` lowest log-probs over its ``n`` valid tokens, ``(B,)`` (0 for an empty row)."""
    out = torch.zeros(logprobs.shape[0], dtype=logprobs.dtype, device=logprobs.device)
    valid = mask > 0
    for row in range(logprobs.shape[0]):
        values = logprobs[row][valid[row]].detach()
        if values.numel():
            k = num_top_tokens(values.numel(), ratio)
            out[row] = torch.topk(values, k, largest=False).values.mean()
    return out


def prompt_confidence(ctx: AlgoContext, who: str) -> Tensor:
    """``c(q)``: the masked mean of ``ctx.extras["prompt_logprobs"]`` per row, ``(B,)``."""
    logprobs, mask = extras_with_mask(
        ctx,
        "prompt_logprobs",
        "prompt_mask",
        who,
        "(B, P) tensors: the rollout policy's log-prob of each prompt token and which tokens have one; the trainer "
        "must run a forward over the prompts, or set prompt_term=False",
    )
    valid = mask > 0
    values = torch.where(valid, logprobs.detach(), torch.zeros_like(logprobs))
    return values.sum(-1) / valid.sum(-1).clamp(min=1).to(values.dtype)


@advantage.register("progrpo", requires=(*PROGRPO_REQUIRES, "prompt_logprobs"))
class ProGrpo(WrapsBase):
    """ProGRPO / ARM (arXiv 2602.05281, confidences inferred): ``A + alpha (c(q) - c(o|q))`` on groups with a correct response.

    Knobs: ``alpha`` (0.1), ``low_prob_ratio`` (0.2), ``prompt_term`` (True: needs
    ``ctx.extras["prompt_logprobs"]`` / ``["prompt_mask"]``), ``base`` (``"grpo"``), ``base_kwargs``.
    """

    name = "progrpo"

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        low_prob_ratio: float = 0.2,
        prompt_term: bool = True,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        if not 0.0 < low_prob_ratio <= 1.0:
            raise ConfigError(f"{who}: low_prob_ratio must be in (0, 1], got {low_prob_ratio}")
        self.alpha = float(alpha)
        self.low_prob_ratio = float(low_prob_ratio)
        self.prompt_term = bool(prompt_term)
        self.base = build_base_component(advantage, base, base_kwargs, PROGRPO_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require(*PROGRPO_REQUIRES, who=who)
        assert ctx.old_logprobs is not None and ctx.correct is not None and ctx.group_ids is not None
        base = self.base(ctx)
        dtype = torch.promote_types(base.dtype, torch.float32)
        answer = low_probability_confidence(ctx.old_logprobs.to(dtype), ctx.response_mask, self.low_prob_ratio)
        prompt = prompt_confidence(ctx, who).to(device=answer.device, dtype=dtype) if self.prompt_term else torch.zeros_like(answer)
        solved = group_sum(ctx.correct.to(dtype), ctx.group_ids) > 0
        shift = torch.where(solved, self.alpha * (prompt - answer), torch.zeros_like(answer))
        out = base.to(dtype) + shift.unsqueeze(-1) * ctx.response_mask.to(dtype)
        self.metrics = {
            f"{self.name}/prompt_confidence": float(prompt.mean()) if ctx.batch_size else 0.0,
            f"{self.name}/answer_confidence": float(answer.mean()) if ctx.batch_size else 0.0,
            f"{self.name}/shift_mean": float(shift[solved].mean()) if bool(solved.any()) else 0.0,
            f"{self.name}/reweighted_frac": float(solved.double().mean()) if ctx.batch_size else 0.0,
        }
        return out.to(base.dtype)
