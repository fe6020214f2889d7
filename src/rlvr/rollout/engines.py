"""Rollout engines behind one interface, chosen by ``rollout.backend``.

An engine samples ``n`` responses per prompt and returns a :class:`RolloutBatch` in the layout of
:class:`rlvr.rollout.hf.HFRollout` (prompts left-padded, responses right-padded, EOS inside the
response). Engines that hold their own copy of the weights (vLLM) need :meth:`sync_weights` after
every optimizer update; the HF engine samples from the training model itself, so it is a no-op.

Backends: ``hf`` (on the training model: rlvr's KV-cache loop or transformers ``generate``, always available) and ``vllm`` (optional extra,
imported only when selected).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from transformers import PreTrainedTokenizerBase

from rlvr.errors import ConfigError
from rlvr.rollout.base import RolloutBatch
from rlvr.rollout.hf import HFRollout
from rlvr.tasks.base import Problem

BACKENDS: tuple[str, ...] = ("hf", "vllm")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a sampler."""

    name: str

    def generate(
        self,
        model: Any,
        prompts: Sequence[str | Problem],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
    ) -> RolloutBatch:
        """``n`` responses per prompt; rows ``i*n .. i*n+n-1`` share group id ``i``."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from ``model``'s current weights (call after each update)."""
        ...

    def sleep(self) -> None:
        """Free the engine's accelerator memory before the update (no-op where it holds none)."""
        ...


class HFEngine(HFRollout):
    """:class:`HFRollout` as a :class:`RolloutEngine`: samples from the training model, nothing to sync."""

    name = "hf"

    def sync_weights(self, model: Any) -> None:
        """No-op: ``generate`` runs on the training model itself."""
        return None

    def sleep(self) -> None:
        """No-op: the engine holds no memory of its own."""
        return None


def build_engine(
    backend: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    chat_template: str = "auto",
    model_path: str | Path | None = None,
    model: Any = None,
    kv_decode: bool = True,
    mdlm: dict[str, Any] | None = None,
    **options: Any,
) -> RolloutEngine:
    """The engine for ``backend`` (``hf`` or ``vllm``).

    ``vllm`` loads its own copy of the weights from ``model_path`` (a local Hugging Face directory).
    Without a path (the built-in tiny model) ``model`` and ``tokenizer`` are saved to a temporary
    directory first. ``options`` go to :class:`rlvr.rollout.vllm.VLLMRollout` (e.g. ``dtype``,
    ``gpu_memory_utilization``, ``max_model_len``, ``seed``). ``kv_decode`` picks the HF engine's
    decoding loop (:mod:`rlvr.rollout.kv_decode` where supported, else ``generate``).

    A masked diffusion model (``model.kind=mdlm``, :func:`rlvr.models.mdlm.is_mdlm`) is sampled by
    :class:`rlvr.rollout.mdlm.MDLMEngine` with the decoding options ``mdlm`` (``rollout.mdlm``;
    the defaults when None).
    """
    from rlvr.models.mdlm import is_mdlm

    if mdlm is not None or (model is not None and is_mdlm(model)):
        from rlvr.rollout.mdlm import MDLMEngine

        if backend != "hf" or options:
            raise ConfigError(f"a masked diffusion model is sampled by rlvr's own decoder: use rollout.backend=hf (got {backend})")
        if model is not None and not is_mdlm(model):
            raise ConfigError("masked-diffusion decoding options were given for a causal model; set model.kind=mdlm")
        return MDLMEngine(tokenizer, chat_template, **(mdlm or {}))
    if backend == "hf":
        if options:
            raise ConfigError(f"rollout.backend=hf takes no engine options, got {sorted(options)}")
        return HFEngine(tokenizer, chat_template, kv_decode=kv_decode)
    if backend == "vllm":
        from rlvr.rollout.vllm import VLLMRollout

        if model_path is None:
            if model is None:
                raise ConfigError("rollout.backend=vllm needs model.path (or the model object to export)")
            model_path = _export_for_vllm(model, tokenizer)
        return VLLMRollout(tokenizer, model_path, chat_template=chat_template, **options)
    raise ConfigError(f"rollout.backend: unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")


def _export_for_vllm(model: Any, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Save an in-memory model (merged, if it carries LoRA adapters) + tokenizer to a temp directory."""
    from rlvr.models.lora import is_peft_model, merged_named_parameters

    directory = Path(tempfile.mkdtemp(prefix="rlvr-vllm-model-"))
    if is_peft_model(model):
        state = {name: value.contiguous() for name, value in merged_named_parameters(model)}
        model.get_base_model().save_pretrained(directory, state_dict=state)
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
