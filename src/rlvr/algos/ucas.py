"""UCAS, uncertainty-aware advantage shaping (arXiv 2510.10649) (stage: advantage).

Official code xvolcano02/UCAS (``verl/trainer/ppo/core_algos.py`` ``compute_ucas_advantage``,
``verl/utils/torch_functional.py`` ``self_certainty_from_logits``, ``verl/workers/actor/dp_actor.py``),
read from the rollout policy:

1. Token self-certainty ``c_{i,t} = logsumexp(z) - mean_v z_v`` (temperature-scaled logits;
   ``ctx.old_self_certainty``, ``rlvr.ops.certainty``). Response certainty ``C_i = sum_t c_{i,t}`` (a
   **sum**, so longer responses score higher; ``certainty_agg="mean"`` averages instead).
2. Within each prompt group, ``C_hat_i = (C_i - mean_g C) / (std_g C + eps)`` (unbiased std; only
   centred if ``norm_certainty_by_std=False``, official ``norm_adv_by_std_in_grpo``). A group of one
   gets ``C_hat = 0``.
3. ``A`` = base advantage (``base``, default ``"grpo"``). Modifier ``M = exp(-beta_pos C_hat)`` where
   ``A > 0`` (confident correct answers are pushed less), else ``exp(beta_neg C_hat)`` (confident wrong
   answers are pushed down more).
4. Token penalty: ``z_hat`` = raw (pre-temperature) logit of the sampled token (``ctx.old_raw_logit``),
   min-max normalised to [0, 1] over all valid tokens of the batch (``logit_norm="batch"``; a constant
   pool gives 0).
5. ``A_tilde = A M - penalty * z_hat``; where ``A M > 0`` it is clamped at >= 0 so a positive
   advantage never turns negative. Tokens with ``A = 0`` (all-correct / all-wrong groups) get
   ``-penalty * z_hat``.

Constants (hard-coded officially, knobs here): ``beta_pos = 0.25``, ``beta_neg = 0.35``,
``penalty = 0.05``, ``eps = 1e-6`` (official commit b122ff2). Note: another snapshot of the official
repo (commit f8db352) differs: there ``beta_neg = 0.25``, ``penalty = 0.01``, the response certainty
is a per-token *mean* of ``log(1/V) - log p(o_t)``, the min-max is per response
(``logit_norm="row"``), and there is no clamp. We follow b122ff2; ``certainty_agg="mean"`` and
``logit_norm="row"`` cover part of the other reading.

The modulation composes with any base estimator whose inputs are among ``rewards, group_ids`` (the
sign test and ``A M`` are per token, so token-level bases work too). The last call's statistics are
kept in ``self.metrics``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.groups import group_count, group_mean, group_std
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice
from rlvr.errors import ConfigError

UCAS_REQUIRES = ("rewards", "group_ids", "old_self_certainty", "old_raw_logit")
CertaintyAgg = Literal["sum", "mean"]
LogitNorm = Literal["batch", "row"]
CERTAINTY_AGGS: tuple[str, ...] = get_args(CertaintyAgg)
LOGIT_NORMS: tuple[str, ...] = get_args(LogitNorm)
RANGE_EPS = 1e-8


def response_certainty(self_certainty: Tensor, response_mask: Tensor, agg: CertaintyAgg = "sum") -> Tensor:
    """``C_i``: sum (or mean) of the valid tokens' self-certainty, ``(B,)`` float64."""
    check_choice("advantage 'ucas'", "certainty_agg", agg, CERTAINTY_AGGS)
    valid = response_mask > 0
    c = torch.where(valid, self_certainty.double(), torch.zeros((), dtype=torch.float64, device=valid.device))
    total = c.sum(dim=-1)
    if agg == "sum":
        return total
    return total / valid.sum(dim=-1).clamp_min(1).double()


