"""LASER: length-based step reward with a fixed target length (stage: reward), arXiv 2505.15612.

Code: hkust-nlp/Laser ``length_penalty.compute_length_reward_larse``. With ``L_T`` the target
length and ``alpha`` the scalar, for a **correct** response of length ``L``:

    mode "reward":   R += alpha  if L <= L_T                       (LASER, the paper's method)
    mode "penalty":  R -= alpha  if L >  L_T
    mode "hybrid":   R += alpha  if L <= L_T,  R -= alpha otherwise

Incorrect responses are left unchanged. ``alpha = 0.5`` (``length_reward_scalar``). LASER's base
score is +1 / -0.5 / -1 (correct / wrong / no answer); here the base is whatever ``ctx.rewards``
holds (0/1 for the built-in tasks) and "correct" is ``ctx.correct``.

``target_length=None`` means ``max_response_length // 4`` (4096 at the paper's 16384, i.e. the
LASER-4096 run; the released runs use 2048 / 4096 / 8192).
"""

from __future__ import annotations

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
    max_length,
    mean_of,
)

LaserMode = Literal["reward", "penalty", "hybrid"]
LASER_MODES: tuple[str, ...] = get_args(LaserMode)


def laser_term(lengths: Tensor, correct: Tensor, target: Tensor | float, alpha: float, mode: LaserMode) -> Tensor:
    """The added reward of LASER for a (per-response or scalar) target, ``(B,)`` float64."""
    check_choice("reward 'laser'", "mode", mode, LASER_MODES)
    lengths = lengths.to(torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    within = lengths <= target
    term = torch.zeros_like(lengths)
    if mode in ("reward", "hybrid"):
        term = term + alpha * within.to(torch.float64)
    if mode in ("penalty", "hybrid"):
        term = term - alpha * (~within).to(torch.float64)
    return term * correct.bool().to(torch.float64)


def default_target(ctx: AlgoContext, target_length: int | None) -> int:
    """``target_length`` if set, else a quarter of the maximum response length (LASER-4096 at 16384)."""
    return int(target_length) if target_length is not None else max(1, max_length(ctx) // 4)


@reward.register("laser", requires=("rewards", "correct"))
class Laser(RewardShaper):
    """LASER fixed-target length reward (arXiv 2505.15612): ``+alpha`` for correct and ``L <= L_T``.

    Knobs: ``target_length`` (None = ``max_response_length // 4``), ``alpha`` (0.5), ``mode``
    (``reward`` | ``penalty`` | ``hybrid``). Metrics: ``target_length``, ``frac_rewarded``,
    ``frac_penalised``, ``mean_term``.
    """

    name = "laser"

    def __init__(self, *, target_length: int | None = None, alpha: float = 0.5, mode: LaserMode = "reward") -> None:
        super().__init__()
        check_choice(self.who(), "mode", mode, LASER_MODES)
        check_positive(self.who(), target_length=target_length)
        self.target_length = target_length
        self.alpha = float(alpha)
        self.mode = mode

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        target = default_target(ctx, self.target_length)
        term = laser_term(ctx.lengths, correct_mask(ctx, self.who()), target, self.alpha, self.mode)
        metrics = {
            "target_length": float(target),
            "frac_rewarded": fraction(term > 0),
            "frac_penalised": fraction(term < 0),
            "mean_term": mean_of(term),
        }
        return rewards + term.to(rewards.dtype), metrics
