"""Length-budget curriculum of "Train Long, Think Short" (stage: reward), arXiv 2508.08940.

**Sourced** (secondary summaries; the code, hammoudhasan/curriculum_grpo, was not fetchable): the
token budget decays over training, ``B(t) = max(1, B0 * gamma^floor(t / T))`` (exponential; a
linear decay is the alternative), with ``B0 = 256`` and ``gamma = 0.7`` in the paper's figure; the
reward is correctness + length efficiency w.r.t. ``B(t)`` + format, applied to the length of the
**thinking trace** (``<think>...</think>``).

**Chosen here** (the paper's length-reward shape and weights were not found): a correct response
whose thinking segment has ``L_think`` tokens gets

    R += coef * r_len,   r_len = 1 if L_think <= B(t),  max(0, 1 - (L_think - B(t)) / B(t)) otherwise

(full bonus within budget, decaying linearly to 0 at twice the budget); incorrect responses get
nothing (so the model cannot buy length reward with short wrong answers). The format term is not
part of this shaper: chain ``format_length`` (with ``length_coef=0``) for it.

``schedule="linear"``: ``B(t) = max(1, B0 - slope * floor(t / T))`` with ``slope = (1 - gamma) *
B0`` unless set (the first decrement equals the exponential one). ``interval`` (T) = 50 steps is
our choice (the paper's T was not found).

**Thinking length.** The thinking segment ends after the marker (``think_marker``, default
``</think>``) found in the decoded response. Its token count is exact for a character-level
tokenizer and otherwise estimated from the marker's character position (see
:func:`rlvr.algos.shaping.think_split`); a response without the marker counts
``think_fraction * L`` tokens (default 1.0: all of it is thinking). ``think_marker=""`` uses the
whole response length.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import (
    RewardShaper,
    check_choice,
    check_positive,
    correct_mask,
    float_rewards,
    fraction,
    mean_of,
    think_splits,
)
from rlvr.errors import ConfigError

BudgetSchedule = Literal["exponential", "linear"]
SCHEDULES: tuple[str, ...] = get_args(BudgetSchedule)


def budget_at(
    step: int,
    b0: float,
    gamma: float,
    interval: int,
    schedule: BudgetSchedule = "exponential",
    slope: float | None = None,
) -> float:
    """``B(t)``: ``max(1, B0 gamma^floor(t/T))`` or ``max(1, B0 - slope floor(t/T))``."""
    check_choice("reward 'budget_curriculum'", "schedule", schedule, SCHEDULES)
    k = step // interval
    if schedule == "exponential":
        return max(1.0, b0 * gamma**k)
    step_down = (1.0 - gamma) * b0 if slope is None else slope
    return max(1.0, b0 - step_down * k)


def budget_reward(think_lengths: Tensor, budget: float) -> Tensor:
    """``r_len``: 1 within budget, linear decay to 0 at twice the budget, ``(B,)`` float64."""
    over = (think_lengths.to(torch.float64) - budget) / budget
    return (1.0 - over.clamp(min=0.0)).clamp(min=0.0)


@reward.register("budget_curriculum", requires=("rewards", "correct"))
class BudgetCurriculum(RewardShaper):
    """Decaying thinking-length budget (arXiv 2508.08940; the reward *shape* is our documented choice).

    Knobs: ``b0`` (256), ``gamma`` (0.7), ``interval`` (50 steps), ``schedule`` (exponential |
    linear), ``slope`` (linear only; None = (1-gamma)*b0), ``coef`` (0.5), ``think_marker``
    (``</think>``; "" = whole response), ``think_fraction`` (1.0, used without a marker).
    Metrics: ``budget``, ``frac_within_budget``, ``mean_think_length``, ``mean_term`` and the
    fractions of exact / approximate / marker-less splits.
    """

    name = "budget_curriculum"

    def __init__(
        self,
        *,
        b0: float = 256.0,
        gamma: float = 0.7,
        interval: int = 50,
        schedule: BudgetSchedule = "exponential",
        slope: float | None = None,
        coef: float = 0.5,
        think_marker: str = "</think>",
        think_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice(self.who(), "schedule", schedule, SCHEDULES)
        check_positive(self.who(), b0=b0, gamma=gamma, interval=interval)
        if not 0.0 <= think_fraction <= 1.0 or not math.isfinite(think_fraction):
            raise ConfigError(f"{self.who()}: think_fraction must be in [0, 1], got {think_fraction}")
        self.b0 = float(b0)
        self.gamma = float(gamma)
        self.interval = int(interval)
        self.schedule = schedule
        self.slope = slope
        self.coef = float(coef)
        self.think_marker = think_marker
        self.think_fraction = float(think_fraction)

    def budget(self, step: int) -> float:
        return budget_at(step, self.b0, self.gamma, self.interval, self.schedule, self.slope)

    def think_lengths(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        if not self.think_marker:
            return ctx.lengths.to(torch.float64), {}
        splits, kinds = think_splits(ctx, self.who(), self.think_marker, self.think_fraction)
        return torch.tensor(splits, dtype=torch.float64, device=ctx.response_mask.device), kinds

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        budget = self.budget(int(ctx.step))
        think, kinds = self.think_lengths(ctx)
        term = self.coef * budget_reward(think, budget) * correct_mask(ctx, self.who()).to(torch.float64)
        metrics = {
            "budget": budget,
            "frac_within_budget": fraction(think <= budget),
            "mean_think_length": mean_of(think),
            "mean_term": mean_of(term),
            **kinds,
        }
        return rewards + term.to(rewards.dtype), metrics
