"""Shared helpers of the reward shapers (stage: reward); nothing is registered here.

A reward shaper is called by the trainer as ``shaper(ctx) -> (B,) rewards`` on the whole rollout
batch, after the old-policy forward; shapers chain in config order, each reading the ``ctx.rewards``
left by the previous one. Its metrics cannot travel with the returned tensor, so
:class:`RewardShaper` keeps the metrics of its last call and hands them out from ``prepare(ctx)``,
which the trainer calls once per step right after all shapers ran (and records what it returns).

The helpers below: per-group min/max, correctness/length accessors, and the split of a response
into its thinking and answer phases at an end-of-thinking marker (``</think>``), which PEAR and the
"Train Long, Think Short" budget need.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_index
from rlvr.errors import ConfigError, MissingInputError


class RewardShaper:
    """Base of the stateless-or-stateful reward shapers: ``__call__`` -> rewards, ``prepare`` -> metrics.

    Subclasses implement ``shape(ctx) -> (new_rewards, metrics)``; the metric names get the prefix
    ``<name>/``. The returned tensor is always a new one (``ctx.rewards`` is never changed in place:
    the trainer keeps the base scores in the same tensor for ``reward/base_mean``).
    """

    name = "reward"

    def __init__(self) -> None:
        self._metrics: dict[str, float] = {}

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def __call__(self, ctx: AlgoContext) -> Tensor:
        rewards, metrics = self.shape(ctx)
        self._metrics = {f"{self.name}/{key}": float(value) for key, value in metrics.items()}
        return rewards

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """The metrics of the last ``__call__`` (then forgotten, so a step never reports stale ones)."""
        out, self._metrics = self._metrics, {}
        return out

    def who(self) -> str:
        return f"reward '{self.name}'"


# --------------------------------------------------------------------------------------------------
# context accessors
# --------------------------------------------------------------------------------------------------


def float_rewards(ctx: AlgoContext, who: str) -> Tensor:
    """``ctx.rewards`` as a floating ``(B,)`` tensor (a copy-free view; callers must not write to it)."""
    ctx.require("rewards", who=who)
    rewards = ctx.rewards
    assert rewards is not None
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def correct_mask(ctx: AlgoContext, who: str) -> Tensor:
    """``ctx.correct`` as a bool ``(B,)`` tensor (the verifier's correctness, set by the trainer)."""
    ctx.require("correct", who=who)
    assert ctx.correct is not None
    return ctx.correct.bool()


def truncated_mask(ctx: AlgoContext, who: str) -> Tensor:
    """``ctx.truncated`` as a bool ``(B,)`` tensor (hit ``max_new_tokens`` without EOS)."""
    ctx.require("truncated", who=who)
    assert ctx.truncated is not None
    return ctx.truncated.bool()


def group_ids_of(ctx: AlgoContext, who: str) -> Tensor:
    ctx.require("group_ids", who=who)
    assert ctx.group_ids is not None
    return ctx.group_ids


def response_texts(ctx: AlgoContext, who: str) -> list[str]:
    """The decoded responses ``ctx.extras["responses"]`` (one per row)."""
    texts = ctx.extras.get("responses")
    if texts is None:
        raise MissingInputError(f"{who} needs ctx.extras['responses'] (the decoded response texts)")
    if len(texts) != ctx.batch_size:
        raise MissingInputError(f"{who}: ctx.extras['responses'] has {len(texts)} texts for {ctx.batch_size} rows")
    return list(texts)


def max_length(ctx: AlgoContext, override: int | None = None) -> int:
    """``override`` if set, else ``ctx.max_response_length`` (else the padded width)."""
    return int(override) if override is not None else ctx.padded_length


def check_positive(who: str, **values: float | int | None) -> None:
    for key, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{who}: {key} must be > 0, got {value}")


def check_choice(who: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{who}: unknown {key} '{value}'; valid: {', '.join(choices)}")


def mean_of(values: Tensor, mask: Tensor | None = None) -> float:
    """Mean of ``values`` (over ``mask`` if given) as a float, 0.0 when empty."""
    values = values.detach().to(torch.float64)
    if mask is not None:
        values = values[mask.bool()]
    return float(values.mean()) if values.numel() else 0.0


def fraction(mask: Tensor) -> float:
    return float(mask.to(torch.float64).mean()) if mask.numel() else 0.0


# --------------------------------------------------------------------------------------------------
# group statistics
# --------------------------------------------------------------------------------------------------


def group_extreme(values: Tensor, group_ids: Tensor, reduce: str) -> Tensor:
    """Per-group ``"amax"`` or ``"amin"`` of ``values``, broadcast back to ``(B,)``."""
    dense, k = group_index(group_ids)
    fill = float("-inf") if reduce == "amax" else float("inf")
    init = torch.full((k,), fill, dtype=values.dtype, device=values.device)
    return init.scatter_reduce(0, dense, values, reduce=reduce, include_self=False)[dense]


# --------------------------------------------------------------------------------------------------
# thinking / answer split
# --------------------------------------------------------------------------------------------------

SPLIT_KINDS = ("exact", "approx", "no_marker")


def think_split(
    text: str, length: int, marker: str, think_fraction: float, *, text_tokens: int | None = None
) -> tuple[int, str]:
    """Number of response tokens in the thinking phase (marker included) and how it was found.

    ``length`` is the response's token count (``response_mask`` sum, EOS included when generated),
    ``text_tokens`` the number of those tokens that decode to text (``length - 1`` when an EOS
    token ends the response, else ``length``).

    * ``"exact"``: the marker is in ``text`` and ``len(text) == text_tokens``, i.e. one character
      per token (the built-in character tokenizer): the thinking phase is the first
      ``index(marker) + len(marker)`` tokens.
    * ``"approx"``: the marker is found but characters do not map one-to-one to tokens; the split is
      placed proportionally, ``round(length * chars_before_end / len(text))``. An approximation:
      the exact map needs the tokenizer's offsets, which reward shapers do not get.
    * ``"no_marker"``: no marker; the split is ``round(think_fraction * length)`` (the fallback knob;
      ``1.0`` = the whole response is thinking, as for a response cut off while thinking).
    """
    position = text.find(marker) if marker else -1
    if position < 0:
        return min(length, max(0, round(think_fraction * length))), "no_marker"
    end = position + len(marker)
    tokens = length if text_tokens is None else text_tokens
    if len(text) == tokens:
        return min(end, length), "exact"
    return min(length, round(length * end / max(len(text), 1))), "approx"


def think_splits(
    ctx: AlgoContext, who: str, marker: str, think_fraction: float
) -> tuple[list[int], dict[str, float]]:
    """:func:`think_split` for every row of ``ctx``, and the fractions of each split kind."""
    texts = response_texts(ctx, who)
    lengths = [int(v) for v in ctx.lengths.tolist()]
    truncated = ctx.truncated.bool().tolist() if ctx.truncated is not None else [True] * len(texts)
    splits: list[int] = []
    kinds: dict[str, int] = {kind: 0 for kind in SPLIT_KINDS}
    for text, length, cut in zip(texts, lengths, truncated):
        text_tokens = length if cut else max(length - 1, 0)
        split, kind = think_split(text, length, marker, think_fraction, text_tokens=text_tokens)
        splits.append(split)
        kinds[kind] += 1
    n = max(len(texts), 1)
    return splits, {f"frac_split_{kind}": count / n for kind, count in kinds.items()}
