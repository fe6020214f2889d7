"""The tiny masked diffusion model: bidirectional before and after a save/load, its mask token, its warm start."""

from __future__ import annotations

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.models.architecture import is_full_attention_llama
from rlvr.models.build import build_model_and_tokenizer
from rlvr.models.loading import load_model_and_tokenizer
from rlvr.models.mdlm import MASK, is_mdlm, masked_diffusion_loss, response_logits
from rlvr.tasks.base import Problem
from rlvr.train.config import ModelConfig, TinyModelConfig
from rlvr.train.warmstart import mdlm_sft_batch

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


def tiny_mdlm(kind: str = "mdlm", **kwargs):
    return build_model_and_tokenizer(ModelConfig(kind=kind, tiny=TINY, **kwargs))


def first_position_moves(model, padded: bool) -> float:
    """How much response position 0's logits move when only the last response token changes."""
    ids = torch.tensor([[1, 20, 21, 22, 30, 31, 32, 33]])
    mask = torch.ones_like(ids)
    if padded:  # a left-padded row next to it: transformers then materialises a padding mask
        ids = torch.cat([ids, torch.tensor([[0, 0, 21, 22, 30, 31, 32, 33]])])
        mask = torch.cat([mask, torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])])
    changed = ids.clone()
    changed[:, -1] = 40
    model.eval()
    with torch.no_grad():
        a = response_logits(model, ids, mask, 4)[0, 0]
        b = response_logits(model, changed, mask, 4)[0, 0]
    return float((a - b).abs().max())


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
def test_the_mdlm_attends_both_ways_the_causal_model_does_not(padded):
    model, tokenizer = tiny_mdlm()
    assert tokenizer.mask_token == MASK and tokenizer.mask_token_id == 104 and len(tokenizer) == 105
    assert model.config.is_causal is False and model.config.mask_token_id == 104 and is_mdlm(model)
    assert first_position_moves(model, padded) > 1e-4
    causal, _ = tiny_mdlm("causal")
    assert first_position_moves(causal, padded) == 0.0


def test_a_saved_mdlm_loads_back_bidirectional(tmp_path):
    model, tokenizer = tiny_mdlm()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path))  # the path rlvr eval takes
    assert loaded_tok.mask_token_id == 104 and loaded.config.mask_token_id == 104
    assert first_position_moves(loaded, padded=False) > 1e-4
    rebuilt, _ = build_model_and_tokenizer(ModelConfig(path=str(tmp_path), kind="mdlm"))
    assert first_position_moves(rebuilt, padded=False) == pytest.approx(first_position_moves(model, padded=False))
    with pytest.raises(ConfigError, match="model.kind=mdlm"):
        build_model_and_tokenizer(ModelConfig(path=str(tmp_path)))


def test_the_kv_cache_fast_paths_skip_a_bidirectional_model():
    model, _ = tiny_mdlm()
    causal, _ = tiny_mdlm("causal")
    assert is_full_attention_llama(causal) and not is_full_attention_llama(model)


def test_mdlm_sft_batch_left_pads_prompts_and_fills_the_response_with_eos():
    tokenizer = build_model_and_tokenizer(ModelConfig(kind="mdlm", tiny=TINY))[1]
    problems = [Problem(id="a", prompt="1 2>3=", answer="3", solution="1+2"), Problem(id="b", prompt="10 2>12=", answer="12", solution="10+2")]
    ids, attention, prompt_len = mdlm_sft_batch(tokenizer, problems, "off", 6)
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    assert prompt_len == 9  # <bos> + "10 2>12="
    assert ids[0].tolist() == [pad, pad, bos, *enc("1 2>3="), *enc("1+2"), eos, eos, eos]
    assert ids[1].tolist() == [bos, *enc("10 2>12="), *enc("10+2"), eos, eos]
    assert attention[0].tolist() == [0, 0] + [1] * 13 and attention[1].tolist() == [1] * 15
    with pytest.raises(ConfigError, match="max_new_tokens"):
        mdlm_sft_batch(tokenizer, problems, "off", 4)  # "10+2" + EOS does not fit in 4


def test_masked_diffusion_loss_is_llada_objective():
    """1/B sum_b 1/L sum_{masked i} -log p(x_i | x_t) / p_b, recomputed from the model's logits."""
    model, tokenizer = tiny_mdlm()
    ids, attention, prompt_len = mdlm_sft_batch(
        tokenizer, [Problem(id=str(i), prompt=f"{i} 2>{i + 2}=", answer=str(i + 2), solution=f"{i}+2") for i in range(1, 5)], "off", 6
    )
    torch.manual_seed(3)
    loss = masked_diffusion_loss(model, ids, attention, prompt_len, mask_id=104)
    torch.manual_seed(3)  # the same draws: p per row, then the token masks
    p = (1 - 1e-3) * torch.rand(4, 1) + 1e-3
    masked = torch.rand(4, 6) < p
    assert 0 < int(masked.sum()) < 24
    noisy = ids.clone()
    noisy[:, prompt_len:][masked] = 104
    logits = model(input_ids=noisy, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp_min(0)).logits
    logp = torch.log_softmax(logits[:, prompt_len:].double(), -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    expected = -(logp * masked / p).sum() / 24
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
