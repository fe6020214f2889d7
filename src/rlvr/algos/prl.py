"""PRL: process rewards from the KL-regularised objective (stage: advantage), arXiv 2601.10201.

Official code: MaxwellJryao/Process-Reward-Learning ``verl/trainer/ppo/ray_trainer.py`` (``fit``,
the ``adv_estimator == prm`` branch before ``compute_advantage``), ``verl/trainer/ppo/core_algos.py``
(``left_fill_by_next_nonzero``, ``compute_prm_outcome_advantage``), ``runs/run_grpo-3.sh``.

The KL-regularised objective ``E[r] - 1/eta KL(pi || pi_ref)`` is split into per-step credits: a
token is credited with the outcome minus the KL the rest of the response still costs. With the
rollout (old) policy against the frozen reference, per valid token ``t`` of response ``i``::

    d_t = log pi_old(o_t) - log pi_ref(o_t)          (detached; a reward-side penalty, not a KL loss)
    C_t = sum_{j >= t} d_j                            (suffix sum over the valid tokens)
    u_t = b_i - C_t / eta
    A_t = u_{e(t)}                                    e(t) = the last token of t's step

* ``base="grpo"`` (official ``prm.adv='orm'``): ``b_i`` = the GRPO z-score of the rewards in the
  group, ``(R_i - mean_g) / (std_g + eps)``, unbiased std, a singleton group has mean 0 and std 1
  (``norm_by_std=False``: no division). ``base="raw"`` (``prm.adv='prm'``): ``b_i = R_i``.
* Steps (``rlvr.algos.steps``, knob ``split``): ``"length"`` fixed steps of ``step_len`` valid tokens
  (official ``step_split='length'``); ``"delimiter"`` steps ending at each occurrence of
  ``delimiter`` in the text (official ``'n'`` / ``'nn'`` with ``"\\n"`` / ``"\\n\\n"``, which match
  token ids); ``"token"``: every token is its own step, ``A_t = u_t``. So a token of the step that
  ends at ``e`` gets ``b_i - 1/eta sum_{j >= e} d_j``: the KL of its own step's earlier tokens is not
  charged (official).

The official ``prm.adv='prm'`` path (``runs/run_grpo-3.sh``: ``eta = 100``, ``step_len = 64``) skips the
step mask, i.e. ``base="raw", split="token"``; its ``'orm'`` path is ``base="grpo"`` with a split.
(The other scripts set ``adv_estimator=grpo``, which bypasses PRL.) The official code finds the step
values with ``left_fill_by_next_nonzero``, which treats a value of exactly 0 at a step end as no
value and carries the next step's value back; here the step ends are explicit, so a step whose value
is exactly 0 keeps 0. The last valid token is always a step end (official: ``response_mask.sum() - 1``,
which assumes right padding).

Defaults ``eta = 100``, ``step_len = 64``, ``split = "length"``, ``base = "grpo"``. While the policy
still equals the reference, ``d = 0`` and ``base="grpo"`` equals plain GRPO. Metrics:
``prl/kl_mean`` (mean ``d`` over valid tokens), ``prl/penalty_mean`` (mean ``C_e / eta`` charged),
``prl/steps_mean`` (steps per response).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.grpo import group_baseline, seq_rewards
from rlvr.algos.groups import group_std
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.algos.steps import StepSplit, check_step_split, fill_from_step_end, step_ends

PrlBase = Literal["grpo", "raw"]
PRL_BASES: tuple[str, ...] = get_args(PrlBase)


def suffix_sums(values: Tensor, mask: Tensor) -> Tensor:
    """``C_t = sum_{j >= t} values_j`` over the valid tokens, 0 on padding (which may hold NaN)."""
    valid = mask > 0
    clean = torch.where(valid, values, torch.zeros_like(values))
    suffix = clean.flip(-1).cumsum(-1).flip(-1)
    return torch.where(valid, suffix, torch.zeros_like(suffix))


def outcome_base(rewards: Tensor, group_ids: Tensor, base: PrlBase, norm_by_std: bool, eps: float) -> Tensor:
    """``b_i``: the GRPO z-score of the rewards (``base="grpo"``) or the raw reward, ``(B,)``."""
    check_choice("advantage 'prl'", "base", base, PRL_BASES)
    if base == "raw":
        return rewards
    centred = rewards - group_baseline(rewards, group_ids)
    return centred / (group_std(rewards, group_ids, unbiased=True) + eps) if norm_by_std else centred


@advantage.register("prl", requires=("rewards", "group_ids", "old_logprobs", "ref_logprobs"))
class Prl:
    """PRL (arXiv 2601.10201): outcome advantage minus ``1/eta`` times the rollout-to-reference KL of the rest of the response, per step.

    ``A_t = b_i - 1/eta sum_{j >= e(t)} (log pi_old - log pi_ref)_j`` with ``e(t)`` the end of t's step.
    Knobs: ``eta`` (100.0), ``split`` (length | delimiter | token), ``step_len`` (64), ``delimiter``
    (``"\\n"``), ``base`` (grpo | raw), ``norm_by_std`` (True), ``eps`` (1e-6).
    """

    name = "prl"

    def __init__(
        self,
        *,
        eta: float = 100.0,
        split: StepSplit = "length",
        step_len: int = 64,
        delimiter: str = "\n",
        base: PrlBase = "grpo",
        norm_by_std: bool = True,
        eps: float = 1e-6,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_positive(who, eta=eta)
        check_step_split(who, split, step_len, delimiter)
        check_choice(who, "base", base, PRL_BASES)
        self.eta = float(eta)
        self.split = split
        self.step_len = int(step_len)
        self.delimiter = delimiter
        self.base = base
        self.norm_by_std = bool(norm_by_std)
        self.eps = float(eps)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require("old_logprobs", "ref_logprobs", who=who)
        assert ctx.old_logprobs is not None and ctx.ref_logprobs is not None and ctx.group_ids is not None
        rewards = seq_rewards(ctx, who)
        mask = ctx.response_mask
        dtype = torch.promote_types(ctx.old_logprobs.dtype, torch.float32)
        d = (ctx.old_logprobs.detach() - ctx.ref_logprobs.detach()).to(dtype)
        penalty = suffix_sums(d, mask) / self.eta
        b = outcome_base(rewards.detach().to(dtype), ctx.group_ids, self.base, self.norm_by_std, self.eps)
        ends = step_ends(ctx, self.split, step_len=self.step_len, delimiter=self.delimiter, who=who)
        adv = fill_from_step_end(b.unsqueeze(-1) - penalty, ends, mask)
        valid = (mask > 0).to(dtype)
        clean_d = torch.where(mask > 0, d, torch.zeros_like(d))
        self.metrics = {
            f"{self.name}/kl_mean": masked_float(clean_d, valid),
            f"{self.name}/penalty_mean": masked_float(fill_from_step_end(penalty, ends, mask), valid),
            f"{self.name}/steps_mean": float((ends & (mask > 0)).sum(-1).double().mean()) if ctx.batch_size else 0.0,
        }
        return adv
