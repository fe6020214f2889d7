"""chunked_self_certainty (UCAS) against a full-logit oracle, and the new policy_forward fields."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.ops.certainty import chunked_self_certainty, naive_self_certainty
from rlvr.ops.minp import naive_minp_logprobs


def test_hand_computed() -> None:
    # identity head, V = 2, logits [0, log 3]: lse = log 4, mean = log(3)/2 -> c = log 4 - log(3)/2
    hidden = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    weight = torch.eye(2)
    certainty, raw = chunked_self_certainty(hidden, weight, torch.tensor([1, 0]), temperature=1.0, chunk_size=1)
    assert certainty is not None
    assert certainty[0].item() == pytest.approx(math.log(4.0) - math.log(3.0) / 2, abs=1e-6)
    # uniform distribution: c = log V (its minimum)
    assert certainty[1].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert raw.tolist() == pytest.approx([math.log(3.0), 1.0], abs=1e-6)
    # temperature 2 halves the logits for c but not the raw logit
    c2, raw2 = chunked_self_certainty(hidden, weight, torch.tensor([1, 0]), temperature=2.0)
    assert c2 is not None
    assert c2[0].item() == pytest.approx(math.log(1.0 + math.sqrt(3.0)) - math.log(3.0) / 4, abs=1e-6)
    assert torch.equal(raw2, raw)


@pytest.mark.parametrize(("chunk", "temperature"), [(1, 1.0), (6, 0.6), (100, 1.4)])
def test_matches_naive(chunk: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(23, 12, generator=gen) * 2
    weight = torch.randn(301, 12, generator=gen) * 0.4
    targets = torch.randint(0, 301, (23,), generator=gen)
    certainty, raw = chunked_self_certainty(hidden, weight, targets, temperature=temperature, chunk_size=chunk)
    ref_c, ref_raw = naive_self_certainty(hidden.double() @ weight.double().t(), targets, temperature=temperature)
    assert certainty is not None and certainty.dtype == torch.float32
    assert torch.allclose(certainty.double(), ref_c, atol=1e-4)
    assert torch.allclose(raw.double(), ref_raw, atol=1e-4)
    assert (certainty >= math.log(301) - 1e-4).all()
    none_c, raw_only = chunked_self_certainty(hidden, weight, targets, chunk_size=chunk, with_certainty=False)
    assert none_c is None and torch.allclose(raw_only, raw)


def test_policy_forward_new_fields() -> None:
    """minp_logprobs / self_certainty / raw_logit from the tiny model match full-logit oracles."""
    from rlvr.models.tiny import char_tokenizer, tiny_qwen2
    from rlvr.rollout.base import RolloutBatch
    from rlvr.ops.forward import QUANTITIES, MinPProxy, RawLogit, SelfCertainty, policy_forward

    assert {"minp_logprobs", "self_certainty", "raw_logit"} <= set(QUANTITIES)
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=0)
    gen = torch.Generator().manual_seed(0)
    prompt_len, width = 3, 5
    ids = torch.randint(3, len(tok), (2, prompt_len + width), generator=gen)
    attention = torch.ones_like(ids)
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0]])
    batch = RolloutBatch(
        input_ids=ids, attention_mask=attention, prompt_len=prompt_len, response_mask=mask,
        responses=["", ""], truncated=torch.tensor([True, False]), group_ids=torch.tensor([0, 0]),
    )
    temperature, kappa = 0.8, 0.1
    with torch.no_grad():
        out = policy_forward(
            model, batch, temperature=temperature, chunk_size=3,
            quantities=[MinPProxy(kappa=kappa), SelfCertainty(), RawLogit()],
        )
        logits = model(input_ids=ids, attention_mask=attention).logits[:, prompt_len - 1 : -1].double()
    targets = ids[:, prompt_len:]
    ref_minp = naive_minp_logprobs(logits, targets, kappa=kappa, temperature=temperature)
    ref_c, ref_raw = naive_self_certainty(logits, targets, temperature=temperature)
    valid = mask.bool()
    for name, ref, tol in (("minp_logprobs", ref_minp, 5e-3), ("self_certainty", ref_c, 1e-4), ("raw_logit", ref_raw, 1e-4)):
        got = out[name]
        assert got.shape == (2, width) and not got.requires_grad, name
        assert (got.double()[valid] - ref[valid]).abs().max() <= tol, name
        assert (got[~valid] == 0).all(), name
