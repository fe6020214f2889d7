"""Rows that share a prompt: one prompt forward + cache copies equals the full per-row forward, grads included."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.ops import last_hidden_states, response_hidden_states

PROMPTS = ["1 2 3>6=", "12 5 7>99=", "4>4="]


def _llama(tok):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _lora(tok):
    from rlvr.models.lora import apply_lora

    model = apply_lora(tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def _batch(tok, n=4, response_len=7):
    """Left-padded prompts, ``n`` rows each, random right-padded responses of varying length."""
    enc = tok([tok.bos_token + p for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(n, 0)
    mask = enc["attention_mask"].repeat_interleave(n, 0)
    gen = torch.Generator().manual_seed(0)
    response = torch.randint(5, 40, (ids.shape[0], response_len), generator=gen)
    lengths = torch.randint(1, response_len + 1, (ids.shape[0],), generator=gen)
    response_mask = (torch.arange(response_len)[None] < lengths[:, None]).long()
    response = torch.where(response_mask.bool(), response, torch.full_like(response, tok.pad_token_id))
    return torch.cat([ids, response], 1), torch.cat([mask, response_mask], 1), ids.shape[1], response_mask


@pytest.mark.parametrize("make", [lambda tok: tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64), _llama, _lora])
def test_shared_prompt_forward_equals_full_forward_with_gradients(make):
    tok = char_tokenizer()
    model = make(tok)
    ids, mask, prompt_len, response_mask = _batch(tok)
    body_calls = []
    body = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    handle = body.register_forward_hook(lambda *a: body_calls.append(1))
    shared = response_hidden_states(model, ids, mask, prompt_len)
    handle.remove()
    assert len(body_calls) == 2  # one prompt pass for the 3 distinct prompts, one response pass
    full = last_hidden_states(model, ids, mask)[:, prompt_len - 1 : -1]
    valid = response_mask.bool()
    assert torch.allclose(shared[valid], full[valid], atol=1e-5)

    weights = torch.randn(shared.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for hidden in (shared, full):
        model.zero_grad()
        (hidden[valid] * weights[valid]).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        scale = grads[1][name].abs().max()
        assert (grads[0][name] - grads[1][name]).abs().max() <= 1e-5 * scale + 1e-6, name


def test_distinct_prompts_take_the_plain_forward():
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    ids, mask, prompt_len, _ = _batch(tok, n=1)
    body_calls = []
    handle = model.model.register_forward_hook(lambda *a: body_calls.append(1))
    hidden = response_hidden_states(model, ids, mask, prompt_len)
    handle.remove()
    assert len(body_calls) == 1
    assert torch.equal(hidden, last_hidden_states(model, ids, mask)[:, prompt_len - 1 : -1])


def test_shared_prompt_gradients_are_bitwise_reproducible():
    """The copies' backward must not accumulate in a thread-dependent order (``x[index]`` does on CPU)."""
    tok = char_tokenizer()
    # big enough (48 rows x 2 kv heads x 17 x 32 > 32k elements) for CPU kernels to go parallel
    model = tiny_qwen2(tok, hidden_size=128, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    ids, mask, prompt_len, _ = _batch(tok, n=16, response_len=12)
    order = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(2))  # groups interleaved
    ids, mask = ids[order], mask[order]
    weights = torch.randn(ids.shape[0], 12, 128, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        grads = []
        for _ in range(4):
            model.zero_grad()
            (response_hidden_states(model, ids, mask, prompt_len) * weights).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
