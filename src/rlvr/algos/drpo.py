"""DRPO: Decoupled Reward Policy Optimization (stage: policy_loss), arXiv 2510.04474.

Code: Optimization-AI/DRPO ``verl/verl/trainer/ppo/core_algos.compute_policy_loss_drpo`` and
``scripts/train/run_drpo_1.5b_8k.sh``. A DisCO-style discriminative objective whose length weight
is confined to the positive (correct) responses; no PPO clipping, no advantages.

* Score (differentiable): ``s_i = 1/|o_i| sum_t log pi(o_{i,t})``.
* Questions: the groups of ``group_ids``; only those with at least one correct and one incorrect
  response are *valid* (the code uses ``reward == 1`` / ``reward == 0``; we use ``ctx.correct``,
  identical for 0/1 verifiers and robust to reward shaping).
* Length weight of a positive: ``w_i = exp((1 - L_i / L_max) / lam)``, ``L_max`` = the padded
  response length (``ctx.padded_length`` = ``max_response_length``).
* Per valid question ``q``::

      J_q = sum_{i in pos} w_i (s_i - tau * N_q) / sum_{i in pos} w_i,
      N_q = S_q / sg(S_q),   S_q = sum_{j in neg} exp(s_j / tau - sg(max_j s_j / tau))

  ``N_q`` is the code's ``x / x.detach()`` trick: its value is 1 (up to eps) and its gradient is
  that of ``log sum_{j in neg} exp(s_j / tau)``, so ``J_q`` has the gradient of
  ``mean_w(s_pos) - tau * log sum_neg exp(s / tau)`` while its value is ``mean_w(s_pos) - tau``.
* Loss: ``-1/N_Q sum_{valid q} J_q + sg[max(beta (KL - delta), 0)] * KL`` with ``N_Q`` = **all**
  questions (valid or not) and ``KL = mean over tokens of (log pi_old - log pi)``
  (``kl_type="kl"``, the script's ``ppo_kl_type``; ``"low_var_kl"``: ``mean(r - 1 - log r)``).

Defaults: ``lam = 0.1`` (``Lambda``), ``tau = 10``, ``beta = 1e3``, ``delta = 1e-4``.

**Micro-batches.** The trainer calls the loss once per micro-batch and sums the (already reduced)
losses. Each micro-batch's value is scaled by its share ``f`` of the mini-batch's sequences
(``ctx.micro_batch_fraction``), which is what verl's gradient accumulation does. When every
micro-batch holds whole groups of equal size, ``f / N_Q(micro) = 1 / N_Q(mini-batch)``, so the
question term summed over micro-batches is exactly the mini-batch objective; the KL term is, as in
verl, computed per micro-batch. A question split across micro-batches cannot be evaluated (its
positives and negatives are apart): ``prepare(ctx)`` records the full group sizes of the rollout
batch, and ``split_groups="error"`` (default) raises when a micro-batch holds part of a group;
``split_groups="present"`` instead treats each group's rows present in the micro-batch as a
question of their own (an approximation). The trainer currently shuffles *rows* into mini-batches,
so DRPO needs ``train.mini_batch_size`` = ``train.micro_batch_size`` = the whole rollout batch, or a
group-aware shuffle in the trainer (reported to the lead). The official code likewise assumes
every question's responses are in one gathered micro-batch (it reshapes by uid).

The loss is returned already reduced (``LossOutput.loss``), so token weights have no effect on it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.groups import group_index, group_sizes, require_whole_groups
from rlvr.algos.registry import policy_loss
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError

DrpoKlType = Literal["kl", "low_var_kl"]
SplitPolicy = Literal["error", "present"]
KL_TYPES: tuple[str, ...] = get_args(DrpoKlType)
SPLIT_POLICIES: tuple[str, ...] = get_args(SplitPolicy)


def sequence_scores(logprobs: Tensor, mask: Tensor) -> Tensor:
    """``s_i = mean_t log pi`` over valid tokens (padding may hold NaN), ``(B,)`` with gradient."""
    valid = mask > 0
    clean = torch.where(valid, logprobs, torch.zeros_like(logprobs))
    return (clean * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def kl_estimate(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, kl_type: DrpoKlType) -> Tensor:
    """Token-mean of ``log pi_old - log pi`` (``kl``) or ``r - 1 - log r`` (``low_var_kl``)."""
    check_choice("policy_loss 'drpo'", "kl_type", kl_type, KL_TYPES)
    valid = mask > 0
    neg_kl = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))
    per_token = -neg_kl if kl_type == "kl" else torch.exp(neg_kl) - 1.0 - neg_kl
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def valid_questions(correct: Tensor, group_ids: Tensor) -> Tensor:
    """Per group (dense order of ``group_index``): at least one correct and one incorrect response."""
    dense, k = group_index(group_ids)
    pos = torch.zeros(k, dtype=torch.long, device=dense.device).index_add_(0, dense, correct.bool().long())
    size = torch.zeros(k, dtype=torch.long, device=dense.device).index_add_(0, dense, torch.ones_like(dense))
    return (pos > 0) & (pos < size)


def drpo_questions(
    scores: Tensor, lengths: Tensor, correct: Tensor, group_ids: Tensor, max_len: float, lam: float, tau: float
) -> tuple[Tensor, Tensor, int]:
    """``sum_{valid q} J_q`` (with gradient), the valid-question mask over groups, and the number of groups."""
    dense, k = group_index(group_ids)
    pos = correct.bool()
    valid = valid_questions(correct, group_ids)
    total = scores.sum() * 0.0
    eps = torch.finfo(scores.dtype).eps
    for q in valid.nonzero().flatten().tolist():
        rows = dense == q
        p, n = rows & pos, rows & ~pos
        neg = scores[n] / tau
        shifted = torch.exp(neg - neg.max().detach()).sum()
        unit = shifted / (shifted.detach() + eps)
        weight = torch.exp((1.0 - lengths[p] / max_len) / lam).to(scores.dtype)
        total = total + (weight * (scores[p] - tau * unit)).sum() / weight.sum()
    return total, valid, k


@policy_loss.register("drpo", requires=("logprobs", "old_logprobs", "correct", "group_ids"))
class Drpo:
    """DRPO (arXiv 2510.04474): length-weighted positives vs log-sum-exp of negatives, KL-constrained.

    Knobs: ``lam`` (0.1), ``tau`` (10.0), ``beta`` (1e3), ``delta`` (1e-4), ``kl_type`` (kl |
    low_var_kl), ``split_groups`` (error | present). Returns ``LossOutput(per_token=None, loss=...)``.
    Metrics: ``drpo/kl``, ``drpo/kl_active``, ``drpo/frac_valid_questions``, ``drpo/score_pos``,
    ``drpo/score_neg``, ``drpo/loss`` (before the micro-batch share ``f``).
    """

    def __init__(
        self,
        *,
        lam: float = 0.1,
        tau: float = 10.0,
        beta: float = 1e3,
        delta: float = 1e-4,
        kl_type: DrpoKlType = "kl",
        split_groups: SplitPolicy = "error",
    ) -> None:
        who = "policy_loss 'drpo'"
        check_positive(who, lam=lam, tau=tau)
        check_choice(who, "kl_type", kl_type, KL_TYPES)
        check_choice(who, "split_groups", split_groups, SPLIT_POLICIES)
        if beta < 0:
            raise ConfigError(f"{who}: beta must be >= 0, got {beta}")
        self.lam = float(lam)
        self.tau = float(tau)
        self.beta = float(beta)
        self.delta = float(delta)
        self.kl_type = kl_type
        self.split_groups = split_groups
        self.group_sizes: dict[Any, int] | None = None

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Record the full size of every group of the rollout batch (to detect split groups)."""
        ctx.require("group_ids", who="policy_loss 'drpo'")
        assert ctx.group_ids is not None
        self.group_sizes = group_sizes(ctx.group_ids)
        metrics: dict[str, float] = {}
        if ctx.correct is not None:
            valid = valid_questions(ctx.correct, ctx.group_ids)
            metrics["drpo/batch_frac_valid_questions"] = float(valid.double().mean()) if valid.numel() else 0.0
        return metrics

    def check_whole_groups(self, group_ids: Tensor) -> None:
        if self.split_groups == "present":
            return
        require_whole_groups(
            group_ids, self.group_sizes, "policy_loss 'drpo'", "DRPO compares a question's correct and incorrect responses",
            "Set train.mini_batch_size and train.micro_batch_size to the rollout batch size (prompts_per_step * "
            "group_size), or policy_loss knob split_groups: present to treat the rows present as the question (approximation)",
        )  # fmt: skip

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        who = "policy_loss 'drpo'"
        ctx.require("logprobs", "old_logprobs", "correct", "group_ids", who=who)
        assert ctx.logprobs is not None and ctx.old_logprobs is not None
        assert ctx.correct is not None and ctx.group_ids is not None
        self.check_whole_groups(ctx.group_ids)
        mask = ctx.response_mask.to(ctx.logprobs.dtype)
        scores = sequence_scores(ctx.logprobs, mask)
        lengths = mask.sum(-1)
        total, valid, num_questions = drpo_questions(
            scores, lengths, ctx.correct, ctx.group_ids, float(ctx.padded_length), self.lam, self.tau
        )
        kl = kl_estimate(ctx.logprobs, ctx.old_logprobs, mask, self.kl_type)
        penalty = torch.clamp(self.beta * (kl.detach() - self.delta), min=0.0)
        loss = -total / max(num_questions, 1) + penalty * kl
        f = float(ctx.micro_batch_fraction)
        pos = ctx.correct.bool()
        detached = scores.detach()
        metrics = {
            "drpo/kl": float(kl.detach()),
            "drpo/kl_active": float(kl.detach() > self.delta),
            "drpo/frac_valid_questions": float(valid.sum()) / num_questions if num_questions else 0.0,
            "drpo/score_pos": float(detached[pos].mean()) if bool(pos.any()) else 0.0,
            "drpo/score_neg": float(detached[~pos].mean()) if bool((~pos).any()) else 0.0,
            "drpo/loss": float(loss.detach()),
        }
        return LossOutput(per_token=None, loss=loss * f, metrics=metrics)
