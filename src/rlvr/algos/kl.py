"""KL estimators (verl ``kl_penalty``) and the KL-to-reference regularizer (stage: regularizer).

With ``d = log pi - log pi_ref`` per token (Schulman, "Approximating KL Divergence", 2020):

* ``k1`` (alias ``kl``):          d
* ``abs``:                        |d|
* ``k2`` (alias ``mse``):         d^2 / 2
* ``k3`` (alias ``low_var_kl``):  exp(-d) + d - 1, with ``-d`` clamped to [-20, 20] and the result
  clamped to [-10, 10] as in verl. Non-negative and unbiased for KL(pi || pi_ref) under pi samples.

The regularizer adds ``coef * aggregate(kl)`` to the loss, GRPO's in-loss KL term (arXiv 2402.03300;
verl ``use_kl_loss`` with ``low_var_kl`` and coefficient 0.001).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import regularizer
from rlvr.errors import ConfigError

KlKind = Literal["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl"]
KL_KINDS: dict[str, str] = {
    "k1": "k1", "kl": "k1", "abs": "abs", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"
}
"""Each ``KlKind`` -> the estimator it names (its keys are ``get_args(KlKind)``, in order)."""


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KlKind = "k3") -> Tensor:
    """Per-token KL estimate of ``kind`` (k1 | abs | k2 | k3, aliases kl | mse | low_var_kl)."""
    canonical = KL_KINDS.get(kind)
    if canonical is None:
        raise ConfigError(f"unknown KL estimator '{kind}'; valid: {', '.join(KL_KINDS)}")
    diff = logprobs - ref_logprobs
    if canonical == "k1":
        return diff
    if canonical == "abs":
        return diff.abs()
    if canonical == "k2":
        return 0.5 * diff.square()
    log_ref_ratio = (-diff).clamp(-20.0, 20.0)
    return (log_ref_ratio.exp() - log_ref_ratio - 1.0).clamp(-10.0, 10.0)


@regularizer.register("kl", requires=("logprobs", "ref_logprobs"))
def kl(ctx: AlgoContext, *, coef: float = 0.001, estimator: KlKind = "k3") -> RegularizerOutput:
    """``coef * aggregate(KL_est(pi || pi_ref))``; metric ``kl`` is the mean over valid tokens."""
    ctx.require("logprobs", "ref_logprobs", who="regularizer 'kl'")
    assert ctx.logprobs is not None and ctx.ref_logprobs is not None
    valid = ctx.response_mask > 0
    # zero the padding before the estimate so garbage there cannot leak NaN into the gradient
    logprobs = torch.where(valid, ctx.logprobs, torch.zeros_like(ctx.logprobs))
    ref_logprobs = torch.where(valid, ctx.ref_logprobs, torch.zeros_like(ctx.ref_logprobs))
    per_token = kl_estimate(logprobs, ref_logprobs, estimator) * ctx.response_mask.to(logprobs.dtype)
    return RegularizerOutput(
        loss=coef * ctx.aggregate(per_token), metrics={"kl": masked_float(per_token, ctx.response_mask)}
    )
