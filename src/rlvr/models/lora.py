"""LoRA adapters (PEFT) for the RL phase, with the adapter-disabled base model as the reference.

Training only low-rank adapters makes the policy small to optimise and to checkpoint, and it removes
the separate reference-model copy: the reference policy is the same network with its adapters
switched off (``with model.disable_adapter():``), exactly what TRL and verl (``ref_in_actor``) do.

Typical use (what the trainer does when ``model.lora.r`` is set)::

    model = apply_lora(model, r=16, alpha=32)          # after the (full-weight) warm start
    ref = reference_forward(model, rows, temperature=1.0, chunk_size=1024)["logprobs"]
    save_adapter_checkpoint(...)/adapter_state_dict(model)  # only the adapter weights
    save_lora_model(model, tokenizer, run_dir / "final_model")  # merged weights + adapter/

``peft`` is an optional dependency (``pip install 'rlvr[lora]'``); it is imported when first needed.
Keep ``dropout=0``: the trainer computes the old (rollout) log-probs with the model in train mode, so
adapter dropout would make old and current log-probs disagree even before any update.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from rlvr.errors import ConfigError

DEFAULT_TARGET_MODULES = "all-linear"
"""PEFT's shorthand for every linear layer except the output head (q/k/v/o and the MLP for Llama/Qwen2)."""

_HEAD_NAMES = frozenset({"lm_head", "embed_out", "output"})


def _import_peft() -> Any:
    """The ``peft`` module, or a ConfigError telling how to install it."""
    try:
        return importlib.import_module("peft")
    except ImportError as exc:
        raise ConfigError("model.lora needs the optional extra: pip install 'rlvr[lora]' (installs peft)") from exc


def lora_enabled(r: int | None) -> bool:
    """Whether a LoRA rank means "on" (``None`` and ``0`` mean off)."""
    return bool(r) and int(r) > 0  # type: ignore[arg-type]


def is_peft_model(model: nn.Module) -> bool:
    """True for a PEFT ``PeftModel`` (has ``peft_config`` and ``disable_adapter``)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def apply_lora(
    model: nn.Module,
    r: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
) -> Any:
    """Wrap ``model`` in a PEFT ``PeftModel`` with fresh LoRA adapters; only adapter weights train.

    The adapters start as the identity (``B = 0``), so the wrapped model computes exactly what
    ``model`` did. Base weights are frozen (``requires_grad=False``). ``target_modules`` is PEFT's
    list of module-name suffixes or ``"all-linear"``; the LM head must stay a plain linear layer
    (``rlvr.ops`` reads its weight), so targeting it is rejected.
    """
    if not lora_enabled(r):
        raise ConfigError(f"model.lora.r must be a positive integer to enable LoRA, got {r!r}")
    if alpha <= 0:
        raise ConfigError(f"model.lora.alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {dropout}")
    if is_peft_model(model):
        raise ConfigError("apply_lora: the model already carries PEFT adapters")
    targets: str | list[str] = target_modules if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ConfigError("model.lora.target_modules must not be empty")
    named = {targets} if isinstance(targets, str) else set(targets)
    if named & _HEAD_NAMES:
        raise ConfigError(
            f"model.lora.target_modules: adapting the LM head ({sorted(named & _HEAD_NAMES)}) is not supported; "
            "rlvr computes log-probs from the plain head weight. Use 'all-linear' or attention/MLP projections"
        )
    peft = _import_peft()
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    config = peft.LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"model.lora.target_modules={target_modules!r}: {exc}") from exc


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which a PeftModel computes its base (reference) model; the adapters stay in memory."""
    if not is_peft_model(model):
        raise TypeError(f"adapter_disabled needs a PEFT model, got {type(model).__name__}")
    with model.disable_adapter():
        yield model


def reference_forward(
    model: nn.Module,
    batch: Any,
    *,
    temperature: float,
    chunk_size: int,
    quantities: tuple = (),
    token_temperature: Tensor | None = None,
) -> dict[str, Tensor]:
    """:func:`rlvr.ops.forward.policy_forward` of the adapter-disabled base model, without grad.

    This is the reference policy of a LoRA run: no second model copy is held.
    """
    from rlvr.ops.forward import policy_forward

    with torch.no_grad(), adapter_disabled(model):
        return policy_forward(
            model, batch, temperature=temperature, chunk_size=chunk_size, quantities=quantities,
            token_temperature=token_temperature,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# checkpoints and export


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only (PEFT ``get_peft_model_state_dict``), cloned to CPU."""
    peft = _import_peft()
    return {k: v.detach().to("cpu").clone() for k, v in peft.get_peft_model_state_dict(model).items()}


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load :func:`adapter_state_dict` output into a PeftModel with the same LoRA config."""
    peft = _import_peft()
    result = peft.set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(
            f"adapter checkpoint does not match the model's LoRA config (unexpected keys, e.g. {unexpected[:3]}); "
            "resume with the same model.lora settings"
        )


def lora_checkpoint_state(model: nn.Module, *, include_base: bool) -> dict[str, Any]:
    """Checkpoint payload of a LoRA policy: the adapter, plus the frozen base weights if ``include_base``.

    The base only needs saving when it differs from what ``model.path`` reloads, i.e. after a
    full-weight warm start; otherwise a checkpoint holds just the (small) adapter.
    """
    base = None
    if include_base:
        base = {k: v.detach().to("cpu").clone() for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    return {"kind": "lora", "adapter": adapter_state_dict(model), "base": base}


def load_lora_checkpoint_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Restore :func:`lora_checkpoint_state` into a PeftModel built with the same LoRA config."""
    if state.get("base") is not None:
        result = model.get_base_model().load_state_dict(state["base"], strict=False)
        missing = [k for k in result.missing_keys if "lora_" not in k]
        if result.unexpected_keys or missing:
            raise ConfigError(
                f"LoRA checkpoint base weights do not match the model (missing {missing[:3]}, "
                f"unexpected {list(result.unexpected_keys)[:3]}); resume with the same model and model.lora"
            )
    load_adapter_state_dict(model, state["adapter"])


def merged_named_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` of the merged policy under the base model's own parameter names.

    For every LoRA-adapted linear layer the value is ``W + delta(A, B)`` computed out of place, so
    the base weights (the reference policy) are never modified (``merge_adapter``/``unmerge_adapter``
    would add rounding drift to them at every weight sync). Tied weights are yielded once, as
    ``named_parameters`` does. A non-PEFT model yields its own detached parameters.
    """
    if not is_peft_model(model):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    base = model.get_base_model()
    owners = {name: module for name, module in base.named_modules() if hasattr(module, "lora_A")}
    for name, param in base.named_parameters():
        if any(part.startswith("lora_") for part in name.split(".")):
            continue
        value = param.detach()
        module_name, _, leaf = name.rpartition(".")
        if module_name.endswith(".base_layer") and leaf == "weight":
            owner = owners.get(module_name.removesuffix(".base_layer"))
            if owner is not None and not getattr(owner, "disable_adapters", False) and not getattr(owner, "merged", False):
                with torch.no_grad():
                    for adapter in owner.active_adapters:
                        if adapter in owner.lora_A:
                            value = value + owner.get_delta_weight(adapter).to(value.dtype)
        yield name.replace(".base_layer", ""), value


def save_lora_model(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, merge: bool = True) -> Path:
    """Save the adapter under ``out_dir/adapter`` and, if ``merge``, the merged model + tokenizer in ``out_dir``.

    The merged directory is a plain Hugging Face model (loadable with ``model=out_dir``); the live
    ``model`` is left untouched (a copy is merged).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    if merge:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out
