"""The built-in tiny policy: a character-level tokenizer and a small random Qwen2, both built offline.

Nothing here touches the network or the Hugging Face hub: the tokenizer is assembled from
``tokenizers`` objects and the model from a ``Qwen2Config``. Both save and reload with
``save_pretrained`` / ``from_pretrained`` like any Hugging Face model (which e.g. trl needs when it
rebuilds a reference model from a path).
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
"""Special tokens, ids 0..3 in this order."""

CHARS: str = string.printable
"""The 100 printable ASCII characters (digits, letters, punctuation, whitespace), ids 4..103."""


def char_vocab() -> dict[str, int]:
    """Token -> id: the four specials first, then one id per printable character (104 ids)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARS:
        vocab.setdefault(char, len(vocab))
    return vocab


def char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per printable ASCII character, left padding.

    ``decode(encode(text)) == text`` for any text made of ``string.printable`` characters; other
    characters map to ``<unk>``. No BOS/EOS is added by ``encode``; append ``eos_token_id`` yourself
    where a sequence must end.
    """
    core = Tokenizer(models.WordLevel(vocab=char_vocab(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_qwen2(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer`` (about 0.5M params by default).

    Embeddings are tied; pad/bos/eos ids come from the tokenizer. The initialisation depends on
    ``seed`` only: the global torch RNG is left untouched.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
