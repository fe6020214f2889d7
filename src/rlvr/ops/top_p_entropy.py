"""SIREN top-p (renormalised) entropy, chunked over tokens, from hidden states and the LM-head weight.

Definition (SIREN, arXiv 2509.25133, official code Linn3a/siren ``verl/verl/workers/actor/dp_actor.py``
``efficient_top_p_sampling``), per position with ``z = (h @ W^T) / T`` and ``p = softmax(z)``:

1. take the ``k = min(top_k, V)`` largest logits (rank 0 = most likely) and the cumulative
   probability ``c_r = sum_{j <= r} p_(j)``;
2. ``cutoff = searchsorted(c, p_thresh)`` with the default (left) side, i.e. the first rank whose
   cumulative probability reaches ``p_thresh`` (``c_{r-1} < p_thresh <= c_r``); keep the ranks
   ``r < cutoff``. The set ``S`` therefore holds exactly the tokens whose cumulative probability is
   still strictly below ``p_thresh``: the token that crosses ``p_thresh`` is excluded, and if
   ``p_top1 >= p_thresh`` the set is empty and ``H = 0`` (gradient 0). If the top-k never reach
   ``p_thresh`` all ``k`` tokens are kept;
3. ``q_v = p_v 1[v in S] / sum_S p`` and ``H_topp = -sum_v q_v log q_v``.

``S`` is chosen without gradient; the gradient flows through ``p`` in the numerator and in the
renormaliser. Because ``q`` is simply ``softmax`` restricted to ``S``,
``H_topp = logsumexp_S(z) - sum_S q z`` and ``dH_topp/dz_v = -q_v (log q_v + H_topp)`` for
``v in S`` (0 elsewhere). The official code writes ``q = p_S / (sum_S p + 1e-12)`` and
``-sum q log(q + 1e-12)``; those epsilons only change the result by ``< |S| * 1e-12`` (plus a
relative ``1e-12 / sum_S p``), below float32 resolution, so they are left out here (the test oracle
:func:`naive_top_p_entropy` keeps them). The full-vocabulary entropy is returned alongside,
detached, for ablations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.ops.logprobs import (
    check_head_inputs,
    chunk_logits,
    compute_dtype,
    finish_weight_grad,
    no_autocast,
    workspace,
)

__all__ = ["chunked_top_p_entropy", "naive_top_p_entropy"]


class _ChunkedTopPEntropy(torch.autograd.Function):
    """Autograd function behind :func:`chunked_top_p_entropy`.

    Saves ``hidden``, ``weight`` and, per token, the size of the kept set ``n_keep`` and the vocab
    id of its last (lowest-ranked) member ``boundary``. Backward visits only rows with a non-empty
    set and a non-zero upstream gradient, recomputes their logits, and rebuilds ``S`` as
    ``{z >= z[boundary]}``; if ties with the boundary logit make that larger than ``n_keep``, it
    takes ``{z > z[boundary]}`` plus the first tied tokens by vocab id up to ``n_keep`` members
    (``topk`` breaks such ties arbitrarily too, and tied tokens have equal ``q``, so the value is
    the same). The threshold is read from the recomputed logits, so the rebuilt set does not
    depend on the recomputation being bitwise identical to the forward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        p: float,
        top_k: int,
        temperature: float,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(hidden, weight)
        n, vocab = hidden.shape[0], weight.shape[0]
        k = min(top_k, vocab)
        device = hidden.device
        top_p_h = torch.zeros(n, dtype=dtype, device=device)
        full_h = torch.empty(n, dtype=dtype, device=device)
        n_keep = torch.zeros(n, dtype=torch.long, device=device)
        boundary = torch.zeros(n, dtype=torch.long, device=device)
        with torch.no_grad(), no_autocast(device):
            w_c = weight.detach().to(dtype)
            z_buf = workspace(min(chunk_size, n), vocab, dtype, device)
            p_buf = workspace(min(chunk_size, n), vocab, dtype, device)
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = chunk_logits(hidden[s:e], w_c, temperature, out=z_buf[: e - s])
                top_z, top_idx = torch.topk(z, k, dim=-1, sorted=True)  # ranks by z, as backward does
                row_max = top_z[:, :1].clone()
                top_u = top_z.sub_(row_max)
                u = z.sub_(row_max)  # shifted logits, max 0
                exp_u = torch.exp(u, out=p_buf[: e - s])
                total = exp_u.sum(dim=-1)
                log_sum = total.log()
                full_h[s:e] = log_sum - torch.einsum("ij,ij->i", exp_u, u) / total  # log s - E_p[u]
                keep_c = _kept_count(top_u, log_sum, p)
                n_keep[s:e] = keep_c
                boundary[s:e] = top_idx.gather(1, (keep_c - 1).clamp(min=0)[:, None]).squeeze(1)
                top_p_h[s:e] = _sorted_prefix_entropy(top_u, keep_c)
            del w_c, z_buf, p_buf
        ctx.save_for_backward(hidden, weight, n_keep, boundary)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(full_h)
        return top_p_h, full_h

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_h: Tensor | None, g_full: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        del g_full  # the full entropy is detached
        hidden, weight, n_keep, boundary = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_h is None or not (need_h or need_w):
            return None, None, None, None, None, None
        dtype = compute_dtype(hidden, weight)
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        grad_h = torch.zeros_like(hidden) if need_h else None
        with torch.no_grad(), no_autocast(hidden.device):
            active = torch.nonzero((n_keep > 0) & (g_h != 0)).squeeze(1)
            w_c = weight.detach().to(dtype)
            grad_w = torch.zeros_like(w_c) if need_w else None
            rows_max = min(chunk_size, active.numel())
            z_buf = workspace(rows_max, weight.shape[0], dtype, hidden.device)
            q_buf = workspace(rows_max, weight.shape[0], dtype, hidden.device)
            off_buf = torch.empty(rows_max, weight.shape[0], dtype=torch.bool, device=hidden.device)
            for s in range(0, active.numel(), chunk_size):
                rows = active[s : s + chunk_size]
                c = rows.numel()
                h_c = hidden.detach()[rows].to(dtype)
                z = chunk_logits(h_c, w_c, temperature, out=z_buf[:c])
                off_set = _off_set_mask(z, n_keep[rows], boundary[rows], off_buf[:c])
                dz = _restricted_entropy_grad_(z, off_set, g_h[rows].to(dtype), q_buf[:c])
                if temperature != 1.0:
                    dz.div_(temperature)
                if grad_h is not None:
                    grad_h[rows] = torch.mm(dz, w_c).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(dz.t(), h_c)
            del w_c, z_buf, q_buf, off_buf
        return grad_h, finish_weight_grad(grad_w, weight), None, None, None, None


