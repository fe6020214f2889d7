"""Load a Hugging Face causal LM and its tokenizer from a local directory, never from the hub.

Python code shipped in a model directory (``auto_map`` in ``config.json`` or
``tokenizer_config.json`` pointing at a ``.py`` file) is never run unless the caller passes
``trust_remote_code=True`` (``rlvr eval --trust-remote-code``): transformers is always given an
explicit ``False`` otherwise, so it neither imports the code nor asks on the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

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


def _remote_code_error(path: str, what: str, exc: Exception) -> ConfigError:
    """ConfigError for a directory whose ``what`` needs its own Python code, which was not run."""
    return ConfigError(
        f"model.path: '{path}' ships its own Python code for its {what} (auto_map), and rlvr does not run "
        "code from a model directory unless asked; if you trust the directory, pass --trust-remote-code "
        f"to rlvr eval (trust_remote_code=True in Python) ({exc})"
    )


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved in ``path``, with a pad token (EOS if it had none) and left padding.

    Code in the directory runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = check_model_dir(path)
    try:
        if (directory / "tokenizer.json").is_file() and _tokenizer_class_name(directory) in GENERIC_TOKENIZER_CLASSES:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, TypeError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise _remote_code_error(path, "tokenizer", exc) from exc
        raise ConfigError(f"model.path: cannot load a tokenizer from '{path}': {exc}") from exc
    _check_tokenizer_encodes(tokenizer, directory, path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"model.path: the tokenizer in '{path}' has neither a pad nor an eos token; "
                "add one to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
"""Files that hold a tokenizer's vocabulary (one of them is needed; ``vocab.json`` comes with ``merges.txt``)."""


def _check_tokenizer_encodes(tokenizer: Any, directory: Path, path: str) -> None:
    """ConfigError when the tokenizer turns text into no tokens (transformers builds an empty one
    from a directory without tokenizer files, and training then fails far away on empty tensors)."""
    if tokenizer("Hello world 123", add_special_tokens=False)["input_ids"]:
        return
    found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problem = f"has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...; it holds {found})"
    else:
        problem = f"has a tokenizer that encodes text to no tokens (it holds {found})"
    raise ConfigError(
        f"model.path: '{path}' {problem}; copy the tokenizer files from the base model's directory, e.g. "
        f"AutoTokenizer.from_pretrained(BASE).save_pretrained('{path}')"
    )


def check_safetensors(file: Path) -> None:
    """ConfigError naming ``file`` when it is shorter than its own header says (a truncated copy).

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` into the data that follows, then the data; only the header is read.
    """
    size = file.stat().st_size
    fix = "copy or download it again"
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or 8 + length > size:
            raise ConfigError(f"model.path: '{file}' is truncated ({size} bytes, too short for its header); {fix}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ConfigError(f"model.path: '{file}' is corrupt (its header is not a safetensors header); {fix}") from None
    if size < 8 + length + end:
        raise ConfigError(f"model.path: '{file}' is truncated ({size} bytes, its header describes {8 + length + end}); {fix}")


def load_model_and_tokenizer(
    path: str, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from the local directory ``path`` (``local_files_only``).

    Code in the directory (``auto_map``) runs only with ``trust_remote_code=True``; weights in
    ``*.bin`` pickles are read by transformers with ``torch.load(weights_only=True)``.

    The tokenizer gets a pad token (its EOS when missing) and left padding; the model's config and
    generation config get the same pad id.
    """
    from transformers import AutoModelForCausalLM

    directory = check_model_dir(path)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    for weights in sorted(directory.glob("*.safetensors")):
        check_safetensors(weights)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise _remote_code_error(path, "model", exc) from exc
        raise ConfigError(f"model.path: cannot load a causal LM from '{path}': {exc}") from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
