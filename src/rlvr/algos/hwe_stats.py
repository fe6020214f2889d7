"""ARES-style high-window-entropy (HWE) statistics of the rollout batch (stage: controller, metrics only).

ARES / Adaptive-Entropy PO (arXiv 2510.08457, official ``shawn0728/ARES``) measures exploration by
*windows* of high entropy rather than single tokens: the entropy of each position is averaged over
a sliding window of the following tokens, and a position counts as a high-window-entropy token when
that window mean reaches a per-response threshold (the 98th percentile of the response's window
means, window 8, in the official code). Responses are bucketed by difficulty from their group's
accuracy (easy >= 2/3, medium >= 1/3, else hard), and ARES's reward targets the mean HWE count of
each bucket.

This component logs those statistics; it changes no loss. Differences from the official code, which
computes entropies from the inference engine's top-k log-probs and counts only windows that start
at a curated list of "reasoning trigger" tokens: here the entropy is the full-vocabulary entropy of
the rollout policy (``ctx.old_entropy``) and every position may start a window (no trigger list).

Window mean at position t (valid length n): ``W_t = mean(H_t .. H_{min(t+w, n)-1})``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_mean
from rlvr.algos.registry import controller


def window_entropy(entropy: Tensor, response_mask: Tensor, window: int) -> Tensor:
    """Forward sliding-window mean of ``entropy`` over valid tokens, ``(B, T)`` (0 on padding)."""
    mask = response_mask.to(entropy.dtype)
    values = entropy * mask
    csum = torch.nn.functional.pad(values.cumsum(-1), (1, 0))
    ccount = torch.nn.functional.pad(mask.cumsum(-1), (1, 0))
    t = values.shape[-1]
    start = torch.arange(t, device=entropy.device)
    end = (start + window).clamp_max(t)
    sums = csum[:, end] - csum[:, start]
    counts = ccount[:, end] - ccount[:, start]
    return torch.where(mask > 0, sums / counts.clamp_min(1.0), torch.zeros_like(sums))


def high_window_entropy_mask(entropy: Tensor, response_mask: Tensor, window: int = 8, quantile: float = 0.98) -> Tensor:
    """Positions whose window mean reaches the response's ``quantile`` of window means, ``(B, T)`` bool."""
    windows = window_entropy(entropy, response_mask, window)
    valid = response_mask > 0
    masked = torch.where(valid, windows, torch.full_like(windows, float("nan")))
    threshold = torch.nanquantile(masked, quantile, dim=-1, keepdim=True)
    return valid & (windows >= threshold)


def difficulty_buckets(correct: Tensor, group_ids: Tensor) -> Tensor:
    """0 = easy (group accuracy >= 2/3), 1 = medium (>= 1/3), 2 = hard, per response."""
    acc = group_mean(correct.to(torch.float64), group_ids)
    return torch.where(acc >= 2 / 3, 0, torch.where(acc >= 1 / 3, 1, 2))


@controller.register("hwe_stats", requires=("old_entropy", "correct", "group_ids"))
class HighWindowEntropyStats:
    """Logs HWE counts per response, overall and per difficulty bucket (no effect on training)."""

    BUCKETS = ("easy", "medium", "hard")

    def __init__(self, *, window: int = 8, quantile: float = 0.98) -> None:
        self.window = window
        self.quantile = quantile

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        ctx.require("old_entropy", "correct", "group_ids", who="controller 'hwe_stats'")
        assert ctx.old_entropy is not None and ctx.correct is not None and ctx.group_ids is not None
        nonempty = ctx.response_mask.sum(-1) > 0
        hwe = high_window_entropy_mask(ctx.old_entropy[nonempty], ctx.response_mask[nonempty], self.window, self.quantile)
        counts = hwe.sum(-1).to(torch.float64)
        windows = window_entropy(ctx.old_entropy, ctx.response_mask, self.window)
        metrics = {
            "hwe/count_mean": float(counts.mean()) if counts.numel() else 0.0,
            "hwe/window_entropy_max_mean": float(windows.max(-1).values[nonempty].mean()) if counts.numel() else 0.0,
        }
        buckets = difficulty_buckets(ctx.correct, ctx.group_ids)[nonempty]
        for index, name in enumerate(self.BUCKETS):
            chosen = buckets == index
            if chosen.any():
                metrics[f"hwe/count_{name}"] = float(counts[chosen].mean())
                metrics[f"hwe/frac_{name}"] = float(chosen.to(torch.float64).mean())
        return metrics

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}
