"""CANON conditional advantage estimation (stage: advantage).

CANON ("Conditional Advantage Estimation", arXiv 2509.23962; code biuboomc/CANON
``verl/trainer/ppo/core_algos.py``: ``compute_dr_entropy_per_token_group_outcome_advantage``,
``compute_dr_length_on_mean_group_outcome_advantage``, the ``..._annel_``/``..._cosine_with_restart[_r]_``
variants and ``compute_dr_random_group_outcome_advantage``; trainer ``dapo_ray_trainer.py``).

Each prompt's group is split in two by a per-response metric ``h_i``:

* ``metric="entropy"``: ``h_i`` = mean token entropy of the response under the rollout policy
  (``masked_mean(ctx.old_entropy, response_mask)``; the official code uses the entropy returned by
  the old-log-prob forward);
* ``metric="length"``: ``h_i = |o_i|`` (valid response tokens).

Sort the group by ``h`` ascending (stable: equal ``h`` keep batch order, exactly as the official
Python ``sorted(..., key=h)``), ``mid = n // 2``; sorted positions ``>= mid`` form the high half
``C+`` (it gets the extra response when ``n`` is odd), the rest the low half ``C-``. With ``R-bar+-``
the mean reward of each half, ``mu`` the inter-group weight (official ``_lambda``), ``alpha``/``beta``
(Eq. 8) and ``L`` the length divisor:

entropy-based (``dr_entropy_token_budget``)::

    i in C+:  A_i = [ mu (R_i - alpha R-bar-  + beta) + (1 - mu)(R_i - R-bar+) ] / L
    i in C-:  A_i = [ mu (alpha R_i - R-bar+  - beta) + (1 - mu)(R_i - R-bar-) ] / L

length-based (``dr_length_on_mean``; alpha sits on the *other* term)::

    i in C+:  A_i = [ mu (alpha R_i - R-bar-  + beta) + (1 - mu)(R_i - R-bar+) ] / L
    i in C-:  A_i = [ mu (R_i - alpha R-bar+  - beta) + (1 - mu)(R_i - R-bar-) ] / L

With ``alpha = 1, beta = 0`` both are ``mu (R_i - R-bar_other) + (1 - mu)(R_i - R-bar_own)``:
``mu`` weights the inter-group comparison, ``1 - mu`` the intra-group one; ``mu = 0.5`` with equal
halves is Dr. GRPO's ``R_i - R-bar``. Note that with ``alpha != 1`` or ``beta != 0`` a group whose
rewards are all equal does *not* get zero advantages (e.g. all correct, alpha = 1.2, entropy metric:
``C+`` gets ``-0.2 mu``, ``C-`` ``+0.2 mu``); that is the official formula and is kept.

Scheduled variants replace ``mu`` by ``1 - m`` with ``m`` the *intra* weight (the official schedule
functions hard-code ``alpha = 1, beta = 0``; here ``alpha``/``beta`` still apply and default to those):

* ``anneal`` (official ``annel``): ``m = 1 - mean_batch(R)`` (so the inter weight is the batch mean
  reward, the accuracy for 0/1 rewards: "first intra, later inter");
* ``cosine_restart``: ``m = cos_restart(step; warmup 30, total 150, cycles 3, max 0.6, min 0.0)``;
* ``cosine_restart_r``: ``m = 1 - cos_restart(step; ..., max 1.0, min 0.4)``;

see :func:`cosine_restart_schedule`. The official trainer passes verl's 1-based ``global_steps``;
``ctx.step`` is 0-based, hence ``step_offset = 1``.

``L`` (``divide_by_max_length``): ``None`` = ``ctx.padded_length`` (``max_response_length``) iff
``ctx.agg_mode == "seq-mean-token-sum"`` else 1, as the official trainer (``max_length =
max_response_length if loss_agg_mode == "seq-mean-token-sum" else 1``); ``True``/``False`` force it.

Singleton groups (no split possible) follow the official code, which sets both half means to 0
(verl's GRPO convention, as ``grpo`` here): the single response is in ``C+`` and gets
``A = [mu (R + beta) + (1 - mu) R] / L`` (entropy) or ``[mu (alpha R + beta) + (1 - mu) R] / L``
(length), i.e. ``R / L`` with the defaults.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_count, group_index, group_sum
from rlvr.algos.registry import advantage
from rlvr.errors import ConfigError

CanonMetric = Literal["entropy", "length"]
CanonSchedule = Literal["constant", "anneal", "cosine_restart", "cosine_restart_r"]
CANON_METRICS: tuple[str, ...] = get_args(CanonMetric)
CANON_SCHEDULES: tuple[str, ...] = get_args(CanonSchedule)
# official (max, min) of the cosine schedule per variant
COSINE_BOUNDS = {"cosine_restart": (0.6, 0.0), "cosine_restart_r": (1.0, 0.4)}


def cosine_restart_schedule(
    step: int,
    *,
    warmup_steps: int = 30,
    total_steps: int = 150,
    cycles: int = 3,
    max_value: float = 0.6,
    min_value: float = 0.0,
) -> float:
    """Cosine annealing with warm restarts (official ``cosine_annealing_with_restart``).

    ``step < warmup``: ``max * (step + 1) / warmup`` (linear warm-up that reaches ``max`` at
    ``step = warmup - 1``). Otherwise, with ``e = step - warmup`` and
    ``cycle = (total - warmup) // cycles`` (integer division): ``min + (max - min) / 2 *
    (1 + cos(pi * (e mod cycle) / cycle))``; restarts continue past ``total``. Defaults: warm-up
    30, total 150, 3 cycles of 40 steps, max 0.6, min 0.
    """
    if warmup_steps < 0 or cycles < 1:
        raise ConfigError(f"cosine schedule: need warmup_steps >= 0 and cycles >= 1, got {warmup_steps}, {cycles}")
    cycle = (total_steps - warmup_steps) // cycles
    if cycle < 1:
        raise ConfigError(
            f"cosine schedule: (total_steps - warmup_steps) // cycles must be >= 1, got "
            f"({total_steps} - {warmup_steps}) // {cycles} = {cycle}"
        )
    if step < warmup_steps:
        return max_value * (step + 1) / warmup_steps
    e = (step - warmup_steps) % cycle
    return min_value + 0.5 * (max_value - min_value) * (1.0 + math.cos(math.pi * e / cycle))


def high_half_mask(metric: Tensor, group_ids: Tensor) -> Tensor:
    """``(B,)`` bool: True for the responses in the high half ``C+`` of their group.

    Within each group the responses are ordered by ``metric`` ascending with a *stable* sort (ties
    keep batch order, NaN sorts last); sorted positions ``>= n // 2`` are high. Vectorised: a stable
    sort by metric followed by a stable sort by group gives the within-group order.
    """
    dense, k = group_index(group_ids)
    by_metric = torch.sort(metric, stable=True).indices
    order = by_metric[torch.sort(dense[by_metric], stable=True).indices]
    counts = torch.bincount(dense, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(dense)
    rank[order] = torch.arange(dense.numel(), device=dense.device) - starts[dense[order]]
    return rank >= torch.div(counts[dense], 2, rounding_mode="floor")


def index_high_half_mask(group_ids: Tensor) -> Tensor:
    """High half by batch order within each group (the official ``dr_random`` regrouping)."""
    return high_half_mask(torch.arange(group_ids.numel(), dtype=torch.float64, device=group_ids.device), group_ids)


def half_means(rewards: Tensor, high: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(R-bar+, R-bar-)`` broadcast to ``(B,)``; both 0 for a singleton group (official)."""
    hi = high.to(rewards.dtype)
    lo = 1.0 - hi
    mean_hi = group_sum(rewards * hi, group_ids) / group_sum(hi, group_ids).clamp_min(1.0)
    mean_lo = group_sum(rewards * lo, group_ids) / group_sum(lo, group_ids).clamp_min(1.0)
    single = group_count(group_ids) <= 1
    zero = torch.zeros_like(rewards)
    return torch.where(single, zero, mean_hi), torch.where(single, zero, mean_lo)


