"""PACS: implicit actor-critic coupling via supervised learning (stage: policy_loss), arXiv 2509.02522.

Official code: ritzz-ai/PACS ``src/pacs/pacs_core_algos.py`` (``compute_reward``,
``compute_rloo_outcome_advantage``, ``compute_weight``, ``compute_pacs_loss``),
``src/pacs/pacs_actor.py::update_policy`` and ``scripts/pacs/pacs_beta_1.0.sh``. The PPO surrogate
is replaced by a binary classification of each response's verifier outcome from an implicit score:

* Score, differentiable through ``log pi`` (knob ``score``):
  ``"log_ratio_sum"`` (official ``reward_method='1'``, default): ``psi_i = beta * sum_t (log pi - log pi_old)``;
  ``"mean_logprob"`` (``'2'``): ``psi_i = beta * mean_t log pi``. Sums and means run over the valid
  tokens (the official sums the whole padded row, whose padding holds 0 with verl's remove-padding).
* Group-relative logit (knob ``baseline``): ``"rloo"`` (default)
  ``psi_hat_i = psi_i - 1/(G-1) sum_{j != i} psi_j``; ``"grpo"`` ``(psi_i - mean_g) / (std_g + eps)``
  (unbiased std; ``norm_by_std=False`` drops the division); ``"none"``: ``psi_hat = psi``. Gradients
  flow through the baselines, as in the official code; through a zero std (all ``psi`` of a group
  equal, e.g. at the first mini-batch) the gradient is 0, as ``torch.std``'s backward gives. A singleton group has no baseline (its
  ``psi_hat = psi``; the official RLOO would divide by 0).
* Loss: ``mean_i w_i * BCEWithLogits(psi_hat_i, y_i)`` over the micro-batch's responses, with the
  label ``y`` = ``ctx.correct`` (knob ``label="correct"``; ``"reward"`` uses ``ctx.rewards``, which
  must lie in [0, 1]).
* Weights (knob ``weight``): ``"balanced"`` (official ``use_weight=True, weight_mode='question'``,
  default): in each group with more than one label value, sklearn's balanced class weights
  ``w_c = G / (K * n_c)`` (``K`` label values, ``n_c`` responses with label ``c``; ``G / (2 n_c)``
  for 0/1 labels); 1 elsewhere. ``"none"``: all 1. ``"only_positive"`` / ``"only_negative"``:
  ``w = 1[y = 1]`` / ``1[y = 0]``.

At the first mini-batch ``psi = 0`` (``pi = pi_old``), so the gradient ``(sigmoid(psi_hat) - y) *
grad psi_hat`` is a REINFORCE push with advantage ``y - 1/2`` through the RLOO-centred log-ratio.
Defaults ``beta = 1`` (``pacs_beta_1.0.sh``; ``_2.0.sh`` uses 2), RLOO, balanced weights.

**Micro-batches.** The loss is a mean over *sequences*, returned reduced (``LossOutput.loss``) and
scaled by the micro-batch's share of the mini-batch's rows (``ctx.micro_batch_fraction``), which is
the official ``loss / gradient_accumulation``; token weights and ``agg_mode`` do not apply. The
baselines and weights need every group whole in one micro-batch (the official code asserts it):
``prepare(ctx)`` records the full group sizes of the rollout batch and a micro-batch that holds part
of a group raises ConfigError. Use ``train.shuffle=groups`` with ``train.mini_batch_size`` and
``train.micro_batch_size`` multiples of ``rollout.group_size``.

Metrics: ``pacs/loss`` (before the share), ``pacs/score_mean`` (``psi``), ``pacs/logit_pos`` /
``pacs/logit_neg`` (mean ``psi_hat`` of correct / wrong responses), ``pacs/accuracy`` (fraction with
``(psi_hat > 0) == (y > 1/2)``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.grpo import group_baseline
from rlvr.algos.groups import WHOLE_GROUPS_FIX, group_count, group_index, group_sizes, group_sum, require_whole_groups
from rlvr.algos.registry import policy_loss
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError

PacsScore = Literal["log_ratio_sum", "mean_logprob"]
PacsBaseline = Literal["rloo", "grpo", "none"]
PacsWeight = Literal["balanced", "none", "only_positive", "only_negative"]
PacsLabel = Literal["correct", "reward"]
PACS_SCORES: tuple[str, ...] = get_args(PacsScore)
PACS_BASELINES: tuple[str, ...] = get_args(PacsBaseline)
PACS_WEIGHTS: tuple[str, ...] = get_args(PacsWeight)
PACS_LABELS: tuple[str, ...] = get_args(PacsLabel)


def implicit_score(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, beta: float, score: PacsScore) -> Tensor:
    """``psi`` per response, ``(B,)`` with gradient through ``logprobs`` (padding may hold NaN)."""
    check_choice("policy_loss 'pacs'", "score", score, PACS_SCORES)
    valid = mask > 0
    lp = torch.where(valid, logprobs, torch.zeros_like(logprobs))
    if score == "mean_logprob":
        return beta * lp.sum(-1) / valid.sum(-1).clamp(min=1).to(lp.dtype)
    old = torch.where(valid, old_logprobs.detach().to(lp.dtype), torch.zeros_like(lp))
    return beta * (lp - old).sum(-1)


def relative_logit(psi: Tensor, group_ids: Tensor, baseline: PacsBaseline, norm_by_std: bool, eps: float) -> Tensor:
    """``psi_hat``: ``psi`` minus its RLOO / group-mean baseline (optionally over the group std), ``(B,)``."""
    check_choice("policy_loss 'pacs'", "baseline", baseline, PACS_BASELINES)
    if baseline == "none":
        return psi
    if baseline == "rloo":
        count = group_count(group_ids).to(psi.dtype)
        others = (group_sum(psi, group_ids) - psi) / (count - 1).clamp(min=1.0)
        return torch.where(count > 1, psi - others, psi)
    centred = psi - group_baseline(psi, group_ids)
    return centred / (safe_group_std(psi, group_ids) + eps) if norm_by_std else centred


def safe_group_std(values: Tensor, group_ids: Tensor) -> Tensor:
    """Unbiased group std (1 for a singleton) whose gradient is 0, not NaN, where a group's values are all equal.

    At the first mini-batch every ``psi`` is exactly 0; ``torch.std``'s backward (the official code)
    gives 0 there, while a plain ``sqrt`` of the variance (``groups.group_std``) gives NaN.
    """
    count = group_count(group_ids).to(values.dtype)
    centred = values - group_sum(values, group_ids) / count
    var = group_sum(centred**2, group_ids) / (count - 1).clamp(min=1.0)
    tiny = torch.finfo(values.dtype).tiny
    std = torch.where(var > 0, var.clamp(min=tiny).sqrt(), torch.zeros_like(var))
    return torch.where(count > 1, std, torch.ones_like(std))


def balanced_weights(labels: Tensor, group_ids: Tensor) -> Tensor:
    """sklearn "balanced" class weights ``G / (K n_c)`` within each group that has ``K > 1`` label values; else 1."""
    weights = torch.ones_like(labels, dtype=torch.float64)
    dense, k = group_index(group_ids)
    for g in range(k):
        rows = (dense == g).nonzero().flatten()
        values, inverse, counts = torch.unique(labels[rows], return_inverse=True, return_counts=True)
        if values.numel() > 1:
            weights[rows] = rows.numel() / (values.numel() * counts[inverse].to(torch.float64))
    return weights


def pacs_weights(labels: Tensor, group_ids: Tensor, weight: PacsWeight) -> Tensor:
    """Per-response BCE weights for the ``weight`` mode, float64 ``(B,)``."""
    check_choice("policy_loss 'pacs'", "weight", weight, PACS_WEIGHTS)
    if weight == "balanced":
        return balanced_weights(labels, group_ids)
    if weight == "only_positive":
        return (labels == 1).to(torch.float64)
    if weight == "only_negative":
        return (labels == 0).to(torch.float64)
    return torch.ones_like(labels, dtype=torch.float64)


@policy_loss.register("pacs", requires=("logprobs", "old_logprobs", "correct", "rewards", "group_ids"))
class Pacs:
    """PACS (arXiv 2509.02522): BCE of the verifier label on the group-relative implicit score ``beta * sum log(pi/pi_old)``.

    Knobs: ``beta`` (1.0), ``score`` (log_ratio_sum | mean_logprob), ``baseline`` (rloo | grpo |
    none), ``norm_by_std`` (grpo baseline only, True), ``eps`` (1e-6), ``weight`` (balanced | none |
    only_positive | only_negative), ``label`` (correct | reward). Needs whole groups per micro-batch
    (``train.shuffle=groups``). Returns ``LossOutput(per_token=None, loss=...)``.
    """

    name = "pacs"

    def __init__(
        self,
        *,
        beta: float = 1.0,
        score: PacsScore = "log_ratio_sum",
        baseline: PacsBaseline = "rloo",
        norm_by_std: bool = True,
        eps: float = 1e-6,
        weight: PacsWeight = "balanced",
        label: PacsLabel = "correct",
    ) -> None:
        who = f"policy_loss '{self.name}'"
        check_positive(who, beta=beta)
        check_choice(who, "score", score, PACS_SCORES)
        check_choice(who, "baseline", baseline, PACS_BASELINES)
        check_choice(who, "weight", weight, PACS_WEIGHTS)
        check_choice(who, "label", label, PACS_LABELS)
        if eps < 0:
            raise ConfigError(f"{who}: eps must be >= 0, got {eps}")
        self.beta = float(beta)
        self.score = score
        self.baseline = baseline
        self.norm_by_std = bool(norm_by_std)
        self.eps = float(eps)
        self.weight = weight
        self.label = label
        self.group_sizes: dict[Any, int] | None = None

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Record the full size of every group of the rollout batch (to detect split groups)."""
        ctx.require("group_ids", who=f"policy_loss '{self.name}'")
        assert ctx.group_ids is not None
        self.group_sizes = group_sizes(ctx.group_ids)
        return {}

    def labels(self, ctx: AlgoContext) -> Tensor:
        who = f"policy_loss '{self.name}'"
        if self.label == "correct":
            ctx.require("correct", who=who)
            assert ctx.correct is not None
            return ctx.correct.to(torch.float64)
        ctx.require("rewards", who=who)
        assert ctx.rewards is not None
        labels = ctx.rewards.detach().to(torch.float64)
        if bool(((labels < 0) | (labels > 1)).any()):
            raise ConfigError(f"{who}: label='reward' needs rewards in [0, 1] (BCE targets); use label='correct'")
        return labels

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        who = f"policy_loss '{self.name}'"
        ctx.require("logprobs", "old_logprobs", "group_ids", who=who)
        assert ctx.logprobs is not None and ctx.old_logprobs is not None and ctx.group_ids is not None
        require_whole_groups(
            ctx.group_ids, self.group_sizes, who, "PACS compares each response's score with the rest of its group", WHOLE_GROUPS_FIX
        )
        labels = self.labels(ctx)
        psi = implicit_score(ctx.logprobs, ctx.old_logprobs, ctx.response_mask, self.beta, self.score)
        logits = relative_logit(psi, ctx.group_ids, self.baseline, self.norm_by_std, self.eps)
        weights = pacs_weights(labels, ctx.group_ids, self.weight).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), weight=weights)
        detached = logits.detach()
        positive = labels > 0.5
        metrics = {
            "pacs/loss": float(loss.detach()),
            "pacs/score_mean": float(psi.detach().mean()),
            "pacs/logit_pos": float(detached[positive].mean()) if bool(positive.any()) else 0.0,
            "pacs/logit_neg": float(detached[~positive].mean()) if bool((~positive).any()) else 0.0,
            "pacs/accuracy": float(((detached > 0) == positive).double().mean()),
        }
        return LossOutput(per_token=None, loss=loss * float(ctx.micro_batch_fraction), metrics=metrics)
