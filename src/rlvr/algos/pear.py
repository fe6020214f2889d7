"""PEAR: Phase Entropy Aware Reward (stage: reward), arXiv 2510.08026.

**Sourced** (README proxy and reviews; the code, iNLP-Lab/PEAR, was not fetchable): the reward
reads the per-token entropies of the old-policy forward, splits each response at the
end-of-thinking marker ``</think>`` into a thinking phase and an answer phase, penalises
thinking-phase entropy and allows "moderate" answer-phase entropy.

**Inferred form** (coefficients unknown):

    R = R_in - alpha * mean_think(H_old) + beta * mean_answer(H_old)

with the means over the valid tokens of each phase (0 for an empty phase). ``alpha = 0.1`` and
``beta = 0.0`` (think-phase penalty only) are our choices. Our trainer already runs the old-policy
forward before the reward shapers, so ``ctx.old_entropy`` is available (verl had to be modified
for that).

**Phase split** (:func:`rlvr.algos.shaping.think_split`): the thinking phase is every token up to
and including the marker. The reward stage has the decoded text, not token offsets, so the split
is exact only when characters map one-to-one to tokens (the built-in character tokenizer);
otherwise it is placed proportionally to the marker's character position (approximate). Without a
marker the first ``think_fraction`` of the tokens count as thinking (default 1.0: the response
never left the thinking phase). The metrics report how often each case happened.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, float_rewards, mean_of, think_splits
from rlvr.errors import ConfigError


def phase_entropies(entropy: Tensor, mask: Tensor, splits: list[int]) -> tuple[Tensor, Tensor]:
    """Mean entropy of tokens ``[0, k_i)`` and ``[k_i, L_i)`` of each row (0 if a phase is empty), float64."""
    positions = torch.arange(entropy.shape[-1], device=entropy.device).unsqueeze(0)
    cut = torch.tensor(splits, dtype=torch.long, device=entropy.device).unsqueeze(-1)
    valid = mask > 0
    think = valid & (positions < cut)
    answer = valid & (positions >= cut)
    values = torch.where(valid, entropy, torch.zeros_like(entropy)).to(torch.float64)

    def phase_mean(sel: Tensor) -> Tensor:
        count = sel.sum(-1).to(torch.float64)
        return (values * sel).sum(-1) / count.clamp(min=1.0)

    return phase_mean(think), phase_mean(answer)


@reward.register("pear", requires=("rewards", "old_entropy"))
class Pear(RewardShaper):
    """PEAR (arXiv 2510.08026, *inferred* form): ``R += -alpha * H_think + beta * H_answer``.

    Knobs: ``alpha`` (0.1), ``beta`` (0.0), ``think_marker`` (``</think>``), ``think_fraction``
    (1.0, the share of tokens counted as thinking when the marker is absent).
    Metrics: ``think_entropy``, ``answer_entropy``, ``mean_term`` and the split-kind fractions.
    """

    name = "pear"

    def __init__(
        self, *, alpha: float = 0.1, beta: float = 0.0, think_marker: str = "</think>", think_fraction: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 <= think_fraction <= 1.0 or not math.isfinite(think_fraction):
            raise ConfigError(f"{self.who()}: think_fraction must be in [0, 1], got {think_fraction}")
        if not think_marker:
            raise ConfigError(f"{self.who()}: think_marker must be a non-empty string")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.think_marker = think_marker
        self.think_fraction = float(think_fraction)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        ctx.require("old_entropy", who=self.who())
        assert ctx.old_entropy is not None
        splits, kinds = think_splits(ctx, self.who(), self.think_marker, self.think_fraction)
        h_think, h_answer = phase_entropies(ctx.old_entropy.detach(), ctx.response_mask, splits)
        term = -self.alpha * h_think + self.beta * h_answer
        metrics = {
            "think_entropy": mean_of(h_think),
            "answer_entropy": mean_of(h_answer),
            "mean_term": mean_of(term),
            **kinds,
        }
        return rewards + term.to(rewards.dtype), metrics
