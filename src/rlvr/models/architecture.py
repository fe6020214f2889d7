"""What rlvr's fast paths need to know about a Hugging Face model's architecture."""

from __future__ import annotations

from torch import nn

LLAMA_FAMILY = frozenset({"llama", "qwen2", "qwen3", "mistral"})
"""``model_type`` values with the Llama decoder layout (pre-norm, RoPE, q/k/v/o, gated MLP)."""


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT ``PeftModel`` (LoRA layers stay injected), else ``model``."""
    peft_config = getattr(model, "peft_config", None)
    get_base = getattr(model, "get_base_model", None)
    if peft_config is None or get_base is None:
        return model
    active = getattr(model, "active_peft_config", None)
    if active is not None and getattr(active, "is_prompt_learning", False):
        raise NotImplementedError(
            "prompt-learning PEFT adapters (prompt/prefix/p-tuning) add virtual tokens in "
            "PeftModel.forward; rlvr cannot bypass it. Use LoRA-style adapters."
        )
    return get_base()


def is_full_attention_llama(model: nn.Module) -> bool:
    """True for a Llama-family causal LM (:data:`LLAMA_FAMILY`) whose every layer attends to the full context.

    A bidirectional one (``config.is_causal`` False: a masked diffusion model) is not a causal LM.

    Sliding-window layers (``layer_types`` other than ``full_attention``, or a Mistral
    ``sliding_window``) and soft-capped logits are excluded.
    """
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in LLAMA_FAMILY or getattr(config, "is_causal", True) is False:
        return False
    decoder = getattr(base, "model", None)
    if getattr(decoder, "layers", None) is None or not hasattr(base, "lm_head") or not hasattr(decoder, "rotary_emb"):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if any(kind != "full_attention" for kind in layer_types):
            return False
    elif getattr(config, "sliding_window", None) is not None:
        return False
    return getattr(config, "final_logit_softcapping", None) is None
