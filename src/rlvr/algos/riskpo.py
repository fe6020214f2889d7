"""RiskPO: bundled Mixed Value-at-Risk advantage (stage: advantage), arXiv 2510.00911.

Official code: RTkenny/RiskPO ``verl/trainer/ppo/core_algos.py``
(``compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking``), ``verl/trainer/ppo/ray_trainer.py``
(bundle ids, the quantile tracker in ``fit``), ``verl/trainer/config/ppo_trainer.yaml`` and
``scripts/run_qwen2.5_1.5b_MVaR_math.sh`` (the defaults below).

1. **Bundles.** Consecutive prompts (groups, in order of first appearance in the batch, i.e. prompt
   order) are bundled ``bundle_size`` at a time (the last bundle may be smaller), as the official
   trainer does before repeating prompts. ``ctx.extras["bundle_ids"]`` (one id per row, constant
   within each group), when given, replaces this.
2. **Papers.** Paper ``j`` of a bundle takes the ``j``-th response (sampling order = row order) of
   every prompt of the bundle; a bundle has ``n = min group size`` papers, and a response beyond
   the ``n``-th of its group gets advantage 0 (official). Paper score ``S = sum of its rewards``.
3. **Quantiles** ``q_a``, ``q_b`` at levels ``alpha`` (``quantile_down``) and ``beta``
   (``quantile_up``): see *Quantile source* below. ``sigma_b`` = unbiased std of the bundle's paper
   scores (1 for a single paper; then also ``q_a = q_b = S``).
4. **Paper advantage** (``eps = 1e-6``)::

       A_R = [(S - q_a)^+ - (S - q_b)^+ + (q_a - q_b)] / (beta - alpha + eps)   (natural_baseline=True)
       A_C = -(q_a - S)^+ / (alpha + eps)
       risk="mixed" (default):  A = (w_mix A_C + A_R) / (w_mix + 1)
       risk="rvar":             A = A_R
       risk="upper":            A = (upper_weight (S - q_b)^+ / (1 - beta + eps) + A_R) / (upper_weight + 1)
       A <- A / (sigma_b + eps)                                                  (norm_by_std=True)

   (official ``use_mixing_risk_measure`` / ``risk_seeking_upper_tail``; the denominators use the
   quantile *levels*, as the official code does).
5. **Credit** (knob ``credit``): ``"std"`` (default) ``A_i = A_p / (sigma_q + eps)`` with
   ``sigma_q`` the unbiased std of the response's question rewards (1 when <= 1e-3 or a single
   response); ``"uniform"`` ``A_i = A_p``; ``"score"`` ``0.5 A_p`` for a response with reward > 0,
   ``1.5 A_p`` otherwise; ``"sum_mean"`` ``A_i = A_p (R_i - mean_q) / sum_{k in paper} (R_k - mean_q(k))``
   (``A_p / m`` when that sum is within 1e-6 of 0).

**Quantile source** (knob ``quantiles``), and the official timing bug. The official trainer keeps a
tracked estimate of the quantiles of *all* paper scores of a batch (pooled over bundles): initialised
at the first batch to its ``torch.quantile`` values, then one SGD step per training step on the
pinball loss, ``q <- q + lr_q * (level - mean(1[S < q]))`` (``lr_q = 0.1``). With
``use_q_track_mode='track'`` the advantage is meant to use it, but the trainer writes the tracked
values into ``batch.meta_info`` *after* ``compute_advantage`` ran on that batch, and every step
builds a new batch, so the advantage never sees them and always falls back to the per-bundle
empirical quantiles; the tracker only feeds logs.

* ``"tracked"`` (default; the paper's quantile tracking): the advantage of step ``t`` uses the
  tracker as it stood after steps ``< t``, the same ``q_a``, ``q_b`` for every bundle; on the first
  step (empty tracker) the per-bundle quantiles, the official fallback. INFERENCE: the order
  "advantage with the previous estimate, then update the estimate with this batch" is the official
  code's intended data flow (two-timescale quantile tracking); the paper's exact schedule was not
  available.
* ``"bundle"``: the per-bundle empirical quantiles of the batch, what the official runs computed.
* ``"mix"``: the mean of the tracked and the per-bundle quantiles (official ``'mix'``; per-bundle
  on the first step).

The tracker is updated in ``prepare(ctx)``, which the trainer calls once per step *after* the
advantage (so the advantage itself is a pure function of the batch and the state), in every mode;
a caller outside the trainer (e.g. the verl adapter) that never calls ``prepare`` gets the
per-bundle quantiles.
It tracks exactly the levels ``alpha`` and ``beta`` (the official grid of 19 levels 0.05..0.95 is
updated level by level, and the levels used are the grid points nearest to ``alpha``/``beta``: the
same values when ``alpha``/``beta`` are multiples of 0.05). ``state_dict()`` =
``{"q": float64 tensor [q_a, q_b] (empty before the first update), "updates": int}``. The official
``use_mean_as_baseline`` option (off in every script) is not implemented.

Defaults (math script): ``bundle_size = 5``, ``alpha = 0.2``, ``beta = 0.9``, ``risk = "mixed"``,
``w_mix = 1.5``, ``credit = "std"``, ``natural_baseline = True``, ``norm_by_std = True``.
Metrics: ``riskpo/q_low``, ``riskpo/q_high`` (mean over bundles of the quantiles used),
``riskpo/tracked`` (1 when the tracker supplied them), ``riskpo/paper_score_mean``,
``riskpo/bundles``, ``riskpo/frac_unassigned``; ``prepare`` reports ``riskpo/track_q_low|high``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.grpo import seq_rewards, to_tokens
from rlvr.algos.groups import group_index
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError

RiskMeasure = Literal["mixed", "rvar", "upper"]
RiskCredit = Literal["std", "uniform", "score", "sum_mean"]
QuantileSource = Literal["tracked", "bundle", "mix"]
RISK_MEASURES: tuple[str, ...] = get_args(RiskMeasure)
RISK_CREDITS: tuple[str, ...] = get_args(RiskCredit)
QUANTILE_SOURCES: tuple[str, ...] = get_args(QuantileSource)
MIN_QUESTION_STD = 1e-3


# --------------------------------------------------------------------------------------------------
# bundles and papers
# --------------------------------------------------------------------------------------------------


def appearance_rank(group_ids: Tensor) -> Tensor:
    """Long ``(B,)``: the rank of each row's group in order of first appearance (prompt order)."""
    dense, k = group_index(group_ids)
    first = torch.full((k,), len(dense), dtype=torch.long).scatter_reduce(
        0, dense.cpu(), torch.arange(len(dense)), reduce="amin"
    )
    rank = torch.empty(k, dtype=torch.long)
    rank[torch.argsort(first)] = torch.arange(k)
    return rank[dense.cpu()]


