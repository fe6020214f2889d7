"""Format + length surrogate reward (stage: reward); our own simple, documented form.

A common surrogate of the R1-style recipes (e.g. the format term of "Train Long, Think Short",
arXiv 2508.08940, whose exact weights were not found): a bonus for following a required output
format, plus a small bonus for short *correct* answers,

    R += format_reward                         if the response matches ``pattern``
    R -= format_penalty                        otherwise
    R += length_coef * (1 - min(L, L_ref) / L_ref)     if the response is correct

with ``L`` the response length in tokens and ``L_ref`` (``length_ref``, None = max response
length). ``match="fullmatch"`` checks the whole (stripped) response, ``"search"`` any substring;
the regex uses DOTALL. The default pattern is the ``<think>...</think><answer>...</answer>`` format;
for ``\\boxed{}`` answers use e.g. ``pattern: '\\\\boxed\\{.+\\}'`` with ``match: search``.
Set ``length_coef: 0`` for a pure format reward.
"""

from __future__ import annotations

import re
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
    response_texts,
)
from rlvr.errors import ConfigError

MatchMode = Literal["fullmatch", "search"]
MATCH_MODES: tuple[str, ...] = get_args(MatchMode)
THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


def format_ok(texts: list[str], pattern: re.Pattern[str], match: MatchMode) -> Tensor:
    """Per-response bool: the regex matches (whole stripped text for fullmatch, anywhere for search)."""
    check_choice("reward 'format_length'", "match", match, MATCH_MODES)
    if match == "fullmatch":
        return torch.tensor([pattern.fullmatch(t.strip()) is not None for t in texts], dtype=torch.bool)
    return torch.tensor([pattern.search(t) is not None for t in texts], dtype=torch.bool)


def length_bonus(lengths: Tensor, length_ref: float) -> Tensor:
    """``1 - min(L, L_ref) / L_ref``, ``(B,)`` float64 in [0, 1]."""
    return 1.0 - lengths.to(torch.float64).clamp(max=length_ref) / length_ref


@reward.register("format_length", requires=("rewards", "correct"))
class FormatLength(RewardShaper):
    """Format regex bonus/penalty plus a linear shortness bonus for correct responses (our surrogate).

    Knobs: ``pattern`` (think/answer tags), ``match`` (fullmatch | search), ``format_reward`` (0.1),
    ``format_penalty`` (0.0), ``length_coef`` (0.1), ``length_ref`` (None = max response length).
    Metrics: ``frac_format_ok``, ``mean_length_term``, ``mean_term``.
    """

    name = "format_length"

    def __init__(
        self,
        *,
        pattern: str = THINK_ANSWER_PATTERN,
        match: MatchMode = "fullmatch",
        format_reward: float = 0.1,
        format_penalty: float = 0.0,
        length_coef: float = 0.1,
        length_ref: int | None = None,
    ) -> None:
        super().__init__()
        check_choice(self.who(), "match", match, MATCH_MODES)
        check_positive(self.who(), length_ref=length_ref)
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"{self.who()}: invalid pattern {pattern!r}: {exc}") from None
        self.match = match
        self.format_reward = float(format_reward)
        self.format_penalty = float(format_penalty)
        self.length_coef = float(length_coef)
        self.length_ref = length_ref

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        ok = format_ok(response_texts(ctx, self.who()), self.regex, self.match).to(ctx.response_mask.device)
        fmt = torch.where(ok, self.format_reward, -self.format_penalty).to(torch.float64)
        ref = float(max_length(ctx, self.length_ref))
        length = self.length_coef * length_bonus(ctx.lengths, ref) * correct_mask(ctx, self.who()).to(torch.float64)
        term = fmt + length
        metrics = {"frac_format_ok": fraction(ok), "mean_length_term": mean_of(length), "mean_term": mean_of(term)}
        return rewards + term.to(rewards.dtype), metrics
