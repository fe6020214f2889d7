"""G2RL's gradient feature: a hand value, the chunked kernel against the full-logit oracle, the oracle
against autograd (it is the last-layer gradient of log pi times T), and the forward quantity on a model."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.ops import last_hidden_states
from rlvr.ops.forward import GradientFeature, policy_forward, quantity_field
from rlvr.ops.gradient_feature import chunked_gradient_feature, naive_gradient_feature
from rlvr.rollout.base import RolloutBatch


def test_hand_value() -> None:
    # V = 2, D = 1, h = 1, W = [[1], [0]], target 0: p = (e, 1) / (e + 1), W^T (e_0 - p) = 1 - e / (e + 1) = 1 / (e + 1)
    got = chunked_gradient_feature(torch.tensor([[1.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([0]), torch.tensor([0]), 1)
    assert got.flatten().tolist() == pytest.approx([1.0 / (math.e + 1.0)], rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_equals_full_logits(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(7, 5, generator=gen), torch.randn(11, 5, generator=gen)
    targets = torch.randint(0, 11, (7,), generator=gen)
    rows = torch.tensor([0, 0, 0, 2, 2, 3, 3])  # row 1 has no tokens: its feature is 0
    got = chunked_gradient_feature(hidden, weight, targets, rows, 4, temperature=0.7, chunk_size=chunk_size)
    expected = naive_gradient_feature(hidden @ weight.T, weight, targets, rows, 4, temperature=0.7)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert got[1].abs().max() == 0


def test_oracle_is_the_last_layer_gradient_of_the_logprob() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    targets = torch.tensor([1, 5, 0, 2])
    temperature = 1.3
    logp = torch.log_softmax(hidden @ weight.T / temperature, dim=-1).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(logp, hidden)
    rows = torch.arange(4)
    per_token = naive_gradient_feature(hidden.detach() @ weight.T, weight, targets, rows, 4, temperature=temperature)
    assert torch.allclose(per_token / temperature, grad, atol=1e-10)


def test_forward_quantity_on_a_model_equals_full_logits() -> None:
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).eval()
    enc = tok(["<bos>1 2>", "<bos>34>"], add_special_tokens=False, return_tensors="pt", padding=True)
    response = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]])
    rmask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    batch = RolloutBatch(
        input_ids=torch.cat([enc["input_ids"], response], 1),
        attention_mask=torch.cat([enc["attention_mask"], rmask.long()], 1),
        prompt_len=enc["input_ids"].shape[1],
        response_mask=rmask,
        responses=["", ""],
        truncated=torch.tensor([False, False]),
        group_ids=torch.tensor([0, 0]),
    )
    with torch.no_grad():
        got = policy_forward(model, batch, temperature=0.8, chunk_size=2, quantities=[GradientFeature()])["gradient_feature"]
        hidden = last_hidden_states(model, batch.input_ids, batch.attention_mask)[:, batch.prompt_len - 1 : -1]
    valid = rmask.bool()
    weight = model.get_output_embeddings().weight.detach()
    logits = model.get_output_embeddings()(hidden[valid])
    expected = naive_gradient_feature(logits, weight, response[valid], valid.nonzero()[:, 0], 2, temperature=0.8)
    assert got.shape == (2, 32)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    # the rollout policy's only: no current-policy field
    assert quantity_field("old_gradient_feature") == (GradientFeature, True)
    assert quantity_field("gradient_feature") is None
