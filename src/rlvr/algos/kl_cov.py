"""KL-Cov (Entropy Mechanism of RL, arXiv 2505.22617) (stage: policy_loss).

With the token covariance ``cov_{i,t} = (A - mean A)(log pi - mean log pi)`` of ``clip_cov.py``
(official code PRIME-RL/Entropy-Mechanism-of-RL ``verl/trainer/ppo/core_algos.py`` and verl
``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_kl_cov``), the
``k = max(1, int(kl_cov_ratio * N_valid))`` tokens with the
*largest* covariance get a KL penalty, and **no token is clipped**:

    l_{i,t} = -A r + beta * |log r|     on the top-k tokens
    l_{i,t} = -A r                      on every other valid token

with ``r = exp(log pi - log pi_old)`` (log-ratio clamped to [-20, 20] inside ``exp`` as everywhere
here; the official ratio is unclamped, ``|log r|`` is unclamped in both). ``kl_cov_ratio = 0``
selects nothing (official ``if k != 0``).

Defaults and units:

* ``kl_cov_ratio`` is a **fraction** (default ``2e-4``, verl main ``kl_cov_ratio=0.0002``). The
  original repo's knob ``k_percent`` is in **percent** and divided by 100 in the code: its 7B script's
  0.2 means 0.2% -> ``kl_cov_ratio = 0.002``; the 32B script's 0.02 -> ``0.0002``.
* ``ppo_kl_coef`` = beta, default 1.0 (original repo); verl main's default is 0.1.

``scope`` (``"batch"`` default | ``"micro"``), ``ctx.extras["row_index"]`` and the fallback are as in
Clip-Cov (see ``clip_cov.py``): batch scope picks the top-k over the whole rollout batch from
``ctx.old_logprobs`` in ``prepare``; micro scope is the official per-micro-batch computation with the
current log-probs. The selection is deterministic (``torch.topk``; ties broken by torch).

Metrics: ``kl_cov/frac_selected``, ``kl_cov/abs_log_ratio_selected`` (mean ``|log r|`` over the
selected tokens; 0 if none), ``kl_cov/cov_mean|cov_std|cov_max``, ``kl_cov/batch_scope``,
``approx_kl`` (mean ``log pi_old - log pi``) and ``abs_log_ratio`` (official ``ppo_kl_abs``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.clip_cov import CovarianceSelection, CovScope
from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss
from rlvr.errors import ConfigError


def kl_cov_selection(cov: Tensor, mask: Tensor, *, kl_cov_ratio: float) -> Tensor:
    """Bool mask of the ``max(1, int(kl_cov_ratio * N_valid))`` valid tokens with the largest ``cov``.

    Empty when ``kl_cov_ratio == 0`` or there is no valid token.
    """
    valid = mask > 0
    flat_valid = valid.reshape(-1).nonzero().squeeze(1)
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    n_valid = flat_valid.numel()
    if kl_cov_ratio > 0 and n_valid > 0:
        k = max(1, int(n_valid * kl_cov_ratio))
        top = torch.topk(cov.reshape(-1)[flat_valid], k, largest=True).indices
        selected[flat_valid[top]] = True
    return selected.view_as(cov)


@policy_loss.register("kl_cov", requires=("logprobs", "old_logprobs", "advantages"))
class KLCov(CovarianceSelection):
    """KL-Cov (arXiv 2505.22617): unclipped ``-A r``, plus ``beta |log r|`` on the top-covariance tokens.

    Knobs: ``kl_cov_ratio`` (fraction, 2e-4; original repo's percent 0.2 -> 0.002), ``ppo_kl_coef``
    (beta, 1.0; verl main 0.1), ``scope`` (``"batch"`` | ``"micro"``), ``seed`` (unused: the selection
    is deterministic; kept for a uniform interface with ``clip_cov``).
    """

    name = "kl_cov"

    def __init__(
        self, *, kl_cov_ratio: float = 2e-4, ppo_kl_coef: float = 1.0, scope: CovScope = "batch", seed: int = 0
    ) -> None:
        who = f"policy_loss '{self.name}'"
        if not 0.0 <= kl_cov_ratio <= 1.0:
            raise ConfigError(
                f"{who}: kl_cov_ratio is a fraction in [0, 1] (the original repo's k_percent=0.2 means 0.002), "
                f"got {kl_cov_ratio}"
            )
        if ppo_kl_coef < 0:
            raise ConfigError(f"{who}: ppo_kl_coef must be >= 0, got {ppo_kl_coef}")
        super().__init__(scope=scope, seed=seed)
        self.kl_cov_ratio = float(kl_cov_ratio)
        self.ppo_kl_coef = float(ppo_kl_coef)

    def _select(
        self, cov: Tensor, mask: Tensor, clipped: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        del clipped, generator  # KL-Cov neither clips nor samples
        selected = kl_cov_selection(cov, mask, kl_cov_ratio=self.kl_cov_ratio)
        return selected, selected

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        logprobs, log_ratio, advantages, mask = policy_inputs(ctx, f"policy_loss '{self.name}'")
        ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
        pg = -advantages * ratio
        abs_log_ratio = log_ratio.abs()
        selected, metrics = self.selection(ctx, logprobs, advantages, mask, None)
        metrics.pop(f"{self.name}/frac_candidates", None)  # identical to frac_selected here
        per_token = torch.where(selected, pg + self.ppo_kl_coef * abs_log_ratio, pg) * mask
        sel = selected.to(mask.dtype) * mask
        metrics.update(
            {
                f"{self.name}/frac_selected": masked_float(sel, mask),
                f"{self.name}/abs_log_ratio_selected": masked_float(abs_log_ratio, sel),
                "approx_kl": masked_float(-log_ratio, mask),
                "abs_log_ratio": masked_float(abs_log_ratio, mask),
            }
        )
        return LossOutput(per_token=per_token, metrics=metrics)
