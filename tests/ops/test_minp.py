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


def test_filter_uses_the_raw_logits_then_the_temperature() -> None:
    # official apply_min_p (CarlanLark/Lp-Reg-dev verl/workers/actor/dp_actor.py) filters the raw logits,
    # then the forward divides them by T. Logits l = [0, -1, -3]: raw p_v / p_max = [1, 0.368, 0.050].
    hidden = torch.tensor([[0.0, -1.0, -3.0]] * 3)
    weight = torch.eye(3)
    targets = torch.tensor([0, 1, 2])
    # T = 0.5, kappa = 0.2: raw keeps tokens 0, 1; the scaled ratios [1, 0.135, 0.002] would keep token 0 only.
    # z' = [0, -2, -1e4 / 0.5]; lse = log(1 + e^-2) = 0.126928
    got = chunked_minp_logprobs(hidden, weight, targets, kappa=0.2, temperature=0.5, chunk_size=2)
    lse = math.log(1.0 + math.exp(-2.0))
    assert got[0].item() == pytest.approx(-lse, abs=1e-6)  # -0.126928
    assert got[1].item() == pytest.approx(-2.0 - lse, abs=1e-6)  # -2.126928
    assert got[2].item() == pytest.approx(FILTERED_LOGIT / 0.5 - lse, abs=1e-2)  # -20000.127
    # T = 2, kappa = 0.2: raw keeps tokens 0, 1 (0.050 < 0.2); the scaled ratios [1, 0.607, 0.223] would keep
    # token 2 as well. z' = [0, -0.5, -1e4 / 2]; lse = log(1 + e^-0.5) = 0.474077
    got = chunked_minp_logprobs(hidden, weight, targets, kappa=0.2, temperature=2.0)
    lse = math.log(1.0 + math.exp(-0.5))
    assert got[0].item() == pytest.approx(-lse, abs=1e-6)  # -0.474077
    assert got[1].item() == pytest.approx(-0.5 - lse, abs=1e-6)  # -0.974077
    assert got[2].item() == pytest.approx(FILTERED_LOGIT / 2.0 - lse, abs=1e-2)  # -5000.474
    ref = naive_minp_logprobs(hidden, targets, kappa=0.2, temperature=2.0)
    assert torch.allclose(got, ref, atol=1e-3)


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
