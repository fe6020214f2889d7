"""LASER-DE: LASER-D plus an exploration bonus on long, non-repetitive wrong answers (stage: reward).

arXiv 2505.15612; code hkust-nlp/Laser ``length_penalty.compute_length_reward_larse_de`` and
``compute_unique_tokens.detect_token_ngram_repetition_optimized_reversed``.

Correct responses: as LASER-D (``+alpha`` if ``L <= L_T(bucket)``; LASER-DE has no penalty modes).
Wrong responses with ``L > L_T(bucket)`` that are **not** repetitive get ``+alpha`` as well, which
encourages exploration on hard prompts. The code applies this to the "wrong" score (-0.5) only,
not to the "no final answer" score (-1) that covers unfinished responses; we read that as
"incorrect and not truncated" (``ctx.truncated``).

**Repetition check** (:func:`repetition_start`, same rule as the official detector, written anew):
on a sequence of ``N`` units, with ``n = 2`` if ``N < 30``, ``3`` if ``N < 100``, else 4, and a
count threshold of 2 (``N < 200``) or 3. Scanning n-grams from the end, an n-gram that reaches the
threshold with two consecutive occurrences closer than ``N // 3`` marks a repetition (n-grams of a
single repeated unit are skipped when ``n > 2``); failing that, a repeated ``2n``-gram does. Short
sequences (``N <= 2n``) never count as repetitive. The official check runs on **token ids**; the
reward stage only has the decoded text, so ``repetition_unit`` chooses the units:

* ``"words"`` (default): whitespace-separated words, the closest cheap proxy for BPE tokens;
* ``"chars"``: characters (exact for a character-level tokenizer);
* ``"token_ids"``: ``ctx.extras["response_token_ids"]`` (a list of id lists), if the trainer
  provides it; missing -> MissingInputError.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.laser_d import LaserD, RoundMethod
from rlvr.algos.registry import reward
from rlvr.algos.shaping import (
    check_choice,
    correct_mask,
    fraction,
    mean_of,
    response_texts,
    truncated_mask,
)
from rlvr.errors import MissingInputError

RepetitionUnit = Literal["words", "chars", "token_ids"]
REPETITION_UNITS: tuple[str, ...] = get_args(RepetitionUnit)


def repetition_start(units: Sequence[Hashable], n: int = 4) -> int:
    """Index where a repetition starts in ``units``, or ``len(units)`` if none (see the module docstring)."""
    size = len(units)
    if size <= 2 * n:
        return size
    n = 2 if size < 30 else 3 if size < 100 else min(4, n)
    needed = 2 if size < 200 else 3
    seen: dict[tuple[Hashable, ...], list[int]] = defaultdict(list)
    for start in range(size - n, -1, -1):
        gram = tuple(units[start : start + n])
        if n > 2 and len(set(gram)) == 1:
            continue
        seen[gram].append(start)
        where = seen[gram]
        if len(where) >= needed:
            ordered = sorted(where)
            if any(b - a < size // 3 for a, b in zip(ordered, ordered[1:])):
                return min(ordered)
    if size >= 4 * n:
        first: dict[tuple[Hashable, ...], int] = {}
        for start in range(size - 2 * n, -1, -1):
            gram = tuple(units[start : start + 2 * n])
            if gram in first:
                return min(start, first[gram])
            first[gram] = start
    return size


def is_repetitive(units: Sequence[Hashable]) -> bool:
    return repetition_start(units) < len(units)


@reward.register("laser_de", requires=("rewards", "correct", "group_ids", "truncated"))
class LaserDE(LaserD):
    """LASER-DE (arXiv 2505.15612): LASER-D plus ``+alpha`` for long, non-repetitive wrong answers.

    Knobs: as ``laser_d`` (no ``mode``) plus ``repetition_unit`` (words | chars | token_ids).
    Metrics: LASER-D's plus ``frac_explore_bonus`` and ``frac_repetitive`` (of the checked responses).
    """

    name = "laser_de"

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        monitor_freq: int = 20,
        lower_bound: int | None = None,
        upper_bound: int | None = None,
        interval: int | None = None,
        expected_n_correct: int = 1,
        n_rollout: int | None = None,
        round_method: RoundMethod = "floor",
        target_length: int | None = None,
        repetition_unit: RepetitionUnit = "words",
    ) -> None:
        super().__init__(
            alpha=alpha,
            mode="reward",
            monitor_freq=monitor_freq,
            lower_bound=lower_bound,
            upper_bound=upper_bound,
            interval=interval,
            expected_n_correct=expected_n_correct,
            n_rollout=n_rollout,
            round_method=round_method,
            target_length=target_length,
        )
        check_choice(self.who(), "repetition_unit", repetition_unit, REPETITION_UNITS)
        self.repetition_unit = repetition_unit

    def units(self, ctx: AlgoContext, row: int) -> Sequence[Hashable]:
        if self.repetition_unit == "token_ids":
            ids = ctx.extras.get("response_token_ids")
            if ids is None:
                raise MissingInputError(
                    f"{self.who()} with repetition_unit='token_ids' needs ctx.extras['response_token_ids']"
                )
            length = int(ctx.lengths[row].item())
            return list(ids[row])[:length]
        text = response_texts(ctx, self.who())[row]
        return text.split() if self.repetition_unit == "words" else text

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards, metrics = super().shape(ctx)
        target, _ = self.response_targets(ctx)
        lengths = ctx.lengths.to(torch.float64)
        truncated = truncated_mask(ctx, self.who())
        candidates = ~correct_mask(ctx, self.who()) & ~truncated & (lengths > target)
        bonus = torch.zeros_like(lengths)
        repetitive = 0
        for row in candidates.nonzero().flatten().tolist():
            if is_repetitive(self.units(ctx, row)):
                repetitive += 1
            else:
                bonus[row] = self.alpha
        checked = int(candidates.sum())
        metrics["frac_explore_bonus"] = fraction(bonus > 0)
        metrics["frac_repetitive"] = repetitive / checked if checked else 0.0
        metrics["mean_term"] = metrics["mean_term"] + mean_of(bonus)
        return rewards + bonus.to(rewards.dtype), metrics
