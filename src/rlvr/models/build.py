"""The policy model of a run: the tiny built-in Qwen2 (``model.path`` null) or a local Hugging Face model.

Weights are built in fp32 (the master copy; ``model.dtype=bfloat16`` is bf16 *compute* under
autocast, see :mod:`rlvr.train.device`) with attention through SDPA unless ``model.attn_implementation``
says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from rlvr.train.config import ModelConfig


def build_model_and_tokenizer(model_cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` on the CPU in fp32 for ``model_cfg`` (the trainer moves the model)."""
    if model_cfg.path:
        from rlvr.models.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(
            model_cfg.path,
            dtype=torch.float32,
            trust_remote_code=model_cfg.trust_remote_code,
            attn_implementation=model_cfg.attn_implementation,
        )
    else:
        from rlvr.models.mdlm import mdlm_tokenizer
        from rlvr.models.tiny import char_tokenizer, tiny_qwen2

        tokenizer = mdlm_tokenizer() if model_cfg.kind == "mdlm" else char_tokenizer()
        t = model_cfg.tiny
        model = tiny_qwen2(
            tokenizer,
            hidden_size=t.hidden_size,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            num_kv_heads=t.num_kv_heads,
            intermediate_size=t.intermediate_size,
            seed=seed,
            attn_implementation=model_cfg.attn_implementation,
        )
    from rlvr.models.mdlm import as_mdlm

    model = as_mdlm(model, tokenizer, model_cfg.kind)  # model.kind=mdlm: bidirectional, with the mask token
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model, tokenizer


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    transformers checkpoints a layer only in training mode (``from_pretrained`` returns the model in
    eval mode), so the model is switched to training mode; the Llama-family models rlvr's fast paths
    cover have no dropout, so their outputs are unchanged. ``activation_checkpointing_enable`` is
    the newer name of ``gradient_checkpointing_enable`` (which warns in later transformers 5.x).
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
