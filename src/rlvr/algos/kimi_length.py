"""Kimi-1.5 length penalty (stage: reward), Kimi k1.5 report arXiv 2501.12599.

Definition as implemented in the LASER code (hkust-nlp/Laser ``length_penalty.compute_kimi_penalty``):
per group (all responses of one prompt, correct or not) with ``L_min``, ``L_max`` the group's
shortest and longest response lengths,

    lambda_i = 0.5 - (L_i - L_min) / (L_max - L_min + eps)        (lambda_i = 0 if L_max == L_min)
    R_i += coef * lambda_i               if response i is correct
    R_i += coef * min(0, lambda_i)       otherwise

Readings: "correct" is ``ctx.correct`` (the verifier); every incorrect response gets the
``min(0, lambda)`` term (LASER applies it to the -0.5 "wrong" score only and leaves its -1 "no
answer" score alone; our verifiers have no third class). A singleton group gets ``lambda = 0`` (the
LASER code sets max=1, min=0 there, which gives a meaningless large penalty). ``coef = 0.4`` is
LASER's ``len_coef``; the Kimi report's own weight and its gradual warm-up are not published
[inferred: no warm-up here].
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import (
    RewardShaper,
    correct_mask,
    float_rewards,
    fraction,
    group_extreme,
    group_ids_of,
    mean_of,
)


def kimi_lambda(lengths: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """``lambda_i = 0.5 - (L_i - L_min) / (L_max - L_min + eps)`` per group, 0 where ``L_max == L_min``."""
    lengths = lengths.to(torch.float64)
    lo = group_extreme(lengths, group_ids, "amin")
    hi = group_extreme(lengths, group_ids, "amax")
    lam = 0.5 - (lengths - lo) / (hi - lo + eps)
    return torch.where(hi > lo, lam, torch.zeros_like(lam))


def kimi_term(lengths: Tensor, correct: Tensor, group_ids: Tensor, coef: float, eps: float = 1e-6) -> Tensor:
    """The added reward ``coef * lambda`` (correct) or ``coef * min(0, lambda)`` (incorrect), ``(B,)`` float64."""
    lam = kimi_lambda(lengths, group_ids, eps)
    return coef * torch.where(correct.bool(), lam, lam.clamp(max=0.0))


@reward.register("kimi_length", requires=("rewards", "correct", "group_ids"))
class KimiLength(RewardShaper):
    """Kimi-1.5 group length penalty ``R += coef * lambda`` (arXiv 2501.12599; LASER's code).

    Knobs: ``coef`` (0.4, LASER's ``len_coef``), ``eps`` (1e-6). Metrics: ``mean_term``,
    ``frac_penalised`` (term < 0), ``frac_bonus`` (term > 0).
    """

    name = "kimi_length"

    def __init__(self, *, coef: float = 0.4, eps: float = 1e-6) -> None:
        super().__init__()
        self.coef = float(coef)
        self.eps = float(eps)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        term = kimi_term(ctx.lengths, correct_mask(ctx, self.who()), group_ids_of(ctx, self.who()), self.coef, self.eps)
        metrics = {"mean_term": mean_of(term), "frac_penalised": fraction(term < 0), "frac_bonus": fraction(term > 0)}
        return rewards + term.to(rewards.dtype), metrics
