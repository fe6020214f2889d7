"""The one object every method reads: rewards, groups, masks, log-probs, entropies, step, state.

Shapes: ``B`` responses in the (micro-)batch, ``T`` padded response length. Token tensors are
``(B, T)`` and aligned with ``response_mask`` (1.0 on real response tokens, 0.0 on padding).
Sequence tensors are ``(B,)``. The trainer also puts the decoded ``responses`` (list of str) and
the ``problems`` (list of :class:`rlvr.tasks.base.Problem`) of the rollout batch in ``extras``, and
``extras["row_index"]`` = ``arange(B)`` over the rollout batch, so that a micro-batch (``select``)
knows which rollout rows it holds (batch-scope token selections such as Clip-Cov's).

No-grad per-token fields of the policy forward (``rlvr.ops.forward``): ``minp_logprobs`` (log-prob
of the sampled token under the min-p proxy, Lp-Reg), ``self_certainty`` (``logsumexp(z) - mean_v z``,
UCAS) and ``raw_logit`` (pre-temperature logit of the sampled token, UCAS); ``old_*`` are the
rollout policy's values.

Aggregation over the *global* batch: when a mini-batch is split into micro-batches for gradient
accumulation, the trainer sets ``global_num_tokens`` / ``global_num_seqs`` to the mini-batch totals.
``ctx.aggregate`` then divides by those totals, so the micro-batch losses add up exactly to the loss
of the whole mini-batch (verl issue #5625 is the bug this avoids). ``micro_batch_fraction`` is the
share of sequences in this micro-batch, for regularizers that are non-linear in a batch statistic
(e.g. SIREN's squared distance to its anchor, computed per micro-batch as in the official code).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from rlvr.errors import MissingInputError


@dataclass
class AlgoContext:
    """Everything a reward shaper, advantage, token weight, policy loss or regularizer may need."""

    response_mask: Tensor
    rewards: Tensor | None = None
    group_ids: Tensor | None = None
    correct: Tensor | None = None
    truncated: Tensor | None = None
    logprobs: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    entropy: Tensor | None = None
    old_entropy: Tensor | None = None
    top_p_entropy: Tensor | None = None
    old_top_p_entropy: Tensor | None = None
    minp_logprobs: Tensor | None = None
    old_minp_logprobs: Tensor | None = None
    self_certainty: Tensor | None = None
    old_self_certainty: Tensor | None = None
    raw_logit: Tensor | None = None
    old_raw_logit: Tensor | None = None
    advantages: Tensor | None = None
    prompt_ids: list[str] | None = None
    step: int = 0
    max_response_length: int | None = None
    agg_mode: str = "token-mean"
    global_num_tokens: float | None = None
    global_num_seqs: float | None = None
    micro_batch_fraction: float = 1.0
    generator: torch.Generator | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.response_mask.shape[0])

    @property
    def lengths(self) -> Tensor:
        """Number of valid response tokens of each sequence, ``(B,)`` float."""
        return self.response_mask.sum(dim=-1)

    @property
    def padded_length(self) -> int:
        """``max_response_length`` if set, else the padded width ``T`` (verl's L for Dr.GRPO)."""
        return int(self.max_response_length or self.response_mask.shape[-1])

    def require(self, *names: str, who: str = "this method") -> None:
        """Raise MissingInputError naming every missing field ``who`` needs."""
        missing = [n for n in names if getattr(self, n, None) is None]
        if missing:
            raise MissingInputError(
                f"{who} needs ctx.{', ctx.'.join(missing)}; fill them in the AlgoContext "
                "(the trainer does this when the method is registered with requires=...)"
            )

    def aggregate(self, per_token: Tensor, mask: Tensor | None = None, mode: str | None = None) -> Tensor:
        """Reduce a ``(B, T)`` loss to a scalar with this context's mode and global normalizers."""
        from rlvr.algos.aggregation import aggregate

        return aggregate(
            per_token,
            self.response_mask if mask is None else mask,
            mode or self.agg_mode,
            num_tokens=self.global_num_tokens,
            num_seqs=self.global_num_seqs,
            norm_length=self.padded_length,
        )

    def select(self, index: Tensor) -> "AlgoContext":
        """The sub-context of the rows ``index`` (a long tensor), e.g. one micro-batch."""
        updates: dict[str, Any] = {}
        batch = self.batch_size
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == batch:
                updates[f.name] = value[index]
            elif isinstance(value, list) and len(value) == batch:
                updates[f.name] = [value[i] for i in index.tolist()]
        updates["extras"] = {
            k: (v[index] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == batch else v)
            for k, v in self.extras.items()
        }
        return replace(self, **updates)


@dataclass
class LossOutput:
    """A policy loss: per-token losses (aggregated by the trainer) or an already-reduced ``loss``."""

    per_token: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)
    loss: Tensor | None = None


@dataclass
class RegularizerOutput:
    """A regularizer's scalar contribution for this (micro-)batch and its metrics."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TokenWeightOutput:
    """Per-token multiplicative weights on the policy loss.

    ``loss_mask``, when given, replaces ``response_mask`` in the aggregation (so a token selection
    such as forking tokens also changes the denominator, as in the official 80/20 code).
    """

    weights: Tensor
    loss_mask: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def kept_rows_mask(ctx: AlgoContext, kept: Tensor | None, who: str, what: str) -> Tensor:
    """``(B, T)`` mask of the valid tokens of the micro-batch rows whose rollout-batch row is ``kept``.

    ``kept`` (bool, one per rollout-batch row) is chosen by a method's ``prepare`` hook on the whole
    batch; ``ctx.extras["row_index"]`` maps each micro-batch row to its rollout-batch row. ``what``
    (e.g. "filters groups of the whole rollout batch") completes the error when either is missing.
    """
    rows = ctx.extras.get("row_index")
    if kept is None or rows is None:
        raise MissingInputError(
            f"{who} {what}: it needs its prepare(ctx) hook run first and ctx.extras['row_index'] (the trainer provides both)"
        )
    device, dtype = ctx.response_mask.device, ctx.response_mask.dtype
    return kept.to(device)[rows.to(device)].unsqueeze(-1).to(dtype) * (ctx.response_mask > 0).to(dtype)
