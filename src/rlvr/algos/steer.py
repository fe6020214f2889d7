"""STEER token reweighting by predicted entropy change (stage: token_weight).

"Rethinking Entropy Interventions in RLVR: an Entropy-Change Perspective" (STEER; official code
zz-haooo/STEER ``verl/trainer/ppo/core_algos.py`` ``compute_token_weights``). Per valid token, without
gradient, with ``pi = clamp(exp(log pi_theta(o_t)), 1e-8, 1 - 1e-8)`` (current policy),
``pi_old = clamp(exp(log pi_old(o_t)), 1e-8, 1)`` and ``H`` the token entropy of the *rollout*
policy (``ctx.old_entropy``):

    Omega_{i,t} = | A_{i,t} / pi_old * pi (1 - pi) (log pi + H_{i,t}) |

(the first-order entropy change a policy-gradient step on that token causes; non-finite values are
set to 0 as in the official code). ``H`` is the official ``data["entropys"]``: the entropies of the
old-policy ``compute_log_prob`` forward (``ray_trainer.fit``), reused by every mini-batch of the step
(``dp_actor.update_policy``), so only on the first mini-batch does it equal the current entropy.
With ``Omega_min`` / ``Omega_max`` over the valid tokens of the micro-batch:

* ``mode="linear"``: ``w = clip(w_max - (Omega - Omega_min) (w_max - w_min) / (Omega_max - Omega_min),
  w_min, w_max)``; if every ``Omega`` is equal, ``w = (w_min + w_max) / 2``. The token with the
  largest predicted entropy change gets ``w_min``, the smallest ``w_max``.
* ``mode="exponential"``: ``k = -ln(w_min) / max(Omega_max, 0.02)``, ``w = clip(exp(-k Omega), w_min, 1)``
  (``w_max`` unused).

The weights multiply the per-token policy loss (the official recipe: verl PPO loss with clip-higher
and dual clip, then ``agg_loss``); padding gets 0. Defaults: the official code defaults, linear with
``w_min = 0.8``, ``w_max = 1.2`` (``run_linear.sh``); ``run_exp.sh`` uses exponential with 0.8 / 1.0.
The official "asymmetric" (signed-Omega) variant that appears in some copies of the code is not
implemented.

Metrics: ``steer/weight_mean|min|max`` and ``steer/omega_mean|max`` over valid tokens.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import token_weight
from rlvr.algos.shaping import check_choice
from rlvr.errors import ConfigError

SteerMode = Literal["linear", "exponential"]
STEER_MODES: tuple[str, ...] = get_args(SteerMode)
PROB_EPS = 1e-8
EXP_OMEGA_FLOOR = 0.02


def entropy_change_magnitude(
    advantages: Tensor, entropy: Tensor, logprobs: Tensor, old_logprobs: Tensor, response_mask: Tensor
) -> Tensor:
    """``Omega = |A / pi_old * pi (1 - pi) (log pi + H)|`` per token, 0 on padding and where non-finite.

    ``entropy`` is ``H``, the rollout policy's token entropy (module docstring).
    """
    valid = response_mask > 0
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=response_mask.device)
    lp = torch.where(valid, logprobs.detach().to(dtype), zero)
    old = torch.where(valid, old_logprobs.detach().to(dtype), zero)
    ent = torch.where(valid, entropy.detach().to(dtype), zero)
    adv = torch.where(valid, advantages.detach().to(dtype), zero)
    p = lp.exp().clamp(PROB_EPS, 1.0 - PROB_EPS)
    p_old = old.exp().clamp(PROB_EPS, 1.0)
    omega = (adv / p_old * p * (1.0 - p) * (p.log() + ent)).abs()
    omega = torch.where(torch.isfinite(omega), omega, zero)
    return torch.where(valid, omega, zero)


def steer_weights(omega: Tensor, response_mask: Tensor, *, mode: SteerMode, w_min: float, w_max: float) -> Tensor:
    """Map ``Omega`` to weights (module docstring), min/max over the valid tokens; 0 on padding."""
    check_choice("token_weight 'steer'", "mode", mode, STEER_MODES)
    valid = response_mask > 0
    weights = torch.zeros_like(omega)
    values = omega[valid]
    if values.numel() == 0:
        return weights
    lo, hi = values.min(), values.max()
    if mode == "linear":
        if hi > lo:
            w = w_max - (values - lo) * ((w_max - w_min) / (hi - lo))
        else:
            w = torch.full_like(values, (w_min + w_max) / 2.0)
        w = w.clamp(w_min, w_max)
    else:
        k = -math.log(w_min) / hi.clamp_min(EXP_OMEGA_FLOOR)
        w = torch.exp(-k * values).clamp(w_min, 1.0)
    weights[valid] = w
    return weights


@token_weight.register("steer", requires=("old_entropy", "logprobs", "old_logprobs", "advantages"))
def steer(ctx: AlgoContext, *, mode: SteerMode = "linear", w_min: float = 0.8, w_max: float = 1.2) -> TokenWeightOutput:
    """STEER: down-weight tokens with a large predicted entropy change ``Omega`` (module docstring).

    Knobs: ``mode`` (``"linear"`` | ``"exponential"``), ``w_min`` (0.8), ``w_max`` (1.2; linear only).
    """
    who = "token_weight 'steer'"
    check_choice(who, "mode", mode, STEER_MODES)
    if not 0.0 < w_min <= w_max:
        raise ConfigError(f"{who}: need 0 < w_min <= w_max, got {w_min}, {w_max}")
    if mode == "exponential" and w_min > 1.0:
        raise ConfigError(f"{who}: exponential mode needs w_min <= 1, got {w_min}")
    ctx.require("old_entropy", "logprobs", "old_logprobs", "advantages", who=who)
    assert ctx.old_entropy is not None and ctx.logprobs is not None
    assert ctx.old_logprobs is not None and ctx.advantages is not None
    mask = ctx.response_mask
    omega = entropy_change_magnitude(ctx.advantages, ctx.old_entropy, ctx.logprobs, ctx.old_logprobs, mask)
    weights = steer_weights(omega, mask, mode=mode, w_min=w_min, w_max=w_max).to(mask.dtype)
    valid_w = weights[mask > 0]
    metrics = {
        "steer/weight_mean": masked_float(weights, mask),
        "steer/weight_min": float(valid_w.min()) if valid_w.numel() else 0.0,
        "steer/weight_max": float(valid_w.max()) if valid_w.numel() else 0.0,
        "steer/omega_mean": masked_float(omega, mask),
        "steer/omega_max": float(omega[mask > 0].max()) if valid_w.numel() else 0.0,
    }
    return TokenWeightOutput(weights=weights, metrics=metrics)
