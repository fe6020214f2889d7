"""Loss aggregation modes (verl ``core_algos.agg_loss``), over the global batch.

With ``m`` the response mask, ``l`` the per-token loss, ``B`` sequences and ``L`` the normalising length:

* ``token-mean``:              sum_{i,t} l m / sum_{i,t} m                       (DAPO)
* ``seq-mean-token-mean``:     1/B sum_i (sum_t l m / sum_t m)                   (GRPO, GSPO)
* ``seq-mean-token-sum``:      1/B sum_i sum_t l m
* ``seq-mean-token-sum-norm``: 1/B sum_i sum_t l m / L                          (Dr.GRPO)

For the last mode SIREN's verl copy (Linn3a/siren ``verl/verl/trainer/ppo/core_algos.py``,
``mean(seq_losses) / L``) divides by ``B*L``, while the Entropy-Mechanism copy
(PRIME-RL/Entropy-Mechanism-of-RL ``verl/trainer/ppo/core_algos.py``, ``sum(seq_losses) / L``) and
new verl divide by ``L`` only; the two differ by the constant ``B``. We follow TRL's Dr.GRPO
(``sum / (B * max_completion_length)``), i.e. the mean-over-sequences reading, so that all four modes
share the same ``1/B`` and the learning rate keeps its meaning when switching modes.

``num_tokens`` / ``num_seqs`` override the denominators with global totals so that summing the
micro-batch values of a split mini-batch gives exactly the full mini-batch value. Sequences with no
valid token do not count in ``B`` (as in new verl; SIREN's copy counts every row in
``seq-mean-token-mean``, which ``siren.selected_entropy`` reproduces with ``num_seqs``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from rlvr.errors import ConfigError

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: AggMode,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """Reduce ``(B, T)`` per-token values to a scalar; see the module docstring for the formulas."""
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=per_token.dtype)
        return masked.sum() / denom.clamp_min(1.0)
    seq_tokens = mask.sum(dim=-1)
    nonempty = (seq_tokens > 0).to(per_token.dtype)
    seqs = nonempty.sum() if num_seqs is None else torch.as_tensor(num_seqs, dtype=per_token.dtype)
    seqs = seqs.clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=-1) / seq_tokens.clamp_min(1.0)
        return (per_seq * nonempty).sum() / seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        length = norm_length if norm_length is not None else per_token.shape[-1]
        return masked.sum() / (seqs * float(length))
    raise ConfigError(f"unknown agg_mode '{mode}'; valid modes: {', '.join(AGG_MODES)}")


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 where the mask is empty)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp_min(1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Token-weighted variance of ``values`` over the mask (verl ``masked_var``)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        var = var * count / (count - 1).clamp_min(1.0)
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the valid tokens (verl ``masked_whiten``)."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
