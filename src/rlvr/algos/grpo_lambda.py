"""GRPO-lambda: length penalty only on the batch's most accurate groups (stage: reward), arXiv 2505.18086.

**Sourced** (abstract and secondary summaries only; no code was found): the reward strategy
switches per query group by its correctness ratio. Groups with a high ratio get a length-penalty
reward; groups with a low ratio keep the length-agnostic 0/1 reward. A summary mentions
"batch-wise group correctness and a top-lambda selection".

**Inferred here** (not from the paper's text; check before relying on it):

* ``acc_g`` = fraction of correct responses of group ``g`` (``ctx.correct``);
* groups are ranked by ``acc_g`` over the batch; with ``K`` groups the selected ones are those with
  ``acc_g > 0`` and ``acc_g >= `` the accuracy of the ``ceil(lam * K)``-th ranked group (so ties at
  the cut are all selected and the rule does not depend on row order; it may select more than
  ``lam * K`` groups). A group with no correct response is never selected: a length penalty there
  would only push wrong answers around;
* selected groups get the Kimi-1.5 group length penalty (:mod:`rlvr.algos.kimi_length`,
  ``R += coef * lambda`` for correct, ``coef * min(0, lambda)`` for wrong); all others keep ``R``.

``lam = 0.5`` and ``coef = 0.4`` (LASER's Kimi weight) are our choices; the paper's lambda and
penalty form were not found.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_index, group_mean
from rlvr.algos.kimi_length import kimi_term
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, correct_mask, float_rewards, fraction, group_ids_of, mean_of
from rlvr.errors import ConfigError


def top_lambda_groups(correct: Tensor, group_ids: Tensor, lam: float) -> Tensor:
    """Per-response bool: its group is among the top-``lam`` groups by accuracy (ties kept, acc > 0)."""
    acc = group_mean(correct.to(torch.float64), group_ids)
    dense, k = group_index(group_ids)
    if k == 0 or lam <= 0:
        return torch.zeros_like(correct, dtype=torch.bool)
    per_group = torch.zeros(k, dtype=torch.float64, device=acc.device).index_copy_(0, dense, acc)
    ranked = per_group.sort(descending=True).values
    cut = ranked[min(k, math.ceil(lam * k)) - 1]
    return (acc >= cut) & (acc > 0)


@reward.register("grpo_lambda", requires=("rewards", "correct", "group_ids"))
class GrpoLambda(RewardShaper):
    """GRPO-lambda (arXiv 2505.18086, selection rule and penalty *inferred*): Kimi penalty on top-lambda groups.

    Knobs: ``lam`` (0.5, fraction of groups, in [0, 1]), ``coef`` (0.4), ``eps`` (1e-6).
    Metrics: ``frac_selected`` (fraction of responses in selected groups), ``mean_term``, ``frac_penalised``.
    """

    name = "grpo_lambda"

    def __init__(self, *, lam: float = 0.5, coef: float = 0.4, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"{self.who()}: lam must be in [0, 1], got {lam}")
        self.lam = float(lam)
        self.coef = float(coef)
        self.eps = float(eps)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        correct = correct_mask(ctx, self.who())
        group_ids = group_ids_of(ctx, self.who())
        selected = top_lambda_groups(correct, group_ids, self.lam)
        term = kimi_term(ctx.lengths, correct, group_ids, self.coef, self.eps) * selected.to(torch.float64)
        metrics = {
            "frac_selected": fraction(selected),
            "mean_term": mean_of(term),
            "frac_penalised": fraction(term < 0),
        }
        return rewards + term.to(rewards.dtype), metrics
