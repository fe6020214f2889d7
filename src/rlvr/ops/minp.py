"""Log-prob of the sampled token under the min-p proxy of the policy (Lp-Reg), chunked, no grad.

Lp-Reg (arXiv 2510.03222; official code CarlanLark/Lp-Reg-dev ``verl/workers/actor/dp_actor.py``
``apply_min_p`` and ``_forward_micro_batch``) regularises towards a *proxy* distribution: the policy
with its low-probability noise removed by a min-p filter. The official forward filters the *raw*
logits ``l = h @ W^T`` and only then divides by the temperature ``T``. Per position, with
``q = softmax(l)``:

    keep_v = [q_v >= kappa * max_u q_u]                 (equivalently exp(l_v - max l) >= kappa)
    l'_v   = l_v if keep_v else -1e4                    (the official hard filter)
    log pi_proxy(o_t) = log_softmax(l' / T)[o_t]

So the kept set does not depend on ``T`` (filtering the temperature-scaled distribution would keep
fewer tokens for ``T < 1`` and more for ``T > 1``). With ``z = l / T``, a kept target gets
``z_t - logsumexp_{keep}(z)`` and a filtered one ``-1e4 / T - logsumexp_{keep}(z)`` (the
``(V - |keep|) * exp(-1e4 / T - ...)`` terms of the official ``log_softmax`` underflow to exactly 0
in float32/float64 for any ordinary ``T``, so the two agree in practice). The official
``minp_soft`` variant (filtered logits set to the row minimum) is not implemented. ``kappa = 0``
keeps every token and gives the ordinary log-prob.

The value is used as a fixed target (the official code computes it from the old policy at
rollout-logprob time, ``minp_old_log_prob=True``, detached), so this kernel carries no gradient.
Memory: one ``(chunk_size, V)`` workspace in the compute dtype plus a ``(chunk_size, V)`` bool mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.ops.logprobs import check_head_inputs, chunk_logits, compute_dtype, no_autocast, workspace

__all__ = ["FILTERED_LOGIT", "chunked_minp_logprobs", "naive_minp_logprobs"]

FILTERED_LOGIT = -1e4
"""Logit given to min-p-filtered tokens (official hard filter)."""


def _check_kappa(kappa: float) -> None:
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"min-p threshold kappa must be in [0, 1]; got {kappa}")


def chunked_minp_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    kappa: float = 0.02,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Tensor:
    """``log pi_proxy(target)`` per row of ``hidden`` (N, D) with LM head ``weight`` (V, D), shape (N,).

    Computed ``chunk_size`` rows at a time in float32 (float64 for float64 inputs); no gradient.
    The min-p filter is applied to the raw logits, the temperature afterwards (module docstring).
    """
    check_head_inputs(hidden, weight, temperature, chunk_size)
    _check_kappa(kappa)
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be (N,) = {tuple(hidden.shape[:1])}; got {tuple(targets.shape)}")
    dtype = compute_dtype(hidden, weight)
    n, vocab = hidden.shape[0], weight.shape[0]
    out = torch.empty(n, dtype=dtype, device=hidden.device)
    if n == 0:
        return out
    with torch.no_grad(), no_autocast(hidden.device):
        w_c = weight.detach().to(dtype)
        buf = workspace(min(chunk_size, n), vocab, dtype, hidden.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            t = targets[s:e, None]
            logits = chunk_logits(hidden[s:e].detach(), w_c, 1.0, out=buf[: e - s])  # raw: filter first
            row_max = logits.amax(dim=-1, keepdim=True)
            target_z = logits.gather(1, t).squeeze(1) / temperature
            rel = logits.sub_(row_max).exp_()  # q_v / q_max of the raw logits, in (0, 1]
            keep = rel >= kappa
            target_kept = keep.gather(1, t).squeeze(1)
            if temperature != 1.0:
                rel.pow_(1.0 / temperature)  # exp((l_v - max l) / T)
            lse_kept = row_max.squeeze(1) / temperature + rel.mul_(keep).sum(dim=-1).log()
            filtered = torch.full_like(target_z, FILTERED_LOGIT / temperature)
            out[s:e] = torch.where(target_kept, target_z, filtered) - lse_kept
        del w_c, buf
    return out


def naive_minp_logprobs(logits: Tensor, targets: Tensor, *, kappa: float = 0.02, temperature: float = 1.0) -> Tensor:
    """Full-logit test oracle, written as the official code: softmax of the raw logits, threshold,
    -1e4, then divide by the temperature and log_softmax."""
    _check_kappa(kappa)
    p = torch.softmax(logits, dim=-1)
    keep = p >= kappa * p.amax(dim=-1, keepdim=True)
    filtered = torch.where(keep, logits, torch.full_like(logits, FILTERED_LOGIT))
    return torch.log_softmax(filtered / temperature, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