def _kept_count(top_u: Tensor, log_sum: Tensor, p: float) -> Tensor:
    """``searchsorted(cumsum(top-k probs), p, side='left')`` per row: the size of the top-p set.

    ``top_u`` are the sorted top-k shifted logits and ``log_sum = logsumexp(u)``, so the probs
    are ``exp(top_u - log_sum)``.
    """
    cum = torch.exp(top_u - log_sum[:, None]).cumsum_(dim=-1)
    thresh = torch.full((cum.shape[0], 1), p, dtype=cum.dtype, device=cum.device)
    return torch.searchsorted(cum, thresh, side="left").squeeze(1)


def _sorted_prefix_entropy(top_z: Tensor, n_keep: Tensor) -> Tensor:
    """Entropy of ``softmax`` over the first ``n_keep`` entries of each row of sorted ``top_z`` (0 if empty)."""
    ranks = torch.arange(top_z.shape[1], device=top_z.device)
    keep = ranks[None, :] < n_keep[:, None]
    zs = top_z.masked_fill(~keep, float("-inf"))
    lse_s = torch.logsumexp(zs, dim=-1).masked_fill(n_keep == 0, 0.0)
    neg_log_q = (lse_s[:, None] - top_z).masked_fill(~keep, 0.0)  # -log q_v on S
    q = torch.exp(-neg_log_q).masked_fill(~keep, 0.0)
    return (q * neg_log_q).sum(dim=-1)


