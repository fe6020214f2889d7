"""Data-parallel training with ``torch.distributed``: a replicated control plane over sharded compute.

Launched with ``torchrun --nproc_per_node=N [--nnodes=M --rdzv-endpoint=HOST:PORT] -m rlvr train``
(gloo on CPU, NCCL on CUDA). What every rank does in one step:

* **rollout**: every rank draws the same global list of prompts (same data RNG); the groups are
  split into ``rollout.shards`` shards and each rank samples and scores the shards ``s`` with
  ``s % world_size == rank``, each with its own seed derived from ``(seed, step, round, s)``, so the
  sampling depends on the shard count, not on the world size (a DP=2 run resumes in one process).
  The scored shards are all-gathered; every rank then holds the identical global batch;
* **prepare**: the rollout-policy/reference forward runs on the micro-batches ``k`` with
  ``k % world_size == rank``, out of the same micro-batch split the single-process trainer uses,
  and the results are all-reduced into full-batch tensors. Reward shaping, advantages, ``prepare``
  hooks and controllers then see the global batch, identically on every rank (SIREN's anchor,
  Clip-Cov's selection, CANON, UCAS and REINFORCE++ statistics, HAPO/LASER-D histories);
* **update**: the same mini-batch order and split on every rank; each rank back-propagates its
  micro-batches, losses normalised by the global mini-batch totals, and gradients are **summed**
  (one all-reduce per mini-batch with ``train.strategy=replicate``; FSDP2's reduce-scatter forced
  to a sum with ``fsdp2``). Data-dependent branches around collectives are agreed by all ranks: a
  non-finite loss anywhere skips the update everywhere; under FSDP2 the shared-prompt forward path
  is taken only if every rank takes it and ranks with fewer micro-batches run zero-loss ones.

Only rank 0 writes metrics, reports, the final model and ``state.pt``; model and optimizer state
go through ``torch.distributed.checkpoint``, whose metadata is read with an allowlist
(:class:`SafeFileSystemReader`), never a plain unpickle (docs/security.md).
"""

from __future__ import annotations

import datetime
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as torch_dist

from rlvr.errors import RLVRError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; a single process is rank 0 of 1 and every call is local."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether work item ``index`` (a micro-batch, a shard) is this rank's."""
        return index % self.world == self.rank

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """``flag`` on every rank (an agreed decision)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return bool(t.item())

    def any_true(self, flag: bool, device: torch.device) -> bool:
        return not self.all_true(not flag, device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def broadcast_module_(self, module: torch.nn.Module, src: int = 0) -> None:
        """Copy rank ``src``'s parameters and buffers into every rank's ``module``."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch_dist.broadcast(tensor.data, src=src)

    def all_reduce_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks in one flat all-reduce (missing gradients count as 0)."""
        if not self.enabled:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch._utils._flatten_dense_tensors([p.grad for p in params])
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        for p, reduced in zip(params, torch._utils._unflatten_dense_tensors(flat, [p.grad for p in params])):
            p.grad.copy_(reduced)


SINGLE = Dist()
"""The single-process group."""


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str, timeout_s: float) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    gloo on CPU, NCCL on CUDA; a collective that waits longer than ``timeout_s`` fails instead of
    hanging (so one rank dying makes the others stop with an error, not wait forever).
    """
    world = launched_world_size()
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": torch.device("cuda", local_rank)} if use_cuda else {}),
        )
    return Dist(rank=rank, world=world, local_rank=local_rank)


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def lost_peer_message(exc: BaseException, dist: Dist) -> str:
    """The one-line error a rank prints when a collective failed (a peer died or timed out)."""
    return (
        f"rank {dist.rank} of {dist.world}: a collective failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
        "another rank probably died or stalled: see its log. Resume with --resume once the cause is fixed"
    )


# --------------------------------------------------------------------------------------------------
# FSDP2


