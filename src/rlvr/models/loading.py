"""Load a Hugging Face causal LM and its tokenizer from a local directory, never from the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlvr.errors import ConfigError

GENERIC_TOKENIZER_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
"""``tokenizer_class`` values that mean "exactly what tokenizer.json says" (e.g. the char tokenizer).

transformers 5 maps some model types (qwen2 among them) to their own tokenizer class even when
``tokenizer_config.json`` names a generic one, which silently rebuilds a different tokenizer; such
directories are loaded with ``PreTrainedTokenizerFast`` directly instead.
"""


def check_model_dir(path: str) -> Path:
    """``path`` as a directory holding ``config.json``; a ConfigError naming ``model.path`` otherwise."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise ConfigError(
            f"model.path: '{path}' does not exist; give a local Hugging Face model directory "
            "(with config.json), or leave model.path empty for the built-in tiny model"
        )
    if not directory.is_dir():
        raise ConfigError(f"model.path: '{path}' is a file, not a model directory")
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"model.path: '{path}' has no config.json, so it is not a Hugging Face model directory "
            "(GGUF files must be converted to safetensors first)"
        )
    return directory


def _tokenizer_class_name(directory: Path) -> str | None:
    """The ``tokenizer_class`` recorded in ``tokenizer_config.json``, if any."""
    config_file = directory / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in ``path``, with a pad token (EOS if it had none) and left padding."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = check_model_dir(path)
    try:
        if (directory / "tokenizer.json").is_file() and _tokenizer_class_name(directory) in GENERIC_TOKENIZER_CLASSES:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"model.path: cannot load a tokenizer from '{path}': {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"model.path: the tokenizer in '{path}' has neither a pad nor an eos token; "
                "add one to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_and_tokenizer(path: str, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from the local directory ``path`` (``local_files_only``).

    The tokenizer gets a pad token (its EOS when missing) and left padding; the model's config and
    generation config get the same pad id.
    """
    from transformers import AutoModelForCausalLM

    directory = check_model_dir(path)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"model.path: cannot load a causal LM from '{path}': {exc}") from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
