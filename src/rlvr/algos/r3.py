"""R^3's structural entropy ranking reward (stage: reward), arXiv 2601.19620.

R^3 ("Replay, Reflection, and Ranking Rewards for LLM Reinforcement Learning", Jiang et al. 2026)
has three parts; its replay and reflection are rollout-stage components (:mod:`rlvr.rollout.r3`,
``rollout.r3``), this module is the third. No code is released ("code and model will be
released"); what follows is from the abstract and two summaries (chatpaper, newx).

**Sourced:** a *structural entropy ranking reward* "assigns relative rewards to truncated or failed
samples by ranking responses based on token-level entropy patterns, capturing both local
exploration and global stability"; its purpose is to keep an advantage gap when a group's outcome
rewards collapse (every response wrong) and to "reduce advantage estimation bias".

**Inferred** (the statistic, the band and every default are our choices). Token entropies
``H_t`` are the rollout policy's, ``ctx.old_entropy`` (the old-policy forward at the sampling
temperature), over the ``n_i`` valid tokens of response ``i``:

    G_i = (1/n_i) sum_t H_t                                  global level (low = stable)
    L_i = max_s (1/w) sum_{t=s}^{s+w-1} H_t,   w = min(window, n_i)   the most exploratory stretch
    s_i = L_i - G_i                                          (0 for an empty response)

so a response ranks high when it explores in a few places (a high-entropy stretch) over an
otherwise confident baseline, and low when it is uniformly uncertain (rambling: ``L ~ G`` high)
or uniformly flat (a repetition loop, the usual truncation: ``L ~ G`` low). Within each group the
``n_f`` responses that are not verified correct (``ctx.correct``; failed, truncated ones included)
are ranked by ``s`` ascending, ``r_i in {0 .. n_f - 1}`` (ties share their mean rank), and get

    R_i <- R_i + band * r_i / (n_f - 1)       (n_f >= 2; a lone failure gets nothing)

Correct responses keep their reward. ``band = 0.1`` keeps every failed reward below a correct one
on a 0/1 verifier (any ``band < 1`` does); ``window = 16`` tokens is about one sentence / reasoning
step of math text: long enough to average out single-token spikes, short against responses of
hundreds to thousands of tokens. With responses no longer than ``window``, ``L = G`` and every
score is 0 (all tied: a constant shift of the failed rewards, which GRPO's normalisation ignores).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_index
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, correct_mask, float_rewards, fraction, group_ids_of, mean_of
from rlvr.errors import ConfigError


def entropy_structure(entropy: Tensor, mask: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """``(L, G)`` of every row, float64: the largest mean over ``min(window, n)`` consecutive valid
    tokens and the mean over all ``n`` valid tokens (both 0 for an empty row)."""
    local = torch.zeros(entropy.shape[0], dtype=torch.float64)
    level = torch.zeros_like(local)
    for row in range(entropy.shape[0]):
        h = entropy[row][mask[row] > 0].detach().to(torch.float64).cpu()
        if h.numel() == 0:
            continue
        w = min(window, h.numel())
        local[row] = h.unfold(0, w, 1).mean(-1).max()
        level[row] = h.mean()
    return local, level


def average_ranks(values: Tensor) -> Tensor:
    """0-based ascending ranks of ``values`` (float64); equal values share the mean of their ranks."""
    ranks = torch.empty(values.shape[0], dtype=torch.float64)
    ranks[torch.argsort(values, stable=True)] = torch.arange(values.shape[0], dtype=torch.float64)
    for value in values.unique():
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_bonus(scores: Tensor, candidates: Tensor, group_ids: Tensor, band: float) -> tuple[Tensor, Tensor]:
    """``band * r / (n_f - 1)`` for each candidate row, ``r`` its rank by score among its group's ``n_f``
    candidates, where ``n_f >= 2``; 0 elsewhere (float64 ``(B,)``). Also the rows so ranked (bool)."""
    bonus = torch.zeros(scores.shape[0], dtype=torch.float64)
    ranked = torch.zeros(scores.shape[0], dtype=torch.bool)
    dense, k = group_index(group_ids.cpu())
    for g in range(k):
        rows = ((dense == g) & candidates.cpu()).nonzero().flatten()
        if rows.numel() >= 2:
            bonus[rows] = band * average_ranks(scores[rows]) / (rows.numel() - 1)
            ranked[rows] = True
    return bonus, ranked


@reward.register("r3_rank", requires=("rewards", "correct", "group_ids", "old_entropy"))
class R3Rank(RewardShaper):
    """R^3 entropy ranking reward (arXiv 2601.19620, *inferred* statistic): failed responses ranked by ``L - G``.

    ``L`` is the highest ``window``-token mean entropy of a response, ``G`` its mean entropy; within
    a group the not-correct responses get ``+band * rank / (n_f - 1)`` (module docstring). Knobs:
    ``band`` (0.1), ``window`` (16). Metrics: ``ranked_frac``, ``mean_bonus`` (over ranked rows),
    ``local_entropy``, ``global_entropy`` and ``score`` (means over the not-correct rows).
    """

    name = "r3_rank"

    def __init__(self, *, band: float = 0.1, window: int = 16) -> None:
        super().__init__()
        if not math.isfinite(band) or band < 0:
            raise ConfigError(f"{self.who()}: band must be a finite number >= 0, got {band}")
        if window < 1:
            raise ConfigError(f"{self.who()}: window must be >= 1, got {window}")
        self.band = float(band)
        self.window = int(window)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        who = self.who()
        rewards = float_rewards(ctx, who)
        failed = ~correct_mask(ctx, who).cpu()
        group_ids = group_ids_of(ctx, who)
        ctx.require("old_entropy", who=who)
        assert ctx.old_entropy is not None
        local, level = entropy_structure(ctx.old_entropy, ctx.response_mask, self.window)
        score = local - level
        bonus, ranked = rank_bonus(score, failed, group_ids, self.band)
        metrics = {
            "ranked_frac": fraction(ranked),
            "mean_bonus": mean_of(bonus, ranked),
            "local_entropy": mean_of(local, failed),
            "global_entropy": mean_of(level, failed),
            "score": mean_of(score, failed),
        }
        return rewards + bonus.to(device=rewards.device, dtype=rewards.dtype), metrics
