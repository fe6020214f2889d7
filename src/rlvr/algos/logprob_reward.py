"""Likelihood-based reward: the log-probability of the reference answer after the sampled reasoning (stage: reward), arXiv 2602.03979.

**Partly inferred.** No code was found; sourced from secondary summaries of the paper: the
verifier-free reward of a sampled chain of thought ``z`` for prompt ``p`` is::

    R(z, a*) = log pi_theta(a* | p, z)          (score="sum_logprob", default)

the log-probability of the **reference answer** ``a*`` teacher-forced after the prompt and the sampled
reasoning; no answer is sampled for scoring. The paper compares it with the probability
``pi(a* | p, z)`` (VeriFree; ``score="prob"``), the average per-token probability (RLPR-style;
``score="mean_prob"``) and others (JEPO, NOVER, not offered), and finds only the log-probability good
in every setting (probabilities vanish on long answers). ``score="mean_logprob"`` divides the sum by
the answer's token count [INFERENCE: with one reference per prompt, sum and mean differ by a
per-prompt factor that a group baseline largely removes]. ``log pi`` is unbounded below, so pair it
with a group baseline (``grpo``, ``rloo``) [INFERENCE]. Whether the answer tokens also get a direct
likelihood (SFT) gradient, as in VeriFree, is unknown and not done here.

``combine="replace"`` (default) makes ``coef * score`` the reward; ``"add"`` adds it to the incoming
reward (e.g. a verifier's).

**Input**: ``ctx.extras["reference_answer_logprobs"]``, a ``(B, L)`` float tensor with
``log pi(a*_j | p, z, a*_<j)`` of each reference-answer token after each row's prompt and sampled
reasoning, and ``ctx.extras["reference_answer_mask"]`` ``(B, L)`` (1 on the answer's tokens). The
trainer fills both with a no-grad forward of the rollout policy over the responses with ``a*``
spliced in (:class:`rlvr.ops.forward.ReferenceAnswerLogProbs`; the reward is a scalar, no gradient).
The splice follows RLPR's (:func:`rlvr.ops.splice.splice_response`): ``format="r1"`` replaces the
answer inside ``<answer>...</answer>`` after ``</think>``; a malformed response gets ``a*`` appended
after (a cut of) its text and is scored on that; ``"boxed"`` replaces the last ``\\boxed{...}``;
``"append"`` puts ``a*`` after the whole response. ``reference="solution"`` splices the problem's worked
solution instead of its answer. Absent inputs: MissingInputError.

Metrics: ``logprob_reward/score_mean``, ``logprob_reward/score_min``, ``logprob_reward/answer_tokens``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, check_choice, float_rewards
from rlvr.errors import MissingInputError
from rlvr.ops.forward import REFERENCES, Reference, ReferenceAnswerLogProbs
from rlvr.ops.splice import SPLICE_FORMATS, SpliceFormat

LikelihoodScore = Literal["sum_logprob", "mean_logprob", "prob", "mean_prob"]
LIKELIHOOD_SCORES: tuple[str, ...] = get_args(LikelihoodScore)
Combine = Literal["replace", "add"]
COMBINES: tuple[str, ...] = get_args(Combine)


def answer_likelihood(logprobs: Tensor, mask: Tensor, score: LikelihoodScore) -> Tensor:
    """Per row: the sum / mean of the answer log-probs, their ``exp`` (the probability), or the mean per-token probability."""
    check_choice("reward 'logprob_reward'", "score", score, LIKELIHOOD_SCORES)
    valid = mask > 0
    lp = torch.where(valid, logprobs.detach().to(torch.float64), torch.zeros((), dtype=torch.float64))
    count = valid.sum(-1).clamp(min=1).to(torch.float64)
    total = lp.sum(-1)
    if score == "sum_logprob":
        return total
    if score == "mean_logprob":
        return total / count
    if score == "prob":
        return total.exp()
    return torch.where(valid, lp.exp(), torch.zeros_like(lp)).sum(-1) / count


def extras_with_mask(ctx: AlgoContext, key: str, mask_key: str, who: str, hint: str) -> tuple[Tensor, Tensor]:
    """``(ctx.extras[key], ctx.extras[mask_key])``, two tensors of one ``(B, L)`` shape, else MissingInputError with ``hint``."""
    values, mask = ctx.extras.get(key), ctx.extras.get(mask_key)
    if not isinstance(values, Tensor) or not isinstance(mask, Tensor):
        raise MissingInputError(f"{who} needs ctx.extras['{key}'] and ctx.extras['{mask_key}'] ({hint})")
    if values.shape != mask.shape or values.dim() != 2 or values.shape[0] != ctx.batch_size:
        raise MissingInputError(
            f"{who}: {key} {tuple(values.shape)} and {mask_key} {tuple(mask.shape)} must both be (B={ctx.batch_size}, L)"
        )
    return values, mask


@reward.register("logprob_reward", requires=("rewards", "reference_answer_logprobs"))
class LogprobReward(RewardShaper):
    """Log-prob reward (arXiv 2602.03979): ``log pi(a* | p, z)`` of the reference answer after the sampled reasoning.

    Knobs: ``score`` (sum_logprob | mean_logprob | prob | mean_prob), ``combine`` (replace | add),
    ``coef`` (1.0), ``format`` (r1 | boxed | append: the splice), ``reference`` (answer | solution).
    Reads ``ctx.extras["reference_answer_logprobs"]`` and ``["reference_answer_mask"]``.
    """

    name = "logprob_reward"

    def __init__(
        self,
        *,
        score: LikelihoodScore = "sum_logprob",
        combine: Combine = "replace",
        coef: float = 1.0,
        format: SpliceFormat = "r1",
        reference: Reference = "answer",
    ) -> None:
        super().__init__()
        check_choice(self.who(), "score", score, LIKELIHOOD_SCORES)
        check_choice(self.who(), "combine", combine, COMBINES)
        check_choice(self.who(), "format", format, SPLICE_FORMATS)
        check_choice(self.who(), "reference", reference, REFERENCES)
        self.score = score
        self.combine = combine
        self.coef = float(coef)
        self.format = format
        self.reference = reference

    def forward_quantities(self) -> list[ReferenceAnswerLogProbs]:
        return [ReferenceAnswerLogProbs(format=self.format, reference=self.reference)]

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        logprobs, mask = extras_with_mask(
            ctx,
            "reference_answer_logprobs",
            "reference_answer_mask",
            self.who(),
            "(B, L) tensors from a forward with the reference answer spliced after each sampled response; "
            "the trainer must provide them",
        )
        rewards = float_rewards(ctx, self.who())
        value = self.coef * answer_likelihood(logprobs, mask, self.score).to(device=rewards.device, dtype=rewards.dtype)
        out = value if self.combine == "replace" else rewards + value
        metrics = {
            "score_mean": float(value.mean()) if value.numel() else 0.0,
            "score_min": float(value.min()) if value.numel() else 0.0,
            "answer_tokens": float((mask > 0).sum(-1).double().mean()) if value.numel() else 0.0,
        }
        return out, metrics