def _off_set_mask(z: Tensor, n_keep: Tensor, boundary: Tensor, out: Tensor) -> Tensor:
    """Boolean ``(c, V)`` mask of the tokens *outside* the top-p set (see the class docstring).

    Common case: ``S = {z >= z[boundary]}`` already has ``n_keep`` members. Rows where ties with
    the boundary logit make it larger are redone exactly: ``{z > thr}`` plus the first tied
    tokens by vocab id.
    """
    thr = z.gather(1, boundary[:, None])
    off = torch.lt(z, thr, out=out)
    bad = torch.nonzero(z.shape[1] - off.sum(dim=-1) != n_keep).squeeze(1)
    if bad.numel() > 0:
        zb, tb = z[bad], thr[bad]
        above, tied = zb > tb, zb == tb
        need = (n_keep[bad] - above.sum(dim=-1)).clamp(min=0)
        take_tied = tied & (tied.cumsum(dim=-1) <= need[:, None])
        off[bad] = ~(above | take_tied)
    return off


def _restricted_entropy_grad_(z: Tensor, off_set: Tensor, g: Tensor, q_buf: Tensor) -> Tensor:
    """``g * dH_S/dz = -g q_v (log q_v + H_S)`` on ``S``, 0 elsewhere; written into ``z``.

    ``q`` is the softmax of ``z`` restricted to ``S`` (``q_buf`` is a workspace).
    """
    zs = q_buf.copy_(z).masked_fill_(off_set, float("-inf"))
    row_max = zs.amax(dim=-1, keepdim=True)
    q = zs.sub_(row_max).exp_()  # 0 off the set
    total = q.sum(dim=-1, keepdim=True)
    q.div_(total)
    log_q = z.sub_(row_max + total.log()).masked_fill_(off_set, 0.0)
    h_s = -torch.einsum("ij,ij->i", q, log_q)
    return log_q.add_(h_s[:, None]).mul_(q).mul_(-g[:, None])


def chunked_top_p_entropy(
    hidden: Tensor,
    weight: Tensor,
    *,
    p: float = 0.8,
    top_k: int = 10000,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """SIREN top-p entropy (with gradient) and full-vocab entropy (detached), ``chunk_size`` tokens at a time.

    See the module docstring for the exact definition and its reading of the official code.
    Memory: the forward holds one chunk's ``(chunk, V)`` logits plus its ``(chunk, top_k)`` top-k;
    the backward recomputes logits only for rows with a non-empty set and a non-zero upstream
    gradient (most tokens of a confident policy have ``p_top1 >= p`` and cost nothing there).

    Args:
        hidden: ``(N, D)`` final hidden states; weight: ``(V, D)`` LM-head weight.
        p: cumulative-probability threshold (SIREN default 0.8).
        top_k: candidates considered (SIREN default 10000; clamped to ``V``).
        temperature: logits are divided by it before the softmax.
        chunk_size: rows per chunk.

    Returns:
        ``(top_p_entropy, full_entropy)``, each ``(N,)`` float32 (float64 for float64 inputs).
    """
    check_head_inputs(hidden, weight, temperature, chunk_size)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1]; got {p}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    return _ChunkedTopPEntropy.apply(hidden, weight, float(p), int(top_k), float(temperature), int(chunk_size))


def naive_top_p_entropy(
    logits: Tensor,
    *,
    p: float = 0.8,
    top_k: int = 10000,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Reference for :func:`chunked_top_p_entropy` on full ``(N, V)`` logits, with plain autograd.

    Sorts the whole vocabulary by probability, counts the leading ranks (within ``top_k``) whose
    cumulative probability is ``< p``, builds a vocabulary mask from them, and evaluates the
    official formula ``q = p_S / (sum_S p + 1e-12)``, ``H = -sum q log(q + 1e-12)``. Returns
    ``(top_p_entropy, full_entropy.detach())``.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    probs = torch.softmax(z, dim=-1)
    with torch.no_grad():
        full = torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1)
        k = min(top_k, z.shape[-1])
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        cum = sorted_probs[:, :k].cumsum(dim=-1)
        n_keep = (cum < p).sum(dim=-1)  # cum is non-decreasing, so this is searchsorted(left)
        mask = torch.zeros_like(probs, dtype=torch.bool)
        for i in range(z.shape[0]):
            mask[i, order[i, : int(n_keep[i])]] = True
    masked = probs * mask.to(probs.dtype)
    renorm = masked / (masked.sum(dim=-1, keepdim=True) + 1e-12)
    entropy = -(renorm * torch.log(renorm + 1e-12)).sum(dim=-1)
    return entropy, full.detach()