def canon_sequence_advantages(
    rewards: Tensor,
    high: Tensor,
    group_ids: Tensor,
    *,
    variant: CanonMetric = "entropy",
    mu: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    length_divisor: float = 1.0,
) -> Tensor:
    """Per-response CANON advantages ``(B,)`` (module docstring formulas; ``variant`` = alpha placement)."""
    if variant not in CANON_METRICS:
        raise ConfigError(f"advantage 'canon': unknown metric '{variant}'; valid: {', '.join(CANON_METRICS)}")
    mean_hi, mean_lo = half_means(rewards, high, group_ids)
    r = rewards
    if variant == "entropy":
        a_high = mu * (r - alpha * mean_lo + beta) + (1.0 - mu) * (r - mean_hi)
        a_low = mu * (alpha * r - mean_hi - beta) + (1.0 - mu) * (r - mean_lo)
    else:
        a_high = mu * (alpha * r - mean_lo + beta) + (1.0 - mu) * (r - mean_hi)
        a_low = mu * (r - alpha * mean_hi - beta) + (1.0 - mu) * (r - mean_lo)
    return torch.where(high, a_high, a_low) / length_divisor


def _rewards(ctx: AlgoContext, who: str) -> tuple[Tensor, Tensor, torch.dtype]:
    """``(rewards as float64, group_ids, output dtype)`` after checking both fields are set."""
    ctx.require("rewards", "group_ids", who=who)
    assert ctx.rewards is not None and ctx.group_ids is not None
    rewards = ctx.rewards
    dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    return rewards.to(torch.float64), ctx.group_ids, dtype


def _length_divisor(ctx: AlgoContext, divide_by_max_length: bool | None) -> float:
    use = ctx.agg_mode == "seq-mean-token-sum" if divide_by_max_length is None else bool(divide_by_max_length)
    return float(ctx.padded_length) if use else 1.0


def _to_tokens(seq: Tensor, ctx: AlgoContext, dtype: torch.dtype) -> Tensor:
    return seq.to(dtype).unsqueeze(-1) * ctx.response_mask.to(dtype)


