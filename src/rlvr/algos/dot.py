"""DOT: Dynamic Outlier Truncation against length shift (stage: reward), arXiv 2601.03969.

**Sourced** (abstract and secondary summaries only; no code was found): only groups whose
responses are *all* correct are affected; only the extreme tail of response lengths in those
groups is suppressed ("truncated"); thresholding is "typically a three-sigma rule". The paper also
adds a KL regulariser (use the ``kl`` regularizer) and "predictive dynamic sampling" (unknown,
not implemented).

**Inferred here** (check before relying on it): in a fully-correct group with length mean ``mu``
and population standard deviation ``sigma``, a response with ``L > mu + k_sigma * sigma`` is an
outlier and gets ``R -= penalty`` (``penalty = 1`` turns a 0/1 reward into the 0 it would have
scored had it been cut off at the threshold without an answer). We implement it as a reward and not
as a loss mask on the tail tokens: in a fully-correct group every GRPO advantage is 0, so masking
tokens there would change nothing, while the penalty creates the signal against the long tail.

**Caveat.** A response's z-score within its own group of ``G`` values is at most ``sqrt(G - 1)``
(population std), so ``k_sigma = 3`` can only fire for ``G >= 11``; with small groups lower
``k_sigma`` (e.g. 1.5 for ``G = 4..8``) or the rule never triggers (``frac_penalised`` stays 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_count, group_mean, group_sum
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, correct_mask, float_rewards, fraction, group_ids_of
from rlvr.errors import ConfigError


def length_outliers(lengths: Tensor, correct: Tensor, group_ids: Tensor, k_sigma: float) -> tuple[Tensor, Tensor]:
    """(outlier mask, fully-correct-group mask), both ``(B,)`` bool: ``L > mu + k sigma`` in all-correct groups."""
    lengths = lengths.to(torch.float64)
    all_correct = group_sum(correct.to(torch.float64), group_ids) >= group_count(group_ids)
    mu = group_mean(lengths, group_ids)
    sigma = (group_sum((lengths - mu) ** 2, group_ids) / group_count(group_ids)).sqrt()
    outlier = all_correct & (sigma > 0) & (lengths > mu + k_sigma * sigma)
    return outlier, all_correct


@reward.register("dot", requires=("rewards", "correct", "group_ids"))
class DynamicOutlierTruncation(RewardShaper):
    """DOT (arXiv 2601.03969, mechanism *inferred*): ``R -= penalty`` for 3-sigma long outliers of all-correct groups.

    Knobs: ``k_sigma`` (3.0), ``penalty`` (1.0). Metrics: ``frac_penalised``,
    ``frac_all_correct`` (responses in fully-correct groups).
    """

    name = "dot"

    def __init__(self, *, k_sigma: float = 3.0, penalty: float = 1.0) -> None:
        super().__init__()
        if k_sigma < 0:
            raise ConfigError(f"{self.who()}: k_sigma must be >= 0, got {k_sigma}")
        self.k_sigma = float(k_sigma)
        self.penalty = float(penalty)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        outlier, all_correct = length_outliers(
            ctx.lengths, correct_mask(ctx, self.who()), group_ids_of(ctx, self.who()), self.k_sigma
        )
        metrics = {"frac_penalised": fraction(outlier), "frac_all_correct": fraction(all_correct)}
        return rewards - self.penalty * outlier.to(rewards.dtype), metrics