def shard_fsdp2(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """``fully_shard`` each decoder layer and the root (embeddings, final norm and LM head stay in the
    root unit, so tied embeddings are one parameter), with gradients *summed* over ranks.

    rlvr computes log-probs from the decoder's hidden states and the LM-head weight with its
    chunked kernels, not through the model's ``forward``; that computation is registered as an
    FSDP forward method on the root (``rlvr_policy_forward``), so the root's parameters are
    unsharded during it and its gradients reduce-scattered after backward.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from rlvr.models.architecture import unwrap_peft
    from rlvr.ops.forward import attach_policy_forward
    from rlvr.ops.logprobs import _decoder_body

    if dist.world <= 1:
        raise RLVRError("train.strategy=fsdp2 needs torchrun with more than one process")
    base = unwrap_peft(model)
    if base is not model:
        raise RLVRError("train.strategy=fsdp2 does not support LoRA (model.lora.r) yet; use train.strategy=replicate")
    body = _decoder_body(base)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise RLVRError(f"train.strategy=fsdp2: cannot find the decoder layers of {type(model).__name__}")
    units = [fully_shard(layer) for layer in layers]
    root = fully_shard(model)
    for unit in [*units, root]:
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; rlvr's losses need a sum
        unit.set_gradient_divide_factor(1.0)
    attach_policy_forward(model)
    register_fsdp_forward_method(model, "rlvr_policy_forward")
    return model


def full_state_to(target: torch.nn.Module, sharded: torch.nn.Module) -> None:
    """Copy the full (all-gathered) parameters of an FSDP2 ``sharded`` model into the plain ``target``."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        mine = dict(sharded.named_parameters())
        for name, p in target.named_parameters():
            value = mine[name]
            p.copy_(value.full_tensor() if isinstance(value, DTensor) else value)


# --------------------------------------------------------------------------------------------------
# checkpoints: torch.distributed.checkpoint with an allowlisted metadata reader

_METADATA_ALLOWED = {
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # returns torch.layout objects only
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}
"""Exactly the (module, name) pairs DCP's ``.metadata`` pickle refers to (data classes, enums, dtypes)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only DCP's own metadata classes, torch dtypes and the few names they use."""

    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _METADATA_ALLOWED or is_dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def read_sharded_metadata(path: Path) -> Any:
    """The ``.metadata`` of a sharded checkpoint, unpickled with the allowlist; UnsafeCheckpointError otherwise."""
    from rlvr.train.checkpoint import UnsafeCheckpointError

    metadata_path = Path(path) / ".metadata"
    try:
        return _MetadataUnpickler(io.BytesIO(metadata_path.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {metadata_path}: {exc}; unpickling it could run code it carries. "
            "rlvr writes only torch.distributed.checkpoint's own metadata there: delete this checkpoint"
        ) from exc


def _safe_reader(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        """DCP's reader with the ``.metadata`` unpickle restricted to DCP's own classes."""

        def read_metadata(self) -> Any:
            metadata = read_sharded_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))


def save_sharded(path: Path, state: dict[str, Any]) -> None:
    """``torch.distributed.checkpoint.save`` of ``state`` into ``path`` (every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))


def load_sharded(path: Path, state: dict[str, Any]) -> None:
    """Fill ``state`` (as built by :func:`model_optimizer_state`) in place from a sharded checkpoint."""
    import torch.distributed.checkpoint as dcp

    from rlvr.train.checkpoint import UnsafeCheckpointError

    read_sharded_metadata(path)  # refused here, with its own message, before DCP wraps errors in its own
    try:
        dcp.load(state, storage_reader=_safe_reader(path))
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - DCP wraps shape/key mismatches in its own exceptions
        raise RLVRError(
            f"checkpoint {path} does not fit the configured model, optimizer or reference ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}); resume with the run's own model settings or start a new output_dir"
        ) from exc


def model_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ref_model: torch.nn.Module | None
) -> dict[str, Any]:
    """FQN-keyed state dicts of the policy, its optimizer and the reference (any sharding)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    if ref_model is not None:
        state["ref_model"] = get_model_state_dict(ref_model)
    return state


def apply_model_optimizer_state(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ref_model: torch.nn.Module | None
) -> None:
    """Load what :func:`load_sharded` filled back into the modules and the optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        set_model_state_dict(model, state["model"])
    if ref_model is not None and "ref_model" in state:
        set_model_state_dict(ref_model, state["ref_model"])
