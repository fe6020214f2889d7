"""chunked_top_p_entropy (SIREN) against the full-logit oracle and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rlvr.ops import chunked_top_p_entropy, naive_logprobs_entropy, naive_top_p_entropy

TOL = 1e-5


def _inputs(n: int, d: int, v: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 0.35):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen)
    hidden[: n // 3] *= 3.0  # a third of the rows peaked enough that the top-p set is often empty
    weight = torch.randn(v, d, generator=gen) * scale
    g = torch.randn(n, generator=gen)
    return hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(), g


def _chunked(hidden: Tensor, weight: Tensor, g: Tensor, **kw):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    top_p, full = chunked_top_p_entropy(hidden, weight, **kw)
    assert not full.requires_grad
    (g * top_p).sum().backward()
    return top_p.detach(), full, hidden.grad, weight.grad


def _naive(hidden: Tensor, weight: Tensor, g: Tensor, *, chunk_size: int = 0, **kw):
    del chunk_size
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    top_p, full = naive_top_p_entropy(hidden @ weight.t(), **kw)
    (g.to(top_p.dtype) * top_p).sum().backward()
    return top_p.detach(), full, hidden.grad, weight.grad


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _tol(ref: Tensor) -> float:
    return TOL * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize(
    ("n", "v", "chunk", "temperature", "p", "top_k"),
    [
        (40, 3001, 7, 0.7, 0.8, 10000),
        (40, 3001, 64, 1.0, 0.5, 3001),
        (40, 3001, 1, 1.3, 0.8, 50),  # top_k < V: the top-k often never reach p -> all k kept
        (31, 5000, 16, 0.6, 0.9, 1000),
    ],
)
def test_matches_naive(n: int, v: int, chunk: int, temperature: float, p: float, top_k: int) -> None:
    hidden, weight, g = _inputs(n, 32, v)
    kw = {"p": p, "top_k": top_k, "temperature": temperature, "chunk_size": chunk}
    got = _chunked(hidden, weight, g, **kw)
    ref32 = _naive(hidden, weight, g, **kw)
    exact = _naive(hidden.double(), weight.double(), g.double(), **kw)
    n_empty = int((got[0] == 0).sum())
    assert 0 < n_empty < n, "test inputs should mix empty and non-empty top-p sets"
    names = ("top_p_entropy", "full_entropy", "grad_hidden", "grad_weight")
    for name, a, b, e in zip(names, got, ref32, exact, strict=True):
        assert a.dtype == torch.float32, name
        assert _max_diff(a, e) <= _tol(e), f"{name} vs float64: {_max_diff(a, e)}"
        assert _max_diff(a, b) <= _tol(e), f"{name} vs fp32 naive: {_max_diff(a, b)}"
    # the detached full entropy is the ordinary full-vocab entropy
    dummy_targets = torch.zeros(n, dtype=torch.long)
    _, ent = naive_logprobs_entropy(hidden.double(), weight.double(), dummy_targets, temperature=temperature)
    assert _max_diff(got[1], ent) <= _tol(ent)


def test_gradcheck_float64() -> None:
    hidden, weight, _ = _inputs(12, 6, 40, dtype=torch.float64, scale=1.0)

    def fn(h: Tensor, w: Tensor) -> Tensor:
        return chunked_top_p_entropy(h, w, p=0.7, top_k=30, temperature=0.9, chunk_size=5)[0]

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def _head_from_probs(probs: list[float]) -> tuple[Tensor, Tensor]:
    """hidden (1, V) and identity weight (V, V) so that the logits are log(probs)."""
    logits = torch.tensor([probs]).log()
    return logits.clone().requires_grad_(), torch.eye(len(probs)).requires_grad_()


def test_crossing_token_is_excluded() -> None:
    """probs (0.5, 0.3, 0.2): cumulative (0.5, 0.8, 1.0)."""
    hidden, weight = _head_from_probs([0.5, 0.3, 0.2])
    # p = 0.7: token 2 crosses p and is excluded -> S = {top1} -> H = 0
    h, _ = chunked_top_p_entropy(hidden, weight, p=0.7)
    assert h.item() == 0.0
    # p = 0.85: token 3 crosses -> S = {0.5, 0.3} renormalised to (5/8, 3/8)
    h, _ = chunked_top_p_entropy(hidden, weight, p=0.85)
    expected = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    assert abs(h.item() - expected) <= 1e-6
    # p = 0.4 < p_top1: empty set
    h, _ = chunked_top_p_entropy(hidden, weight, p=0.4)
    assert h.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cumulative_mass_equal_to_p_excludes_the_token_that_reaches_it(dtype: torch.dtype) -> None:
    """A cumulative mass exactly ``p`` (dyadic probs, so the cumsum is exact): that token is out.

    The definition keeps the ranks whose cumulative probability is strictly below ``p``
    (``searchsorted`` left side). probs (0.5, 0.25, 0.25), p = 0.75: c = (0.5, 0.75, 1.0), so
    S = {0.5} and H = 0 (keeping the 0.25 that reaches 0.75 would give
    ``log 3 - (2/3) log 2 = 0.6365``). probs (0.25, 0.25, 0.25, 0.125, 0.125), p = 0.75:
    c = (0.25, 0.5, 0.75, ...), so S = the first two 0.25s, q = (1/2, 1/2), H = log 2
    (not log 3).
    """
    for probs, expected in (([0.5, 0.25, 0.25], 0.0), ([0.25, 0.25, 0.25, 0.125, 0.125], math.log(2))):
        hidden = torch.tensor([probs], dtype=dtype).log().requires_grad_()  # identity head: logits = log(probs)
        weight = torch.eye(len(probs), dtype=dtype).requires_grad_()
        sorted_probs = torch.softmax(hidden @ weight.t(), -1).sort(descending=True).values
        assert (sorted_probs.cumsum(-1) == 0.75).any()  # the boundary case really is exact
        h, _ = chunked_top_p_entropy(hidden, weight, p=0.75)
        assert abs(h.item() - expected) <= 1e-6, probs
        ref, _ = naive_top_p_entropy(hidden.detach() @ weight.detach().t(), p=0.75)
        assert abs(ref.item() - expected) <= 1e-6, probs


def test_ties_at_the_boundary() -> None:
    """probs (0.2, 0.4, 0.2, 0.2), p = 0.7: S = {0.4, one 0.2}; ties go to the lowest vocab id like the oracle."""
    hidden, weight = _head_from_probs([0.2, 0.4, 0.2, 0.2])
    h, _ = chunked_top_p_entropy(hidden, weight, p=0.7)
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert abs(h.item() - expected) <= 1e-6
    h.sum().backward()
    hidden_n, weight_n = _head_from_probs([0.2, 0.4, 0.2, 0.2])
    ref, _ = naive_top_p_entropy(hidden_n @ weight_n.t(), p=0.7)
    ref.sum().backward()
    assert _max_diff(hidden.grad, hidden_n.grad) <= TOL and _max_diff(weight.grad, weight_n.grad) <= TOL
    assert hidden.grad[0, 2:].abs().max() == 0  # the untaken tied tokens get no gradient


def test_peaked_distribution_zero_entropy_and_grad() -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(500, 16, generator=gen).requires_grad_()
    targets = torch.randint(0, 500, (10,), generator=gen)
    hidden = (5.0 * weight.detach()[targets]).requires_grad_()  # the target logit dominates
    top_p, full = chunked_top_p_entropy(hidden, weight, p=0.8, chunk_size=3)
    assert torch.equal(top_p, torch.zeros(10)) and (full >= 0).all()
    (torch.randn(10, generator=gen) * top_p).sum().backward()
    assert not hidden.grad.any() and not weight.grad.any()


def test_uniform_distribution() -> None:
    """All logits equal over V = 1001: S = the first ranks with (r+1)/V < p; H = log|S|, grad 0."""
    v = 1001
    hidden = torch.zeros(4, 8, requires_grad=True)
    weight = torch.randn(v, 8, generator=torch.Generator().manual_seed(4)).requires_grad_()
    top_p, full = chunked_top_p_entropy(hidden, weight, p=0.8, top_k=v, chunk_size=3)
    assert torch.allclose(top_p, torch.full((4,), math.log(800)), atol=1e-5)
    assert torch.allclose(full, torch.full((4,), math.log(v)), atol=1e-5)
    ref, _ = naive_top_p_entropy(hidden @ weight.t(), p=0.8, top_k=v)
    assert _max_diff(top_p, ref) <= TOL
    top_p.sum().backward()
    assert hidden.grad.abs().max() <= 1e-5 and weight.grad.abs().max() <= 1e-5
    # top_k = 300 < |S|: every one of the top-k is kept
    top_p, _ = chunked_top_p_entropy(hidden, weight, p=0.8, top_k=300)
    assert torch.allclose(top_p, torch.full((4,), math.log(300)), atol=1e-5)


def test_bf16_inputs() -> None:
    hidden, weight, g = _inputs(30, 32, 2000, dtype=torch.bfloat16)
    kw = {"p": 0.8, "top_k": 500, "temperature": 0.8}
    got = _chunked(hidden, weight, g, chunk_size=8, **kw)
    ref = _naive(hidden.float(), weight.float(), g, **kw)
    assert got[0].dtype == torch.float32 and got[2].dtype == got[3].dtype == torch.bfloat16
    assert _max_diff(got[0], ref[0]) <= 1e-4 and _max_diff(got[1], ref[1]) <= 1e-4
    for a, b in zip(got[2:], ref[2:], strict=True):
        assert _max_diff(a, b) <= 1e-2 * b.abs().max().item()


def test_frozen_weight_and_zero_upstream_rows() -> None:
    hidden, weight, g = _inputs(20, 16, 400)
    g[::2] = 0.0  # rows with zero upstream gradient are skipped in backward
    weight = weight.detach()
    hidden_c = hidden.detach().clone().requires_grad_()
    top_p, _ = chunked_top_p_entropy(hidden_c, weight, chunk_size=4)
    (g * top_p).sum().backward()
    hidden_n = hidden.detach().clone().requires_grad_()
    ref, _ = naive_top_p_entropy(hidden_n @ weight.t())
    (g * ref).sum().backward()
    assert _max_diff(top_p, ref) <= TOL and _max_diff(hidden_c.grad, hidden_n.grad) <= TOL


def test_bad_arguments() -> None:
    hidden, weight, _ = _inputs(3, 8, 50)
    with pytest.raises(ValueError, match="p must be"):
        chunked_top_p_entropy(hidden, weight, p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        chunked_top_p_entropy(hidden, weight, top_k=0)