def bundle_ids_of(group_ids: Tensor, bundle_size: int) -> Tensor:
    """Long ``(B,)``: consecutive groups (prompt order) bundled ``bundle_size`` at a time."""
    return appearance_rank(group_ids) // bundle_size


def bundle_papers(group_ids: Tensor, bundle_ids: Tensor) -> list[Tensor]:
    """Per bundle (in order of first appearance), a long ``(n_papers, n_questions)`` tensor of row indices.

    Column ``k`` is the bundle's ``k``-th question (prompt order); row ``j`` (paper ``j``) holds the
    ``j``-th response of each question; ``n_papers`` is the smallest group of the bundle.
    """
    group_rank = appearance_rank(group_ids)
    bundle_rank = appearance_rank(bundle_ids)
    papers: list[Tensor] = []
    for b in range(int(bundle_rank.max()) + 1 if len(bundle_rank) else 0):
        in_bundle = bundle_rank == b
        questions = torch.unique(group_rank[in_bundle]).tolist()
        columns = [(group_rank == q).nonzero().flatten() for q in questions]
        if any(bool((bundle_rank[col] != b).any()) for col in columns):
            raise ConfigError("advantage 'riskpo': ctx.extras['bundle_ids'] splits a group across bundles")
        n = min(len(col) for col in columns)
        papers.append(torch.stack([col[:n] for col in columns], dim=1))
    return papers


# --------------------------------------------------------------------------------------------------
# risk measures
# --------------------------------------------------------------------------------------------------


