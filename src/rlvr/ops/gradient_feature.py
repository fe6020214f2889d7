"""G2RL's last-layer sensitivity of each response: the mean of ``W^T (e_y - p)`` over its tokens, chunked, no grad.

G2RL (arXiv 2512.15687, "First-Order Sensitivity at the Last Layer") builds a per-response feature
from the gradient of the sampled tokens' log-probs with respect to the final hidden state. For
``z = (h @ W^T) / T`` and ``p = softmax(z)``::

    d log p(y) / d h = W^T (e_y - p) / T          (a D-vector; e_y the one-hot of the sampled token)

[INFERENCE: the paper's exact feature was not available.] The feature of response ``i`` is the
mean over its valid tokens of ``g_t = W^T (e_{y_t} - p_t)``, the gradient without the constant
``1 / T`` (a scale that the cosine comparisons downstream ignore), computed without a backward pass.
Because ``W^T`` is linear, ``sum_t g_t = W^T sum_t (e_{y_t} - p_t)``: the ``(e - p)`` residuals are
summed per response over ``chunk_size`` tokens at a time (one ``(chunk, V)`` workspace, as the other
kernels of :mod:`rlvr.ops`) and projected once, ``(rows, V) @ (V, D)``. Float32 compute (float64 for
float64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.ops.logprobs import check_head_inputs, chunk_logits, compute_dtype, no_autocast, workspace

__all__ = ["chunked_gradient_feature", "naive_gradient_feature"]


def chunked_gradient_feature(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    rows: Tensor,
    num_rows: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Tensor:
    """``(num_rows, D)``: row ``r``'s mean over its tokens ``{t : rows[t] = r}`` of ``W^T (e_{y_t} - p_t)`` (0 for a row without tokens).

    ``hidden`` (N, D) final hidden states, ``weight`` (V, D) LM-head weight, ``targets`` (N,) sampled
    token ids, ``rows`` (N,) the response each token belongs to.
    """
    check_head_inputs(hidden, weight, temperature, chunk_size)
    n, vocab = hidden.shape[0], weight.shape[0]
    if targets.shape != (n,) or rows.shape != (n,):
        raise ValueError(f"targets and rows must be ({n},); got {tuple(targets.shape)} and {tuple(rows.shape)}")
    dtype = compute_dtype(hidden, weight)
    with torch.no_grad(), no_autocast(hidden.device):
        w_c = weight.detach().to(dtype)
        residual = torch.zeros(num_rows, vocab, dtype=dtype, device=hidden.device)
        buf = workspace(min(chunk_size, max(n, 1)), vocab, dtype, hidden.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = chunk_logits(hidden[s:e].detach(), w_c, temperature, out=buf[: e - s])
            p = z.sub_(z.amax(dim=-1, keepdim=True)).exp_()
            p.div_(p.sum(dim=-1, keepdim=True)).neg_()
            p.scatter_add_(1, targets[s:e, None].long(), torch.ones((e - s, 1), dtype=dtype, device=hidden.device))
            residual.index_add_(0, rows[s:e].long(), p)
        counts = torch.bincount(rows.long(), minlength=num_rows).clamp_min(1).to(dtype)
        return (residual @ w_c) / counts[:, None]


def naive_gradient_feature(
    logits: Tensor, weight: Tensor, targets: Tensor, rows: Tensor, num_rows: int, *, temperature: float = 1.0
) -> Tensor:
    """Full-logit test oracle: per token ``(one_hot(y) - softmax(logits / T)) @ W``, averaged per row."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    g = (torch.nn.functional.one_hot(targets.long(), logits.shape[-1]).double() - p) @ weight.double()
    sums = torch.zeros(num_rows, weight.shape[1], dtype=torch.float64, device=g.device).index_add_(0, rows.long(), g)
    return sums / torch.bincount(rows.long(), minlength=num_rows).clamp_min(1).double()[:, None]
