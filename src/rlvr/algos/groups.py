"""Per-group statistics of sequence-level values (``group_ids`` maps each response to its prompt)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.errors import ConfigError


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense indices 0..K-1 for arbitrary group ids, and K."""
    _, dense = torch.unique(group_ids, return_inverse=True)
    return dense, int(dense.max().item()) + 1 if dense.numel() else 0


def group_count(group_ids: Tensor) -> Tensor:
    """Size of each response's group, ``(B,)``."""
    dense, k = group_index(group_ids)
    counts = torch.zeros(k, dtype=torch.float64, device=group_ids.device).index_add_(
        0, dense, torch.ones_like(dense, dtype=torch.float64)
    )
    return counts[dense]


def group_sum(values: Tensor, group_ids: Tensor) -> Tensor:
    """Sum of ``values`` over each response's group, broadcast back to ``(B,)``."""
    dense, k = group_index(group_ids)
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, dense, values)
    return sums[dense]


def group_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of ``values`` over each response's group, ``(B,)``."""
    return group_sum(values, group_ids) / group_count(group_ids).to(values.dtype)


def group_std(values: Tensor, group_ids: Tensor, unbiased: bool = True) -> Tensor:
    """Standard deviation within each group (``torch.std`` convention), ``(B,)``.

    A group of one gets std 1 when ``unbiased`` (verl's convention for GRPO, which sets mean 0 and
    std 1 for singleton groups), since the unbiased estimate is undefined there.
    """
    count = group_count(group_ids).to(values.dtype)
    centered = values - group_mean(values, group_ids)
    sq = group_sum(centered**2, group_ids)
    if unbiased:
        var = sq / (count - 1).clamp_min(1.0)
        return torch.where(count > 1, var.sqrt(), torch.ones_like(var))
    return (sq / count).sqrt()


def broadcast_to_tokens(seq_values: Tensor, response_mask: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, T)``, zero on padding."""
    return seq_values.unsqueeze(-1).to(response_mask.dtype) * response_mask


def group_sizes(group_ids: Tensor) -> dict[Any, int]:
    """``{group id: number of responses}`` (recorded on the whole rollout batch by losses that need whole groups)."""
    ids, counts = torch.unique(group_ids, return_counts=True)
    return {gid: int(c) for gid, c in zip(ids.tolist(), counts.tolist())}


def split_group(group_ids: Tensor, full_sizes: dict[Any, int]) -> tuple[Any, int, int] | None:
    """``(group, present, full)`` for the first group with fewer rows here than in ``full_sizes``, else None."""
    for gid, count in group_sizes(group_ids).items():
        full = full_sizes.get(gid)
        if full is not None and full != count:
            return gid, count, full
    return None


WHOLE_GROUPS_FIX = (
    "Set train.shuffle=groups and make train.mini_batch_size and train.micro_batch_size multiples of rollout.group_size"
)
"""The settings that keep every group in one micro-batch (the ``fix`` of :func:`require_whole_groups`)."""


def require_whole_groups(group_ids: Tensor, full_sizes: dict[Any, int] | None, who: str, reason: str, fix: str) -> None:
    """Raise a ConfigError naming the first group split across micro-batches (``full_sizes``: the rollout
    batch's group sizes; None: not recorded, nothing to check). ``reason`` says why the method needs whole
    groups, ``fix`` which settings keep them whole."""
    split = split_group(group_ids, full_sizes) if full_sizes is not None else None
    if split is not None:
        gid, count, full = split
        raise ConfigError(
            f"{who}: group {gid} has {count} of its {full} responses in this micro-batch; {reason}, so every "
            f"group must be whole in one micro-batch. {fix}"
        )
