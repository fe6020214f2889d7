"""chunked_minp_logprobs (Lp-Reg min-p proxy) against the official-style full-logit oracle and by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.ops.minp import FILTERED_LOGIT, chunked_minp_logprobs, naive_minp_logprobs


def _inputs(n: int, d: int, v: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=gen) * 2.0).to(dtype)
    weight = (torch.randn(v, d, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    # every other target is the most likely token, so that kept and filtered targets both occur
    top = (hidden.double() @ weight.double().t()).argmax(dim=-1)
    targets[::2] = top[::2]
    return hidden, weight, targets


def test_hand_computed_three_token_vocab() -> None:
    # identity head: logits = hidden. z = [log 4, log 2, log 0.05] -> p proportional to [4, 2, 0.05]
    # kappa = 0.1: keep p_v >= 0.1 * p_max, i.e. relative weight >= 0.4 -> keep tokens 0 and 1 only.
    hidden = torch.tensor([[math.log(4.0), math.log(2.0), math.log(0.05)]] * 3)
    weight = torch.eye(3)
    targets = torch.tensor([0, 1, 2])
    got = chunked_minp_logprobs(hidden, weight, targets, kappa=0.1, chunk_size=2)
    lse_kept = math.log(6.0)
    assert got[0].item() == pytest.approx(math.log(4.0 / 6.0), abs=1e-6)
    assert got[1].item() == pytest.approx(math.log(2.0 / 6.0), abs=1e-6)
    assert got[2].item() == pytest.approx(FILTERED_LOGIT - lse_kept, abs=1e-2)
    # kappa = 0 keeps everything: the ordinary log-probs
    plain = chunked_minp_logprobs(hidden, weight, targets, kappa=0.0)
    assert plain.tolist() == pytest.approx([math.log(4 / 6.05), math.log(2 / 6.05), math.log(0.05 / 6.05)], abs=1e-6)


@pytest.mark.parametrize(("chunk", "temperature", "kappa"), [(1, 1.0, 0.02), (7, 0.7, 0.1), (64, 1.3, 0.5), (5, 1.0, 1.0)])
def test_matches_naive(chunk: int, temperature: float, kappa: float) -> None:
    hidden, weight, targets = _inputs(37, 16, 503)
    got = chunked_minp_logprobs(hidden, weight, targets, kappa=kappa, temperature=temperature, chunk_size=chunk)
    ref = naive_minp_logprobs(hidden.double() @ weight.double().t(), targets, kappa=kappa, temperature=temperature)
    assert got.dtype == torch.float32 and not got.requires_grad
    kept = ref > FILTERED_LOGIT / 2
    assert 0 < int(kept.sum()) <= 37
    assert torch.allclose(got.double()[kept], ref[kept], atol=1e-5)
    # filtered targets: -1e4 - lse_kept (float32 resolution at 1e4 is ~1e-3)
    assert torch.allclose(got.double()[~kept], ref[~kept], atol=5e-3)
    if kappa < 1.0:
        assert int((~kept).sum()) > 0, "test inputs should filter some sampled tokens"


def test_proxy_is_at_least_policy_logprob_for_kept_tokens() -> None:
    hidden, weight, targets = _inputs(50, 8, 97, seed=3)
    proxy = chunked_minp_logprobs(hidden, weight, targets, kappa=0.05, chunk_size=16)
    logp = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    kept = proxy > FILTERED_LOGIT / 2
    # renormalising over a subset can only raise a kept token's probability
    assert (proxy[kept] >= logp[kept] - 1e-6).all()


def test_float64_and_validation() -> None:
    hidden, weight, targets = _inputs(9, 4, 31, dtype=torch.float64)
    got = chunked_minp_logprobs(hidden, weight, targets, kappa=0.2, chunk_size=4)
    assert got.dtype == torch.float64
    ref = naive_minp_logprobs(hidden @ weight.t(), targets, kappa=0.2)
    assert torch.allclose(got, ref, atol=1e-9)
    with pytest.raises(ValueError, match="kappa"):
        chunked_minp_logprobs(hidden, weight, targets, kappa=1.5)
    with pytest.raises(ValueError, match="targets"):
        chunked_minp_logprobs(hidden, weight, targets[:3])
    assert chunked_minp_logprobs(hidden[:0], weight, targets[:0]).shape == (0,)
