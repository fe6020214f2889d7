"""REAL, Rewards as Labels: group-wise classification with anchor logits (stage: policy_loss), arXiv 2602.05630.

No official code was found. The loss below follows the third-party port in modelscope/ms-swift
(``swift/rlhf_trainers/grpo_trainer.py``, ``loss_type == 'real'``, ``real_tau``; documented in
``docs/source_en/Instruction/GRPO/AdvancedResearch/REAL.md``). Per response ``k`` the classification
logit is the length-normalised log-ratio, differentiable through ``log pi``::

    s_k = 1/|o_k| sum_t (log pi(o_t) - log pi_old(o_t))        (valid tokens only)

and per group, with ``O+`` / ``O-`` its positive / negative responses::

    L_g = log(1 + sum_{i in O+} exp(-s_i / tau)) + log(1 + sum_{j in O-} exp(s_j / tau))

The ``1 +`` terms are the anchor logits (a fixed logit 0 in each softmax). The resulting per-response
gradient weight ``1/tau * 1 / (1 + C exp(+-s_k / tau))`` is monotone and bounded by ``1/tau``, unlike
GRPO's ``|A exp(s)|``. No ratio clipping (the port has none); add the ``kl`` regularizer for the
port's ``beta * KL`` term.

Labels (knob ``label``): ``"advantage"`` (default, the port) puts a response in ``O+`` when its
advantage (token mean over its valid tokens of ``ctx.advantages``) is > 0 and in ``O-`` otherwise;
with the port's ``scale_rewards='none'`` that is ``R > mean_g(R)``, and any advantage estimator's sign
gives the same split for GRPO-style advantages. ``"correct"``: ``O+`` = ``ctx.correct``.

Groups (knob ``skip_uniform``): the port drops groups without both a positive and a negative
response (``valid_mask``), so an all-correct group gives no gradient, as in GRPO (default ``True``).
``False`` keeps them: the formula alone then still pushes every ``s`` of an all-correct group up
through the anchor (a difference between the formula and the port; the paper's choice was not
retrieved). The loss is ``sum_g L_g / (number of groups in the micro-batch)`` (the port's division by
all groups, valid or not), scaled by the micro-batch's share of the mini-batch's rows
(``ctx.micro_batch_fraction``): with whole groups per micro-batch this is exactly
``sum_g L_g / (groups in the mini-batch)``. It is returned reduced (``LossOutput.loss``); token
weights and ``agg_mode`` do not apply.

Whole groups per micro-batch are required (the port requires the per-device batch to be divisible by
the group size): ``prepare(ctx)`` records the rollout batch's group sizes and a micro-batch holding
part of a group raises ConfigError; use ``train.shuffle=groups`` with mini- and micro-batch sizes that
are multiples of ``rollout.group_size``.

Default ``tau = 0.5`` (the port's ``real_tau``; the paper's per-model values were not retrieved).
Metrics: ``real/loss`` (before the share), ``real/score_pos`` / ``real/score_neg`` (mean ``s`` of
positive / negative responses), ``real/valid_groups_frac``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.groups import WHOLE_GROUPS_FIX, group_index, group_sizes, require_whole_groups
from rlvr.algos.registry import policy_loss
from rlvr.algos.shaping import check_choice, check_positive

RealLabel = Literal["advantage", "correct"]
REAL_LABELS: tuple[str, ...] = get_args(RealLabel)


def sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``s_k = mean_t (log pi - log pi_old)`` over each row's valid tokens, ``(B,)``, differentiable (padding may hold NaN)."""
    valid = mask > 0
    diff = torch.where(valid, logprobs - old_logprobs.detach().to(logprobs.dtype), torch.zeros_like(logprobs))
    return diff.sum(-1) / valid.sum(-1).clamp(min=1).to(diff.dtype)


