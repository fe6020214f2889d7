"""Token self-certainty and the raw logit of the sampled token (UCAS), chunked, no grad.

UCAS (arXiv 2510.10649; official code xvolcano02/UCAS ``verl/utils/torch_functional.py``
``self_certainty_from_logits``, ``verl/trainer/ppo/core_algos.py`` ``compute_ucas_advantage``) reads two
per-token quantities of the rollout policy:

* self-certainty ``c = logsumexp(z) - mean_v z_v`` with ``z = (h @ W^T) / T`` the temperature-scaled
  logits (as verl, which divides the logits by the rollout temperature in place before any
  per-token statistic). ``c = KL(U || p) + log V >= log V`` (``U`` uniform over the ``V`` tokens), so
  ``c`` is large when the distribution is peaked. ``mean_v z_v`` is cheap but ``logsumexp`` needs
  every logit, hence the chunking.
* the raw logit of the sampled token ``h . W[o_t]``, *before* temperature scaling (the official
  ``verl/workers/actor/dp_actor.py`` ``_forward_micro_batch`` gathers ``actual_token_logits`` before
  ``logits.div_(temperature)``). It needs no vocabulary pass.

Both are used as fixed (detached) inputs of an advantage, so this kernel carries no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.ops.logprobs import check_head_inputs, chunk_logits, compute_dtype, no_autocast, workspace

__all__ = ["chunked_self_certainty", "naive_self_certainty"]


def chunked_self_certainty(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_certainty: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """``(self_certainty, raw_logit)``, each (N,); ``self_certainty`` is None if not ``with_certainty``.

    ``hidden`` (N, D), ``weight`` (V, D), ``targets`` (N,). Float32 compute (float64 for float64
    inputs); no gradient.
    """
    check_head_inputs(hidden, weight, temperature, chunk_size)
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be (N,) = {tuple(hidden.shape[:1])}; got {tuple(targets.shape)}")
    dtype = compute_dtype(hidden, weight)
    n, vocab = hidden.shape[0], weight.shape[0]
    raw = torch.empty(n, dtype=dtype, device=hidden.device)
    certainty = torch.empty(n, dtype=dtype, device=hidden.device) if with_certainty else None
    if n == 0:
        return certainty, raw
    with torch.no_grad(), no_autocast(hidden.device):
        w_c = weight.detach().to(dtype)
        buf = workspace(min(chunk_size, n), vocab, dtype, hidden.device) if with_certainty else None
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            h_c = hidden[s:e].detach().to(dtype)
            raw[s:e] = (h_c * w_c[targets[s:e]]).sum(dim=-1)
            if certainty is not None and buf is not None:
                z = chunk_logits(h_c, w_c, temperature, out=buf[: e - s])
                mean_z = z.mean(dim=-1)
                row_max = z.amax(dim=-1, keepdim=True)
                lse = row_max.squeeze(1) + z.sub_(row_max).exp_().sum(dim=-1).log()
                certainty[s:e] = lse - mean_z
        del w_c, buf
    return certainty, raw


def naive_self_certainty(logits: Tensor, targets: Tensor, *, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Full-logit test oracle: ``(logsumexp(z) - mean(z), logits[target])`` with ``z = logits / T``."""
    z = logits / temperature
    certainty = torch.logsumexp(z, dim=-1) - z.mean(dim=-1)
    raw = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return certainty, raw
