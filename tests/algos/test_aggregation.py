"""Aggregation modes by hand, masked statistics, and micro-batch invariance with global normalizers."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.aggregation import AGG_MODES, aggregate, masked_mean, masked_var, masked_whiten
from rlvr.errors import ConfigError

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 31 / 6),  # (1+2 + 4 + 7+8+9) / 6 tokens = 5.1666667
        ("seq-mean-token-mean", 4.5),  # (1.5 + 4 + 8) / 3
        ("seq-mean-token-sum", 31 / 3),  # (3 + 4 + 24) / 3 = 10.3333333
        ("seq-mean-token-sum-norm", 31 / 9),  # 31 / (3 seqs * L=3) = 3.4444444
    ],
)
def test_modes_by_hand(mode: str, expected: float) -> None:
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(expected)
    # an empty sequence adds nothing and does not count in B
    loss = torch.cat([LOSS, torch.full((1, 3), 100.0)])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    assert aggregate(loss, mask, mode, norm_length=3).item() == pytest.approx(expected)


def test_sum_norm_uses_max_response_length() -> None:
    ctx = AlgoContext(response_mask=MASK, max_response_length=4, agg_mode="seq-mean-token-sum-norm")
    assert ctx.aggregate(LOSS).item() == pytest.approx(31 / 12)  # 31 / (3 * 4) = 2.5833333


def test_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="token-mean"):
        aggregate(LOSS, MASK, "seq-sum")


def test_masked_stats() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # (1 + 0 + 1) / 2
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_whiten(values, mask)[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)


def _full_and_micro(mode: str, splits: list[list[int]]):
    gen = torch.Generator().manual_seed(1)
    b, t = 7, 6
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 4])
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()
    logprobs = (-torch.rand(b, t, generator=gen)).requires_grad_(True)
    ctx = AlgoContext(
        response_mask=mask,
        logprobs=logprobs,
        old_logprobs=logprobs.detach() + 0.3 * torch.randn(b, t, generator=gen),
        advantages=torch.randn(b, 1, generator=gen) * mask,
        agg_mode=mode,
        max_response_length=8,
    )
    loss_fn = policy_loss.build("ppo_clip", {"clip_high": 0.28, "clip_ratio_c": 3.0})

    full = ctx.aggregate(loss_fn(ctx).per_token)
    (g_full,) = torch.autograd.grad(full, logprobs)

    total = torch.zeros(())
    for rows in splits:
        micro = ctx.select(torch.tensor(rows))
        micro.global_num_tokens = float(mask.sum())
        micro.global_num_seqs = float((mask.sum(-1) > 0).sum())
        micro.micro_batch_fraction = len(rows) / b
        total = total + micro.aggregate(loss_fn(micro).per_token)
    (g_micro,) = torch.autograd.grad(total, logprobs)
    return full, total, g_full, g_micro


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_invariance(mode: str) -> None:
    full, total, g_full, g_micro = _full_and_micro(mode, [[0, 1, 2], [3, 4], [5, 6]])
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_micro, g_full, rtol=1e-6, atol=1e-7)
    assert g_full.abs().sum() > 0


def test_micro_batches_without_globals_differ() -> None:
    """The bug the global normalizers avoid: averaging per-micro-batch token means is not the full mean."""
    halves = [MASK[:1], MASK[1:]]
    losses = [LOSS[:1], LOSS[1:]]
    per_micro = sum(aggregate(l, m, "token-mean") for l, m in zip(losses, halves)) / 2
    assert per_micro.item() != pytest.approx(aggregate(LOSS, MASK, "token-mean").item())