def real_group_losses(scores: Tensor, positive: Tensor, group_ids: Tensor, tau: float, skip_uniform: bool) -> tuple[Tensor, Tensor]:
    """``(L_g for every group in order of dense id, bool: the group counts)``.

    ``L_g = logsumexp([0, -s_{O+} / tau]) + logsumexp([0, s_{O-} / tau])``; a group without a positive
    (negative) response has only the anchor in that term, which contributes ``log 1 = 0``.
    """
    dense, k = group_index(group_ids)
    losses, counts = [], []
    zero = scores.new_zeros(1)
    for g in range(k):
        rows = dense == g
        pos, neg = rows & positive, rows & ~positive
        has_both = bool(pos.any()) and bool(neg.any())
        pos_term = torch.logsumexp(torch.cat([zero, -scores[pos] / tau]), dim=0)
        neg_term = torch.logsumexp(torch.cat([zero, scores[neg] / tau]), dim=0)
        losses.append(pos_term + neg_term)
        counts.append(has_both or not skip_uniform)
    if not losses:
        return scores.new_zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.stack(losses), torch.tensor(counts, dtype=torch.bool, device=scores.device)


@policy_loss.register("real", requires=("logprobs", "old_logprobs", "advantages", "correct", "group_ids"))
class Real:
    """REAL (arXiv 2602.05630): ``log(1 + sum_{O+} e^{-s/tau}) + log(1 + sum_{O-} e^{s/tau})`` per group, ``s`` = mean log-ratio.

    Knobs: ``tau`` (0.5), ``label`` (advantage | correct), ``skip_uniform`` (True: groups without both
    labels give no loss, as the ms-swift port). Needs whole groups per micro-batch
    (``train.shuffle=groups``). Returns ``LossOutput(per_token=None, loss=...)``.
    """

    name = "real"

    def __init__(self, *, tau: float = 0.5, label: RealLabel = "advantage", skip_uniform: bool = True) -> None:
        who = f"policy_loss '{self.name}'"
        check_positive(who, tau=tau)
        check_choice(who, "label", label, REAL_LABELS)
        self.tau = float(tau)
        self.label = label
        self.skip_uniform = bool(skip_uniform)
        self.group_sizes: dict[Any, int] | None = None

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Record the full size of every group of the rollout batch (to detect split groups)."""
        ctx.require("group_ids", who=f"policy_loss '{self.name}'")
        assert ctx.group_ids is not None
        self.group_sizes = group_sizes(ctx.group_ids)
        return {}

    def positives(self, ctx: AlgoContext) -> Tensor:
        who = f"policy_loss '{self.name}'"
        if self.label == "correct":
            ctx.require("correct", who=who)
            assert ctx.correct is not None
            return ctx.correct.bool()
        ctx.require("advantages", who=who)
        assert ctx.advantages is not None
        valid = ctx.response_mask > 0
        adv = torch.where(valid, ctx.advantages.detach(), torch.zeros_like(ctx.advantages))
        return adv.sum(-1) / valid.sum(-1).clamp(min=1).to(adv.dtype) > 0

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        who = f"policy_loss '{self.name}'"
        ctx.require("logprobs", "old_logprobs", "group_ids", who=who)
        assert ctx.logprobs is not None and ctx.old_logprobs is not None and ctx.group_ids is not None
        require_whole_groups(
            ctx.group_ids, self.group_sizes, who, "REAL classifies each group's responses against each other", WHOLE_GROUPS_FIX
        )
        positive = self.positives(ctx)
        scores = sequence_log_ratio(ctx.logprobs, ctx.old_logprobs, ctx.response_mask)
        losses, counted = real_group_losses(scores, positive, ctx.group_ids, self.tau, self.skip_uniform)
        num_groups = max(int(losses.numel()), 1)
        loss = (losses * counted.to(losses.dtype)).sum() / num_groups
        detached = scores.detach()
        metrics = {
            f"{self.name}/loss": float(loss.detach()),
            f"{self.name}/score_pos": float(detached[positive].mean()) if bool(positive.any()) else 0.0,
            f"{self.name}/score_neg": float(detached[~positive].mean()) if bool((~positive).any()) else 0.0,
            f"{self.name}/valid_groups_frac": float(counted.double().mean()) if counted.numel() else 0.0,
        }
        return LossOutput(per_token=None, loss=loss * float(ctx.micro_batch_fraction), metrics=metrics)