def group_zscore(values: Tensor, group_ids: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """``(x - mean_g) / (std_g + eps)`` (or ``x - mean_g``) within groups; 0 for singleton groups."""
    centred = values - group_mean(values, group_ids)
    if norm_by_std:
        centred = centred / (group_std(values, group_ids, unbiased=True) + eps)
    return torch.where(group_count(group_ids) > 1, centred, torch.zeros_like(centred))


def minmax_normalise(values: Tensor, response_mask: Tensor, scope: LogitNorm = "batch") -> Tensor:
    """Min-max to [0, 1] over the valid tokens (of the batch, or of each row); 0 for a constant pool / padding."""
    check_choice("advantage 'ucas'", "logit_norm", scope, LOGIT_NORMS)
    valid = response_mask > 0
    x = values.double()
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
    if scope == "batch":
        lo = torch.where(valid, x, inf).min()
        hi = torch.where(valid, x, -inf).max()
    else:
        lo = torch.where(valid, x, inf).min(dim=-1, keepdim=True).values
        hi = torch.where(valid, x, -inf).max(dim=-1, keepdim=True).values
    span = hi - lo
    span = torch.where(torch.isfinite(span) & (span >= RANGE_EPS), span, torch.ones_like(span))
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    return torch.where(valid, (x - lo) / span, torch.zeros_like(x))


@advantage.register("ucas", requires=UCAS_REQUIRES)
class UCAS(WrapsBase):
    """UCAS (arXiv 2510.10649): ``A exp(-/+ beta C_hat) - penalty * z_hat``, positives clamped at 0.

    Knobs: ``beta_pos`` (0.25), ``beta_neg`` (0.35), ``penalty`` (0.05), ``certainty_agg`` (``"sum"`` |
    ``"mean"``), ``norm_certainty_by_std`` (True), ``logit_norm`` (``"batch"`` | ``"row"``), ``eps``
    (1e-6), ``base`` (``"grpo"``) and ``base_kwargs``.
    """

    name = "ucas"

    def __init__(
        self,
        *,
        beta_pos: float = 0.25,
        beta_neg: float = 0.35,
        penalty: float = 0.05,
        certainty_agg: CertaintyAgg = "sum",
        norm_certainty_by_std: bool = True,
        logit_norm: LogitNorm = "batch",
        eps: float = 1e-6,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        if certainty_agg not in CERTAINTY_AGGS:
            raise ConfigError(f"{who}: unknown certainty_agg '{certainty_agg}'; valid: {', '.join(CERTAINTY_AGGS)}")
        if logit_norm not in LOGIT_NORMS:
            raise ConfigError(f"{who}: unknown logit_norm '{logit_norm}'; valid: {', '.join(LOGIT_NORMS)}")
        if eps < 0:
            raise ConfigError(f"{who}: eps must be >= 0, got {eps}")
        self.beta_pos = float(beta_pos)
        self.beta_neg = float(beta_neg)
        self.penalty = float(penalty)
        self.certainty_agg = certainty_agg
        self.norm_certainty_by_std = bool(norm_certainty_by_std)
        self.logit_norm = logit_norm
        self.eps = float(eps)
        self.base = build_base_component(advantage, base, base_kwargs, UCAS_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        ctx.require(*UCAS_REQUIRES, who=f"advantage '{self.name}'")
        assert ctx.group_ids is not None and ctx.old_self_certainty is not None and ctx.old_raw_logit is not None
        mask = ctx.response_mask
        base = self.base(ctx)
        certainty = response_certainty(ctx.old_self_certainty, mask, self.certainty_agg)
        c_hat = group_zscore(certainty, ctx.group_ids, norm_by_std=self.norm_certainty_by_std, eps=self.eps)
        c_tok = c_hat.to(device=base.device).unsqueeze(-1)
        adv = base.double()
        modifier = torch.where(adv > 0, torch.exp(-self.beta_pos * c_tok), torch.exp(self.beta_neg * c_tok))
        scaled = adv * modifier
        z_hat = minmax_normalise(ctx.old_raw_logit, mask, self.logit_norm)
        shaped = scaled - self.penalty * z_hat
        shaped = torch.where(scaled > 0, shaped.clamp_min(0.0), shaped)
        valid = mask > 0
        shaped = torch.where(valid, shaped, torch.zeros_like(shaped))
        self.metrics = {
            f"{self.name}/certainty_mean": float(certainty.mean()) if certainty.numel() else 0.0,
            f"{self.name}/modifier_mean": float(modifier[valid].mean()) if bool(valid.any()) else 0.0,
            f"{self.name}/penalty_mean": float((self.penalty * z_hat)[valid].mean()) if bool(valid.any()) else 0.0,
        }
        return shaped.to(base.dtype)
