"""Atomic checkpoints: written to a temporary directory, fsynced, then renamed into place.

A checkpoint is ``<run>/checkpoints/step_<N>/state.pt`` holding model and optimizer state, every
stateful component (SIREN anchor, controllers, per-prompt histories), all RNG states and the step.
A directory only gets its final name once complete, so a crash mid-write leaves at most a stray
``.tmp-*`` directory; a checkpoint that fails to load (e.g. truncated by a full disk) is skipped in
favour of the previous one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.errors import RLVRError

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def save_checkpoint(ckpt_root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically and prune all but the newest ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=ckpt_root))
    try:
        with open(tmp / STATE_FILE, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file())


def load_latest_checkpoint(ckpt_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable (truncated, corrupt) ones are skipped with a warning."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            return path, torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or corrupt file: fall back to the previous checkpoint
            import warnings

            warnings.warn(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying the previous one")
    return None


def require_checkpoint(ckpt_root: Path) -> tuple[Path, dict[str, Any]]:
    found = load_latest_checkpoint(ckpt_root)
    if found is None:
        raise RLVRError(f"--resume: no readable checkpoint under {ckpt_root}; run without --resume to start fresh")
    return found
