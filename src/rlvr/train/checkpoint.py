"""Atomic checkpoints: written to a temporary directory, fsynced, then renamed into place.

A checkpoint is ``<run>/checkpoints/step_<N>/state.pt`` holding model and optimizer state, every
stateful component (SIREN anchor, controllers, per-prompt histories), all RNG states and the step.
A directory only gets its final name once complete, so a crash mid-write leaves at most a stray
``.tmp-*`` directory; a checkpoint that fails to load (e.g. truncated by a full disk) is skipped in
favour of the previous one.

A checkpoint may come from someone else, so reading one must never run code. ``state.pt`` holds
only plain containers (dict, OrderedDict, list, tuple), str / int / float / bool / bytes / None and
tensors (:func:`to_plain` converts everything else at save time, or refuses), and is read with
``torch.load(weights_only=True)`` under torch's built-in allowlist only. A file that needs any
other object (a crafted pickle, or a full pickle written by rlvr before this rule, which held NumPy
arrays) raises :class:`UnsafeCheckpointError` naming the file; it is never skipped in favour of an
older checkpoint. :func:`convert_checkpoint` (``rlvr checkpoint convert PATH --trust``) rewrites an
old checkpoint the user trusts in the safe form.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.errors import RLVRError
from rlvr.files import writing

STATE_FILE = "state.pt"
STEP_PREFIX = "step"
"""RL checkpoints: ``checkpoints/step_<N>``."""
WARMSTART_PREFIX = "warmstart"
"""Warm-start checkpoints: ``checkpoints/warmstart_<N>`` (removed once the first RL checkpoint exists)."""
PARTIAL_PREFIX = ".tmp-"
CONVERT_HINT = "rlvr checkpoint convert {path} --trust"


class UnsafeCheckpointError(RLVRError):
    """A checkpoint file needs objects beyond plain containers and tensors to load; it was not loaded."""


_SCALARS = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` rebuilt from plain containers, scalars and tensors, so ``weights_only=True`` can load it.

    Mappings (Counter, defaultdict, ...) become dicts (an OrderedDict stays one, with the
    ``_metadata`` of module state dicts), tuples and lists stay, NumPy arrays become tensors and
    NumPy scalars Python numbers. Anything else raises an RLVRError naming ``where``, so a method
    whose ``state_dict`` returns an object fails when the checkpoint is written, not on resume.
    """
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise RLVRError(f"checkpoint {where}: tensor subclass {type(obj).__qualname__} cannot be stored; save a plain tensor")
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise RLVRError(f"checkpoint {where}: NumPy object arrays cannot be stored; use a list or a numeric array")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    for base in (bool, int, float, str):  # subclasses (IntEnum, str enums, ...) -> the builtin value
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Mapping):
        items = [(to_plain(k, f"{where} key"), to_plain(v, f"{where}[{k!r}]")) for k, v in obj.items()]
        if type(obj) is OrderedDict:
            plain: dict[Any, Any] = OrderedDict(items)
            if isinstance(getattr(obj, "_metadata", None), Mapping):
                plain._metadata = to_plain(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
            return plain
        return dict(items)
    if isinstance(obj, (list, tuple)):
        values = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return values if isinstance(obj, list) else tuple(values)
    raise RLVRError(
        f"checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored; "
        "state_dict() must return dicts, lists, tuples, numbers, strings, None and tensors"
    )


def _plain_numpy_rng(state: tuple[Any, ...]) -> dict[str, Any]:
    """``np.random.get_state()``'s tuple (MT19937) as plain values and an int64 tensor key."""
    name, key, pos, has_gauss, cached_gaussian = state
    return {
        "bit_generator": str(name),
        "key": torch.as_tensor(np.asarray(key, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _set_numpy_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`_plain_numpy_rng`."""
    key = np.asarray(state["key"].numpy(), dtype=np.uint32)
    np.random.set_state(
        (state["bit_generator"], key, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))
    )


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, as plain values and tensors."""
    return {
        "python": random.getstate(),
        "numpy": _plain_numpy_rng(np.random.get_state(legacy=True)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    _set_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    with open(path, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())


def checkpoint_path(ckpt_root: Path, step: int, prefix: str = STEP_PREFIX) -> Path:
    return ckpt_root / f"{prefix}_{step:06d}"


def new_partial_dir(final: Path) -> Path:
    """A fresh temporary directory next to ``final`` where a checkpoint is written before it is committed."""
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{final.name}-", dir=final.parent))


def commit_checkpoint(tmp: Path, final: Path, state: dict[str, Any], keep: int, prefix: str = STEP_PREFIX) -> Path:
    """Write ``state`` into ``tmp/state.pt``, rename ``tmp`` to ``final`` and prune all but the newest ``keep``.

    Whatever else ``tmp`` holds (the sharded tensors of a multi-process run) is committed with it.
    An ``OSError`` (full disk, read-only directory) raises an RLVRError naming the path and the fix;
    the partial write is removed and older checkpoints are kept.
    """
    with writing(final):
        try:
            _write_state(tmp / STATE_FILE, to_plain(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for old in list_checkpoints(final.parent, prefix)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(ckpt_root: Path, step: int, state: dict[str, Any], keep: int, prefix: str = STEP_PREFIX) -> Path:
    """Write ``state`` as checkpoint ``<prefix>_<step>`` atomically and prune all but the newest ``keep``."""
    final = checkpoint_path(ckpt_root, step, prefix)
    return commit_checkpoint(new_partial_dir(final), final, state, keep, prefix)


def list_checkpoints(ckpt_root: Path, prefix: str = STEP_PREFIX) -> list[Path]:
    """Completed checkpoint directories named ``<prefix>_<step>``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob(f"{prefix}_*") if p.is_dir() and (p / STATE_FILE).is_file())


def remove_checkpoints(ckpt_root: Path, prefix: str) -> None:
    """Delete every ``<prefix>_<step>`` checkpoint (e.g. the warm start's, once RL has its own)."""
    for path in list_checkpoints(ckpt_root, prefix):
        shutil.rmtree(path, ignore_errors=True)


def clear_partial_checkpoints(ckpt_root: Path) -> None:
    """Delete the temporary directories of checkpoint writes that a crash interrupted."""
    if ckpt_root.is_dir():
        for path in ckpt_root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _builtin_allowlist_only() -> Iterator[None]:
    """Drop globals other libraries added with ``torch.serialization.add_safe_globals`` for a load."""
    added = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(added)


def _unsafe_globals(path: Path) -> list[str]:
    """Objects ``path``'s pickle would import (read by disassembly, nothing is run); [] if unknown."""
    try:
        with _builtin_allowlist_only():
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only used to word the error message
        return []


def load_state_file(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, or :class:`UnsafeCheckpointError` naming ``path``.

    Truncated or corrupt files raise what torch raises (callers may fall back to an older
    checkpoint); a file whose pickle needs an object outside torch's built-in allowlist is refused.
    """
    try:
        with _builtin_allowlist_only():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _unsafe_globals(path)
        needs = f" (it needs {', '.join(found[:5])})" if found else ""
        convert = CONVERT_HINT.format(path=path)
        if found and all(name.startswith("numpy") for name in found):
            advice = (
                "it looks like a checkpoint written by an older rlvr version: if you trust whoever wrote it, "
                f"convert it once with `{convert}`, which rewrites it in the safe form"
            )
        else:
            advice = (
                "rlvr never writes such objects, so do not resume from it; only if it is an old rlvr checkpoint "
                f"from a source you trust, `{convert}` rewrites it in the safe form"
            )
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it holds more than tensors and plain values{needs}, and "
            f"unpickling it could run code it carries; {advice}"
        ) from exc
    if not isinstance(state, dict):
        raise RLVRError(f"{path}: not an rlvr checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def load_latest_checkpoint(ckpt_root: Path, prefix: str = STEP_PREFIX) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable (truncated, corrupt) ones are skipped with a warning.

    An :class:`UnsafeCheckpointError` propagates: resuming from an older checkpoint instead would
    hide that the run directory holds a file that tried to run code.
    """
    for path in reversed(list_checkpoints(ckpt_root, prefix)):
        try:
            return path, load_state_file(path / STATE_FILE)
        except UnsafeCheckpointError:
            raise
        except Exception as exc:  # a truncated or corrupt file: fall back to the previous checkpoint
            import warnings

            warnings.warn(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying the previous one")
    return None


def _flatten(section: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def _shape_mismatches(saved: Mapping[str, Any], current: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors of ``saved`` that ``current`` lacks or holds with another shape, and the reverse."""
    out = []
    for name, tensor in saved.items():
        if name not in current:
            out.append(f"'{name}' is in the checkpoint, not in the model")
        elif isinstance(tensor, torch.Tensor) and tensor.shape != current[name].shape:
            out.append(f"'{name}' is {list(tensor.shape)} in the checkpoint, {list(current[name].shape)} in the model")
    return out + [f"'{name}' is in the model, not in the checkpoint" for name in current if name not in saved]


def _model_mismatches(saved: Any, model: torch.nn.Module) -> list[str]:
    """How the checkpoint's ``model`` entry fails to fit ``model`` (plain state dict or LoRA payload)."""
    from rlvr.models.lora import adapter_state_dict, is_peft_model

    lora_saved = isinstance(saved, Mapping) and saved.get("kind") == "lora"
    if lora_saved != is_peft_model(model):
        return [
            "the checkpoint holds a LoRA adapter, the model has none"
            if lora_saved
            else "the model has a LoRA adapter, the checkpoint holds full weights"
        ]
    if not lora_saved:
        return _shape_mismatches(saved, model.state_dict())
    out = _shape_mismatches(saved["adapter"], adapter_state_dict(model))
    if saved.get("base") is not None:
        base = {k: v for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
        out += _shape_mismatches(saved["base"], base)
    return out


def check_compatible(state: Mapping[str, Any], cfg: Any, path: Path, model: torch.nn.Module) -> None:
    """RLVRError when checkpoint ``path``'s weights do not fit ``model`` (resuming with another model size).

    The message names the first mismatching tensors and the ``model.*`` settings that differ
    between the checkpoint's recorded config and ``cfg``. Weights that fit pass, even when settings
    that do not change them (dtype, gradient checkpointing, a moved ``model.path``) differ.
    """
    mismatches = _model_mismatches(state.get("model", {}), model)
    if not mismatches:
        return
    saved_cfg = state.get("config")
    if isinstance(saved_cfg, Mapping) and isinstance(saved_cfg.get("model"), Mapping):
        before = _flatten(saved_cfg["model"], "model")
        now = _flatten(cfg.model.model_dump(mode="json"), "model")
        keys = sorted(before.keys() | now.keys())
        changed = [f"{k}: {before.get(k)} in the checkpoint, {now.get(k)} now" for k in keys if before.get(k) != now.get(k)]
        settings = (
            f"Model settings that differ: {'; '.join(changed)}"
            if changed
            else "The model settings are unchanged, so the model at model.path is not the one it was trained from"
        )
    else:
        settings = "The checkpoint records no config to compare"
    more = f" (and {len(mismatches) - 3} more)" if len(mismatches) > 3 else ""
    raise RLVRError(
        f"checkpoint {path} does not fit the configured model: {'; '.join(mismatches[:3])}{more}. {settings}. "
        "Resume with the checkpoint's model settings (drop the overrides that change them), or start a new output_dir"
    )


def require_checkpoint(ckpt_root: Path) -> tuple[Path, dict[str, Any]]:
    found = load_latest_checkpoint(ckpt_root)
    if found is None:
        raise RLVRError(f"--resume: no readable checkpoint under {ckpt_root}; run without --resume to start fresh")
    return found


def convert_checkpoint(path: Path, *, trust: bool) -> list[Path]:
    """Rewrite old (full-pickle) ``state.pt`` files under ``path`` in the safe form; the files rewritten.

    ``path`` is a ``state.pt`` or a directory searched recursively (a step, ``checkpoints/`` or run
    directory). Loading an old file runs its pickle (``weights_only=False``), so this refuses unless
    ``trust`` is set. Files that already load safely are left alone. Each file is replaced
    atomically, after the converted copy has been checked to load with ``weights_only=True``.
    """
    if not trust:
        raise RLVRError(
            f"checkpoint convert: converting {path} unpickles it, which runs any code it carries; "
            "pass --trust only for checkpoints from a source you trust"
        )
    files = [path] if path.is_file() else sorted(path.rglob(STATE_FILE)) if path.is_dir() else []
    if not files:
        raise RLVRError(f"checkpoint convert: no {STATE_FILE} at or under {path}")
    converted = []
    for file in files:
        try:
            load_state_file(file)
            continue
        except UnsafeCheckpointError:
            pass
        state = torch.load(file, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and isinstance(state.get("rng"), dict) and isinstance(state["rng"].get("numpy"), tuple):
            state["rng"]["numpy"] = _plain_numpy_rng(state["rng"]["numpy"])
        state = to_plain(state, str(file))
        tmp = file.with_name(f".{file.name}.converting")
        try:
            _write_state(tmp, state)
            load_state_file(tmp)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        converted.append(file)
    return converted

