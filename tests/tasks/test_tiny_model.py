"""The built-in char tokenizer, tiny Qwen2 and the local model loader."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.models.loading import load_model_and_tokenizer
from rlvr.models.tiny import char_tokenizer, tiny_qwen2

TEXTS = [string.printable, "3 5 7>22=3*5+7", "What is 2+3? Answer: 5\n", "  a\tb\n\nc  ", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def test_vocab_and_specials(tokenizer) -> None:
    assert len(tokenizer) == 104
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.padding_side == "left"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_one_token_per_char(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text


def test_left_padding(tokenizer) -> None:
    batch = tokenizer(["1+2=", "12*3="], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.pad_token_id
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_tiny_model_forward_and_determinism(tokenizer) -> None:
    model = tiny_qwen2(tokenizer)
    again = tiny_qwen2(tokenizer)
    other = tiny_qwen2(tokenizer, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    cfg = model.config
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.vocab_size) == (0, 1, 2, 104)
    state = torch.random.get_rng_state()
    tiny_qwen2(tokenizer, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    batch = tokenizer(["3 5 7>22=", "1+2="], padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 104)
    assert torch.isfinite(logits).all()
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


def test_tiny_model_rejects_bad_heads(tokenizer) -> None:
    with pytest.raises(ValueError, match="num_heads"):
        tiny_qwen2(tokenizer, hidden_size=130, num_heads=4)


def test_save_and_load_round_trip(tokenizer, tmp_path: Path) -> None:
    model = tiny_qwen2(tokenizer, hidden_size=64, num_layers=1, intermediate_size=128)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path))
    # transformers maps model_type qwen2 to Qwen2Tokenizer; the loader must keep the char tokenizer.
    for text in TEXTS:
        assert loaded_tok(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert loaded_tok.decode(loaded_tok(text, add_special_tokens=False)["input_ids"]) == text
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token_id == 0
    ids = torch.tensor([tokenizer("3 5 7>22=", add_special_tokens=False)["input_ids"]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits)


def test_loader_sets_missing_pad_to_eos(tokenizer, tmp_path: Path) -> None:
    tiny_qwen2(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"pad_token": "<pad>",', ""))
    _, loaded_tok = load_model_and_tokenizer(str(tmp_path))
    assert loaded_tok.pad_token == "<eos>" and loaded_tok.padding_side == "left"


def test_loader_errors_name_model_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.path.*does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"model\.path.*no config\.json"):
        load_model_and_tokenizer(str(tmp_path))
    (tmp_path / "weights.gguf").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"model\.path.*not a model directory"):
        load_model_and_tokenizer(str(tmp_path / "weights.gguf"))
