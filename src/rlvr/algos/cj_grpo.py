"""CJ-GRPO: consistency-trajectory GRPO for masked diffusion LMs (stage: policy_loss), arXiv 2509.23924.

Official code: yjyddq/EOSER-ASS-RL ``cj-grpo/cj_grpo_trainer_eoser_ass.py`` (``compute_loss``);
defaults from ``cj-grpo/slurm_scripts/train.yaml`` (``epsilon`` 0.5, ``beta`` 0.04).

A masked-diffusion rollout (:mod:`rlvr.rollout.mdlm`) commits the tokens ``U_s`` at step
``s = 0..S-1``; the learner scores each committed token from the state it was drawn in
(:mod:`rlvr.ops.trajectory`), so ``ctx.logprobs[b, t]`` is the log-prob at step
``s_t = extras["unmask_step"][b, t]``. The loss sums clipped terms over the *same* trajectory::

    l_t = -min(r_t A, clip(r_t, 1 - eps, 1 + eps) A) + beta * KL_k3(pi || pi_ref)_t
    L_b = sum_s (1 / S_b) (1 / |U_{b,s}|) sum_{t in U_{b,s}} l_t          (each step weighs 1/S)
    L   = (1 / B) sum_b L_b

with ``r_t = exp(log pi - log pi_old)`` and ``A`` the sequence advantage (the paper uses
``R - mean_g(R)``, no std division: ``algo.advantage=dr_grpo``). ``B`` is the mini-batch's
number of sequences (``ctx.global_num_seqs``), so micro-batches add up to the mini-batch loss.
Per row this equals the official per-micro-batch ``sum(l * U_s) / sum(U_s) / S`` because every row
commits the same ``|U_s|`` tokens at each step. The loss is returned already reduced, so token
weights do not apply; ``ref_logprobs`` are always computed (``beta = 0`` leaves them unused).
``unmask_step`` in ``requires`` is the ``ctx.extras`` key the masked-diffusion engine records (so
the adapters, which sample autoregressively, list the loss as needing it).

Metrics: ``clip_frac`` / ``clip_frac_low`` / ``clip_frac_high`` and ``approx_kl`` (token means, as
``ppo_clip``), ``kl`` (the step-weighted k3 term, per sequence).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.kl import kl_estimate
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, check_clip, clipped_surrogate, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss
from rlvr.errors import ConfigError, MissingInputError
from rlvr.rollout.base import UNMASK_STEP


def trajectory_step_weights(unmask_step: Tensor, mask: Tensor) -> Tensor:
    """``w[b, t] = 1 / (S_b |U_{b, s_t}|)`` on ``mask``, 0 elsewhere (``(B, L)``); each row sums to 1.

    ``U_{b,s}`` are the masked-in positions committed at step ``s``; ``S_b`` counts the non-empty steps.
    """
    valid = (mask > 0) & (unmask_step >= 0)
    steps = unmask_step.clamp_min(0)
    num_steps = int(steps.max()) + 1 if steps.numel() else 1
    per_step = torch.zeros(unmask_step.shape[0], num_steps, dtype=mask.dtype, device=mask.device)
    per_step.scatter_add_(1, steps, valid.to(mask.dtype))
    nonempty = (per_step > 0).sum(-1, keepdim=True).to(mask.dtype)
    count = per_step.gather(1, steps)
    return torch.where(valid, 1.0 / (nonempty * count).clamp_min(1.0), torch.zeros_like(count))


@policy_loss.register("cj_grpo", requires=("logprobs", "old_logprobs", "ref_logprobs", "advantages", UNMASK_STEP))
def cj_grpo(ctx: AlgoContext, *, epsilon: float = 0.5, beta: float = 0.04) -> LossOutput:
    """CJ-GRPO (arXiv 2509.23924): PPO-clip + k3 KL summed over the masked-diffusion trajectory, each step weighted 1/S."""
    who = "policy_loss 'cj_grpo'"
    check_clip(who, epsilon, epsilon)
    if beta < 0:
        raise ConfigError(f"{who}: beta must be >= 0, got {beta}")
    unmask_step = ctx.extras.get(UNMASK_STEP)
    if unmask_step is None:
        raise MissingInputError(f"{who} needs ctx.extras['{UNMASK_STEP}'] from a masked-diffusion rollout (model.kind=mdlm)")
    logprobs, log_ratio, advantages, mask = policy_inputs(ctx, who)
    weights = trajectory_step_weights(unmask_step, mask)
    ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
    per_token, clip_metrics = clipped_surrogate(ratio, advantages, mask, epsilon, epsilon)
    metrics = {"approx_kl": masked_float(-log_ratio, mask)}
    rows = max(1, int((weights.sum(-1) > 0).sum()))
    if beta:
        ctx.require("ref_logprobs", who=who)
        assert ctx.ref_logprobs is not None
        ref = torch.where(mask > 0, ctx.ref_logprobs, torch.zeros_like(ctx.ref_logprobs))
        kl = kl_estimate(logprobs, ref, "k3") * mask
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl.detach() * weights).sum()) / rows
    metrics.update(clip_metrics)
    loss = ctx.aggregate(per_token * weights, mask=weights > 0, mode="seq-mean-token-sum")
    return LossOutput(per_token=None, loss=loss, metrics=metrics)
