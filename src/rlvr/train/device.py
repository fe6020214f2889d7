"""Where a run computes and in which precision.

Device: ``train.device`` is ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
The policy, the reference model, optimizer state, rollouts (rlvr's KV-cache loop and ``generate``),
the chunked kernels, the warm start and held-out evaluation all run there; checkpoints are read
onto the CPU and copied onto the run's device, so a GPU checkpoint resumes on a CPU and back.

Precision policy (``model.dtype``):

* ``float32``: everything in fp32.
* ``bfloat16``: mixed precision. Weights and optimizer state stay fp32 (the master copy AdamW
  updates); the forward passes (rollout, old/reference, update, warm start) run under
  ``torch.autocast(dtype=bfloat16)``, so matmuls use bf16 while norms and softmaxes stay fp32.
  Log-probs, entropies and the other forward quantities are computed in fp32 from the bf16
  hidden states by the chunked kernels (they upcast each chunk and disable autocast), and so are
  losses, advantages and every method's statistics. The reference model is an fp32 copy run the
  same way, so KL to the reference is exactly 0 at the start.

This is the policy of verl's FSDP workers (fp32 parameters, bf16 compute) and of TRL with
``bf16=True``; it costs the memory of fp32 weights but keeps small updates from vanishing in bf16.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import torch

from rlvr.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_available(spec: str) -> None:
    """ConfigError when ``spec`` asks for CUDA (or a CUDA index) this machine does not have."""
    if not spec.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={spec}: no CUDA device is available here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use train.device=cpu or auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve_device(spec: str) -> torch.device:
    """The torch device for ``train.device`` (``auto``: the current CUDA device if any, else CPU)."""
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    check_device_available(spec)
    return torch.device(spec)


@dataclass(frozen=True)
class Precision:
    """The run's device and compute dtype; :meth:`autocast` wraps every forward pass."""

    device: torch.device
    compute_dtype: torch.dtype = torch.float32

    @classmethod
    def from_config(cls, device: str, dtype: str) -> "Precision":
        return cls(resolve_device(device), torch.bfloat16 if dtype == "bfloat16" else torch.float32)

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast on the run's device under mixed precision; nothing in fp32."""
        if not self.mixed:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.compute_dtype):
            yield

    def fork_rng(self) -> contextlib.AbstractContextManager:
        """A context whose random draws leave the run's CPU and CUDA generators as they were."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)