def inter_weight(
    ctx: AlgoContext,
    rewards: Tensor,
    *,
    schedule: CanonSchedule,
    mu: float,
    warmup_steps: int,
    total_steps: int,
    cycles: int,
    cos_max: float | None,
    cos_min: float | None,
    step_offset: int,
) -> float:
    """The weight on the inter-group term: ``mu`` (constant) or ``1 - m`` for a schedule's intra weight ``m``."""
    if schedule == "constant":
        return float(mu)
    if schedule == "anneal":
        intra = 1.0 - float(rewards.mean()) if rewards.numel() else 1.0
        return 1.0 - intra
    default_max, default_min = COSINE_BOUNDS[schedule]
    value = cosine_restart_schedule(
        ctx.step + step_offset,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        cycles=cycles,
        max_value=default_max if cos_max is None else cos_max,
        min_value=default_min if cos_min is None else cos_min,
    )
    intra = value if schedule == "cosine_restart" else 1.0 - value
    return 1.0 - intra


@advantage.register("canon", requires=("rewards", "group_ids", "old_entropy"))
def canon(
    ctx: AlgoContext,
    *,
    metric: CanonMetric = "entropy",
    mu: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    schedule: CanonSchedule = "constant",
    warmup_steps: int = 30,
    total_steps: int = 150,
    cycles: int = 3,
    cos_max: float | None = None,
    cos_min: float | None = None,
    step_offset: int = 1,
    divide_by_max_length: bool | None = None,
) -> Tensor:
    """CANON advantage (arXiv 2509.23962), ``(B, T)`` broadcast over the response mask.

    Knobs: ``metric`` "entropy" (needs ``ctx.old_entropy``) | "length"; ``mu`` inter-group weight
    (official ``_lambda``, default 1.0 as ``setups.sh``; ignored by the schedules); ``alpha`` 1.0,
    ``beta`` 0.0 (Eq. 8); ``schedule`` "constant" | "anneal" | "cosine_restart" | "cosine_restart_r";
    cosine knobs ``warmup_steps`` 30, ``total_steps`` 150, ``cycles`` 3, ``cos_max``/``cos_min``
    (None = official 0.6/0.0 for ``cosine_restart``, 1.0/0.4 for ``cosine_restart_r``),
    ``step_offset`` 1 (schedule step = ``ctx.step + step_offset``, verl's 1-based global step);
    ``divide_by_max_length`` None (= iff ``agg_mode == "seq-mean-token-sum"``) | True | False.
    Formulas, tie-breaking and singleton groups: module docstring.
    """
    who = "advantage 'canon'"
    if metric not in CANON_METRICS:
        raise ConfigError(f"{who}: unknown metric '{metric}'; valid: {', '.join(CANON_METRICS)}")
    if schedule not in CANON_SCHEDULES:
        raise ConfigError(f"{who}: unknown schedule '{schedule}'; valid: {', '.join(CANON_SCHEDULES)}")
    rewards, group_ids, dtype = _rewards(ctx, who)
    if metric == "entropy":
        ctx.require("old_entropy", who=f"{who} with metric='entropy' (or use metric='length')")
        assert ctx.old_entropy is not None
        clean = torch.where(ctx.response_mask > 0, ctx.old_entropy, torch.zeros_like(ctx.old_entropy))
        values = masked_mean(clean.to(torch.float64), ctx.response_mask, dim=-1)
    else:
        values = ctx.lengths.to(torch.float64)
    high = high_half_mask(values, group_ids)
    weight = inter_weight(
        ctx,
        rewards,
        schedule=schedule,
        mu=mu,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        cycles=cycles,
        cos_max=cos_max,
        cos_min=cos_min,
        step_offset=step_offset,
    )
    seq = canon_sequence_advantages(
        rewards,
        high,
        group_ids,
        variant=metric,
        mu=weight,
        alpha=alpha,
        beta=beta,
        length_divisor=_length_divisor(ctx, divide_by_max_length),
    )
    return _to_tokens(seq, ctx, dtype)


@advantage.register("canon_random", requires=("rewards", "group_ids"))
def canon_random(ctx: AlgoContext, *, mu: float = 1.0, divide_by_max_length: bool | None = None) -> Tensor:
    """CANON's random-regrouping baseline (official ``dr_random``), ``(B, T)``.

    Each group is split by batch order (first ``n // 2`` responses low, the rest high), which is
    random with respect to any property of the responses, then the entropy-form CANON advantage
    with ``alpha = 1, beta = 0``: ``mu (R_i - R-bar_other) + (1 - mu)(R_i - R-bar_own)``, over ``L``
    as ``canon``. The official baseline is ``mu = 1`` (pure inter-group).
    """
    rewards, group_ids, dtype = _rewards(ctx, "advantage 'canon_random'")
    high = index_high_half_mask(group_ids)
    seq = canon_sequence_advantages(
        rewards, high, group_ids, variant="entropy", mu=mu, length_divisor=_length_divisor(ctx, divide_by_max_length)
    )
    return _to_tokens(seq, ctx, dtype)
