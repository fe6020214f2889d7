"""A masked diffusion language model (MDLM): the tiny Qwen2 with bidirectional attention and a [MASK] token.

LLaDA (arXiv 2502.09992, the model the EOSER/ASS/CJ-GRPO paper trains) is a Llama-style
transformer without the causal mask: every position sees the whole sequence, and the output at a
``[MASK]`` position is a distribution over the token that belongs there. rlvr's tiny MDLM
(:func:`rlvr.models.build.build_model_and_tokenizer` with ``model.kind=mdlm``) is the tiny Qwen2 of
:func:`rlvr.models.tiny.tiny_qwen2` over :func:`mdlm_tokenizer`, made bidirectional by
:func:`make_bidirectional`: ``config.is_causal = False``, which transformers 5 honours (its mask
builder makes a bidirectional padding mask and its attention kernels get ``is_causal=False``). The
class stays ``Qwen2ForCausalLM`` (decoder + LM head); ``config.is_causal`` and
``config.mask_token_id`` are saved with the model, so a saved MDLM loads back bidirectional.

The supervised warm start of an MDLM is LLaDA's masked-token objective
(:func:`masked_diffusion_loss`); sampling is :mod:`rlvr.rollout.mdlm`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlvr.errors import ConfigError
from rlvr.models.architecture import unwrap_peft
from rlvr.models.tiny import char_tokenizer
from rlvr.ops.logprobs import chunked_logprobs_entropy, last_hidden_states, output_head_weight

MASK = "<mask>"
"""The mask token of :func:`mdlm_tokenizer` (id 104, after the char tokenizer's 104 ids)."""


def mdlm_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """rlvr's character tokenizer (:func:`rlvr.models.tiny.char_tokenizer`) plus the special token ``<mask>``."""
    tokenizer = char_tokenizer(model_max_length)
    tokenizer.add_special_tokens({"mask_token": MASK})
    return tokenizer


def make_bidirectional(model: nn.Module, mask_token_id: int | None = None) -> nn.Module:
    """Switch a Llama-family model to full (non-causal) attention, in place; returns ``model``.

    Sets ``config.is_causal = False`` (and ``config.mask_token_id`` when given), which transformers
    reads when it builds the attention mask and calls the attention kernel, and also clears the
    ``is_causal`` flag of every module that has one, for attention code that reads that flag.
    """
    base = unwrap_peft(model)
    base.config.is_causal = False
    if mask_token_id is not None:
        base.config.mask_token_id = int(mask_token_id)
    for module in base.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model


def is_mdlm(model: Any) -> bool:
    """True for a model whose config says it is bidirectional (``config.is_causal`` is False)."""
    config = getattr(unwrap_peft(model), "config", None)
    return config is not None and getattr(config, "is_causal", True) is False


def check_bidirectional(model: nn.Module) -> None:
    """ConfigError unless ``model`` is an MDLM (:func:`is_mdlm`)."""
    if not is_mdlm(model):
        raise ConfigError("masked-diffusion decoding needs a bidirectional model (model.kind=mdlm)")


def mask_token_id(model: nn.Module) -> int:
    """``config.mask_token_id`` of an MDLM (a ConfigError if the model has none)."""
    value = getattr(unwrap_peft(model).config, "mask_token_id", None)
    if value is None:
        raise ConfigError("the masked diffusion model has no config.mask_token_id; build it with rlvr.models.mdlm")
    return int(value)


def as_mdlm(model: nn.Module, tokenizer: PreTrainedTokenizerBase, kind: str) -> nn.Module:
    """``model`` for ``model.kind``: made bidirectional for ``mdlm`` (the tokenizer needs a mask token);
    a ConfigError for a bidirectional model under ``kind=causal``."""
    if kind == "mdlm":
        if tokenizer.mask_token_id is None:
            raise ConfigError("model.kind=mdlm needs a tokenizer with a mask token (mask_token in tokenizer_config.json)")
        return make_bidirectional(model, tokenizer.mask_token_id)
    if is_mdlm(model):
        raise ConfigError("model.path holds a masked diffusion model (config.is_causal is false); set model.kind=mdlm")
    return model


def response_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """``(B, L, V)`` float32 logits at the response positions ``prompt_len:`` (no shift: position t predicts token t)."""
    hidden = last_hidden_states(model, input_ids, attention_mask)[:, prompt_len:]
    return (hidden @ output_head_weight(model).t()).float()


def masked_diffusion_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    *,
    mask_id: int,
    eps: float = 1e-3,
    chunk_size: int = 1024,
) -> Tensor:
    """LLaDA's supervised objective (arXiv 2502.09992, SFT with the prompt kept clean).

    Per row: ``t ~ U(0, 1)``, ``p = (1 - eps) t + eps``; each response token is replaced by
    ``[MASK]`` with probability ``p``; the loss is ``1/B sum_b 1/L sum_{i masked} -log p(x_i | x_t) / p``
    (``L`` the response width, EOS padding included: the model learns to fill the tail with EOS).
    Random draws come from torch's global generator (checkpointed by the trainer).
    """
    response = input_ids[:, prompt_len:]
    rows, width = response.shape
    device = response.device
    p = (1.0 - eps) * torch.rand(rows, 1, device=device) + eps
    masked = torch.rand(rows, width, device=device) < p
    noisy = torch.cat([input_ids[:, :prompt_len], torch.where(masked, torch.full_like(response, mask_id), response)], 1)
    hidden = last_hidden_states(model, noisy, attention_mask)[:, prompt_len:]
    logp, _ = chunked_logprobs_entropy(
        hidden[masked], output_head_weight(model), response[masked], temperature=1.0, chunk_size=chunk_size, with_entropy=False
    )
    weight = p.expand(rows, width)[masked]
    return -(logp / weight).sum() / (rows * width)
