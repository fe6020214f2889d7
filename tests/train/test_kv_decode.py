"""rlvr's KV-cache sampling loop against transformers ``generate`` and its logits processors."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.generation.logits_process import (
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.rollout.hf import HFRollout
from rlvr.models.architecture import is_full_attention_llama
from rlvr.rollout.kv_decode import KVDecoder, sample_categorical, warp_logits

PROMPTS = ["1 2 3>6=", "12 5 7>99=", "4>4=", "33 44 55 66>100=", "8 9>17=", "70 2>35=", "5 5 5>125=", "9 1 4>36="]


def _small(cls, config_cls, tok, **extra):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra,
    )  # fmt: skip
    return cls(config).eval()


def _spread_weights(model):
    """Larger random weights than the 0.02 init, so greedy continuations differ between prompts."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def _models(tok):
    models = {
        "qwen2": tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64).eval(),
        "qwen2_mha": tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64).eval(),
        "llama": _small(LlamaForCausalLM, LlamaConfig, tok, attention_bias=True),
        "qwen3": _small(Qwen3ForCausalLM, Qwen3Config, tok, head_dim=8),
    }
    return {name: _spread_weights(model) for name, model in models.items()}


def _encode(tok, prompts, n=3):
    enc = tok([tok.bos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)


def _staggered_eos(model, ids, mask, tok):
    """A token whose first greedy occurrence varies most across rows, used as EOS so rows end at different steps."""
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    response = out[:, ids.shape[1] :]

    def spread(token: int) -> int:
        hit = response == token
        return len({int(row.int().argmax()) if row.any() else -1 for row in hit})

    return max(sorted(set(response.flatten().tolist())), key=spread)


@pytest.mark.parametrize("name", ["qwen2", "qwen2_mha", "llama", "qwen3"])
def test_greedy_tokens_equal_generate(name):
    """Left padding, GQA, biases, Qwen3 q/k norms, rows finishing early (cache compaction)."""
    tok = char_tokenizer()
    model = _models(tok)[name]
    assert is_full_attention_llama(model)
    ids, mask = _encode(tok, PROMPTS)
    eos = _staggered_eos(model, ids, mask, tok)
    with torch.no_grad():
        expected = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
            pad_token_id=tok.pad_token_id, eos_token_id=eos,
        )[:, ids.shape[1] :]  # fmt: skip
    got = KVDecoder(model).sample(ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=tok.pad_token_id, greedy=True)
    finished_at = [int(row.int().argmax()) if row.any() else -1 for row in expected == eos]
    assert len(set(finished_at)) > 2  # rows really end at different steps
    assert torch.equal(got, expected)


def test_lora_model_decodes_through_its_adapters():
    from rlvr.models.lora import apply_lora

    tok = char_tokenizer()
    model = apply_lora(tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # non-zero adapters change the outputs
    model.eval()
    ids, mask = _encode(tok, PROMPTS, n=1)
    kwargs = dict(max_new_tokens=10, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, greedy=True)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id)
        with model.disable_adapter():
            base = KVDecoder(model).sample(ids, mask, **kwargs)
    got = KVDecoder(model).sample(ids, mask, **kwargs)
    assert torch.equal(got, expected[:, ids.shape[1] :])
    assert not torch.equal(got, base)


def test_sliding_window_models_fall_back_to_generate():
    tok = char_tokenizer()
    mistral = _small(MistralForCausalLM, MistralConfig, tok, sliding_window=4)
    assert not is_full_attention_llama(mistral)
    torch.manual_seed(0)
    batch = HFRollout(tok, "off").generate(mistral, PROMPTS[:2], n=2, max_new_tokens=5)
    assert batch.input_ids.shape[0] == 4
    with pytest.raises(ValueError, match="not supported"):
        KVDecoder(mistral)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.6, 7, 0.5), (1.0, 200, 0.3)]
)
def test_warp_logits_equals_transformers_processors(temperature, top_k, top_p):
    torch.manual_seed(1)
    logits = torch.randn(6, 50) * 3
    suppress = [0, 3]
    ids = torch.zeros(6, 1, dtype=torch.long)
    expected = SuppressTokensLogitsProcessor(suppress)(ids, logits.clone())
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(ids, expected)
    if top_k:
        expected = TopKLogitsWarper(top_k)(ids, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(ids, expected)
    got = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, suppress_ids=suppress)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(got[finite], expected[finite])


def test_sample_categorical_matches_probabilities_and_skips_zeros():
    torch.manual_seed(0)
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    draws = sample_categorical(probs.expand(200_000, -1).contiguous())
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert (freq[probs == 0] == 0).all()
    assert torch.allclose(freq, probs, atol=0.005)