def bundle_quantiles(scores: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(q_a, q_b, sigma_b)`` of one bundle's paper scores (linear ``torch.quantile``, unbiased std)."""
    if scores.numel() == 1:
        return scores[0], scores[0], torch.ones((), dtype=scores.dtype)
    q = torch.quantile(scores, torch.tensor([alpha, beta], dtype=scores.dtype))
    return q[0], q[1], scores.std()


def mvar_advantage(
    scores: Tensor,
    q_low: Tensor | float,
    q_high: Tensor | float,
    *,
    alpha: float,
    beta: float,
    risk: RiskMeasure,
    w_mix: float,
    upper_weight: float,
    natural_baseline: bool,
    eps: float,
) -> Tensor:
    """The paper advantage of step 4 of the module docstring (before the ``sigma_b`` division)."""
    check_choice("advantage 'riskpo'", "risk", risk, RISK_MEASURES)
    relu = torch.relu
    rvar = relu(scores - q_low) - relu(scores - q_high)
    if natural_baseline:
        rvar = rvar + (q_low - q_high)
    rvar = rvar / (beta - alpha + eps)
    if risk == "mixed":
        cvar = -relu(q_low - scores) / (alpha + eps)
        return (w_mix * cvar + rvar) / (w_mix + 1.0)
    if risk == "upper":
        upper = relu(scores - q_high) / (1.0 - beta + eps)
        return (upper_weight * upper + rvar) / (upper_weight + 1.0)
    return rvar


def question_stds(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Unbiased std of each row's question rewards, 1 where it is <= 1e-3 or undefined (one response)."""
    dense, k = group_index(group_ids)
    out = torch.ones_like(rewards)
    for g in range(k):
        rows = dense == g
        if int(rows.sum()) > 1:
            std = rewards[rows].std()
            if std > MIN_QUESTION_STD:
                out[rows] = std
    return out


def credit_to_responses(
    paper_adv: Tensor, rows: Tensor, rewards: Tensor, group_ids: Tensor, credit: RiskCredit, eps: float
) -> Tensor:
    """Advantage of each response of the papers ``rows`` (``(n_papers, n_questions)``), same shape."""
    check_choice("advantage 'riskpo'", "credit", credit, RISK_CREDITS)
    adv = paper_adv.unsqueeze(-1).expand(rows.shape)
    r = rewards[rows]
    if credit == "uniform":
        return adv.clone()
    if credit == "score":
        return adv * torch.where(r > 0, 0.5, 1.5).to(adv.dtype)
    if credit == "std":
        return adv / (question_stds(rewards, group_ids)[rows] + eps)
    dense, k = group_index(group_ids)
    means = torch.zeros(k, dtype=rewards.dtype).index_add_(0, dense, rewards) / torch.bincount(dense, minlength=k)
    ratio = r - means[dense][rows]
    total = ratio.sum(-1, keepdim=True)
    share = torch.where(total.abs() > 1e-6, ratio / torch.where(total == 0, 1.0, total), 1.0 / rows.shape[1])
    return adv * share


# --------------------------------------------------------------------------------------------------
# the advantage
# --------------------------------------------------------------------------------------------------


@advantage.register("riskpo", requires=("rewards", "group_ids"))
class RiskPO:
    """RiskPO (arXiv 2510.00911): Mixed Value-at-Risk advantage of bundled "papers", credited to their responses.

    Knobs: ``bundle_size`` (5), ``alpha`` / ``beta`` (quantile levels, 0.2 / 0.9), ``risk`` (mixed |
    rvar | upper), ``w_mix`` (1.5), ``upper_weight`` (1.5), ``natural_baseline`` (True),
    ``norm_by_std`` (True), ``credit`` (std | uniform | score | sum_mean), ``quantiles`` (tracked |
    bundle | mix; ``bundle`` = what the official code ran), ``lr_q`` (0.1), ``eps`` (1e-6).
    """

    name = "riskpo"

    def __init__(
        self,
        *,
        bundle_size: int = 5,
        alpha: float = 0.2,
        beta: float = 0.9,
        risk: RiskMeasure = "mixed",
        w_mix: float = 1.5,
        upper_weight: float = 1.5,
        natural_baseline: bool = True,
        norm_by_std: bool = True,
        credit: RiskCredit = "std",
        quantiles: QuantileSource = "tracked",
        lr_q: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_positive(who, bundle_size=bundle_size, lr_q=lr_q)
        check_choice(who, "risk", risk, RISK_MEASURES)
        check_choice(who, "credit", credit, RISK_CREDITS)
        check_choice(who, "quantiles", quantiles, QUANTILE_SOURCES)
        if not 0.0 < alpha < beta < 1.0:
            raise ConfigError(f"{who}: need 0 < alpha < beta < 1, got alpha={alpha}, beta={beta}")
        if w_mix < 0 or upper_weight < 0 or eps < 0:
            raise ConfigError(f"{who}: w_mix, upper_weight and eps must be >= 0")
        self.bundle_size = int(bundle_size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.risk = risk
        self.w_mix = float(w_mix)
        self.upper_weight = float(upper_weight)
        self.natural_baseline = bool(natural_baseline)
        self.norm_by_std = bool(norm_by_std)
        self.credit = credit
        self.quantiles = quantiles
        self.lr_q = float(lr_q)
        self.eps = float(eps)
        self.tracked: Tensor | None = None
        self.updates = 0
        self.metrics: dict[str, float] = {}

    def _papers(self, ctx: AlgoContext) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Float64 rewards and group ids (on the CPU) and the row indices of every bundle's papers."""
        who = f"advantage '{self.name}'"
        rewards = seq_rewards(ctx, who).detach().to(torch.float64).cpu()
        assert ctx.group_ids is not None
        group_ids = ctx.group_ids.cpu()
        given = ctx.extras.get("bundle_ids")
        if given is not None:
            bundles = torch.as_tensor(given).cpu()
            if bundles.shape != group_ids.shape:
                raise ConfigError(f"{who}: ctx.extras['bundle_ids'] has shape {tuple(bundles.shape)}, need ({len(group_ids)},)")
        else:
            bundles = bundle_ids_of(group_ids, self.bundle_size)
        return rewards, group_ids, bundle_papers(group_ids, bundles)

    def _quantiles(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        q_low, q_high, std = bundle_quantiles(scores, self.alpha, self.beta)
        if self.quantiles == "bundle" or self.tracked is None:
            return q_low, q_high, std, False
        t_low, t_high = self.tracked[0], self.tracked[1]
        if self.quantiles == "tracked":
            return t_low, t_high, std, True
        return (q_low + t_low) / 2, (q_high + t_high) / 2, std, True

    def __call__(self, ctx: AlgoContext) -> Tensor:
        rewards, group_ids, papers = self._papers(ctx)
        adv = torch.zeros_like(rewards)
        assigned = torch.zeros(len(rewards), dtype=torch.bool)
        used_low: list[float] = []
        used_high: list[float] = []
        tracked = False
        for rows in papers:
            scores = rewards[rows].sum(-1)
            q_low, q_high, std, tracked = self._quantiles(scores)
            paper_adv = mvar_advantage(
                scores,
                q_low,
                q_high,
                alpha=self.alpha,
                beta=self.beta,
                risk=self.risk,
                w_mix=self.w_mix,
                upper_weight=self.upper_weight,
                natural_baseline=self.natural_baseline,
                eps=self.eps,
            )
            if self.norm_by_std:
                paper_adv = paper_adv / (std + self.eps)
            adv[rows] = credit_to_responses(paper_adv, rows, rewards, group_ids, self.credit, self.eps)
            assigned[rows] = True
            used_low.append(float(q_low))
            used_high.append(float(q_high))
        all_scores = torch.cat([rewards[rows].sum(-1) for rows in papers]) if papers else rewards[:0]
        self.metrics = {
            f"{self.name}/q_low": sum(used_low) / max(len(used_low), 1),
            f"{self.name}/q_high": sum(used_high) / max(len(used_high), 1),
            f"{self.name}/tracked": float(tracked),
            f"{self.name}/paper_score_mean": float(all_scores.mean()) if all_scores.numel() else 0.0,
            f"{self.name}/bundles": float(len(papers)),
            f"{self.name}/frac_unassigned": float((~assigned).double().mean()) if len(assigned) else 0.0,
        }
        mask = ctx.response_mask
        dtype = seq_rewards(ctx, f"advantage '{self.name}'").dtype  # returned in the rewards' dtype, as grpo
        return to_tokens(adv.to(device=mask.device, dtype=dtype), mask)

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Update the tracked quantiles with this step's paper scores (pooled over bundles)."""
        rewards, _, papers = self._papers(ctx)
        if not papers:
            return {}
        scores = torch.cat([rewards[rows].sum(-1) for rows in papers])
        levels = torch.tensor([self.alpha, self.beta], dtype=torch.float64)
        if self.tracked is None:
            self.tracked = torch.quantile(scores, levels)
        else:
            below = (scores.unsqueeze(0) < self.tracked.unsqueeze(1)).double().mean(dim=1)
            self.tracked = self.tracked + self.lr_q * (levels - below)
        self.updates += 1
        return {f"{self.name}/track_q_low": float(self.tracked[0]), f"{self.name}/track_q_high": float(self.tracked[1])}

    def state_dict(self) -> dict[str, Any]:
        q = self.tracked.clone() if self.tracked is not None else torch.zeros(0, dtype=torch.float64)
        return {"q": q, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = state.get("q")
        self.tracked = q.clone().to(torch.float64) if isinstance(q, Tensor) and q.numel() == 2 else None
        self.updates = int(state.get("updates", 0))