def test_sampled_first_tokens_follow_the_model_distribution():
    """The first sampled token of many identical rows has the model's softmax(logits / T) frequencies."""
    tok = char_tokenizer()
    model = _models(tok)["qwen2"]
    ids, mask = _encode(tok, ["12 5 7>99="], n=20_000)
    temperature = 0.8
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1]
    suppress = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    probs = torch.softmax(warp_logits(logits[None], temperature=temperature, suppress_ids=suppress), -1)[0]
    torch.manual_seed(0)
    first = KVDecoder(model).sample(
        ids, mask, max_new_tokens=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        temperature=temperature, suppress_ids=suppress,
    )[:, 0]  # fmt: skip
    freq = torch.bincount(first, minlength=len(tok)).float() / len(first)
    assert (freq[probs == 0] == 0).all()
    assert (freq - probs).abs().max() < 0.012


def test_sampled_second_tokens_follow_the_model_distribution():
    """The second sampled token is warped like the first: its frequencies over many identical rows are
    ``sum_a p(a) softmax(logits(prompt + a) / T)``, with ``p(a)`` the first token's distribution and
    both computed by plain forwards (T = 0.5 here moves that marginal by up to 0.17 from T = 1)."""
    tok = char_tokenizer()
    model = _models(tok)["qwen2"]
    ids, mask = _encode(tok, ["12 5 7>99="], n=1)
    temperature = 0.5
    suppress = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id, tok.eos_token_id]  # no row ends early
    vocab = len(tok)
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask).logits[0, -1]
        p_first = torch.softmax(warp_logits(first[None], temperature=temperature, suppress_ids=suppress), -1)[0]
        extended = torch.cat([ids.expand(vocab, -1), torch.arange(vocab)[:, None]], 1)  # prompt + each first token
        second = model(input_ids=extended, attention_mask=torch.ones_like(extended)).logits[:, -1]
    p_second = torch.softmax(warp_logits(second, temperature=temperature, suppress_ids=suppress), -1)
    expected = (p_first[:, None] * p_second).sum(0)
    torch.manual_seed(0)
    out = KVDecoder(model).sample(
        ids, mask, n=20_000, max_new_tokens=2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        temperature=temperature, suppress_ids=suppress,
    )  # fmt: skip
    assert out.shape == (20_000, 2)
    freq = torch.bincount(out[:, 1], minlength=vocab).float() / out.shape[0]
    assert (freq[expected == 0] == 0).all()
    assert (freq - expected).abs().max() < 0.012


def test_hf_rollout_uses_kv_decoder_and_generate_agree_greedily():
    tok = char_tokenizer()
    model = _models(tok)["qwen2"]
    fast = HFRollout(tok, "off").generate(model, PROMPTS, n=2, max_new_tokens=9, greedy=True)
    slow = HFRollout(tok, "off", kv_decode=False).generate(model, PROMPTS, n=2, max_new_tokens=9, greedy=True)
    assert torch.equal(fast.input_ids, slow.input_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    assert fast.responses == slow.responses


def test_shared_prefill_equals_repeated_prompts():
    tok = char_tokenizer()
    model = _models(tok)["llama"]
    once, mask_once = _encode(tok, PROMPTS, n=1)
    kwargs = dict(max_new_tokens=10, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, greedy=True)
    shared = KVDecoder(model).sample(once, mask_once, n=3, **kwargs)
    repeated = KVDecoder(model).sample(*_encode(tok, PROMPTS, n=3), **kwargs)
    assert torch.equal(shared, repeated)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("name", ["qwen2", "llama", "qwen3"])
def test_step_logits_equal_the_full_forward(name, dtype, tol):
    """Prefill and one cached decoding step give the logits of a plain forward over the whole sequence."""
    tok = char_tokenizer()
    model = _models(tok)[name].to(dtype)
    ids, mask = _encode(tok, PROMPTS, n=1)
    decoder = KVDecoder(model)
    with torch.no_grad():
        cache, logits, next_pos = decoder._prefill(ids, mask, ids.shape[1] + 1)
        nxt = logits.argmax(-1)
        bias = cache.key_bias[:, None, None, None, :]
        step = decoder._forward(nxt[:, None], next_pos[:, None], cache, ids.shape[1], bias)
        full_ids = torch.cat([ids, nxt[:, None]], 1)
        full_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
        expected = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits[:, -2:].float()
    scale = expected.abs().max()
    assert (logits.float() - expected[:, 0]).abs().max() <= tol * scale
    assert (step.float() - expected[:, 1]).abs().max() <= tol * scale
