"""clip_b: the entropy discriminator by hand, the one-sided keep rule, batch vs micro-batch statistics."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, token_weight
from rlvr.algos.clip_b import entropy_discriminator

NAN = float("nan")


def test_entropy_discriminator_by_hand() -> None:
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), NAN]])
    entropy = torch.tensor([[1.0, 1.0, NAN]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = entropy_discriminator(logprobs, entropy, mask)
    # 0.5 (1 + ln 0.5) = 0.5 * 0.306853 = 0.153426;  0.25 (1 + ln 0.25) = 0.25 * -0.386294 = -0.096574
    assert s.tolist()[0] == pytest.approx([0.153426, -0.096574, 0.0], abs=1e-6)


def make_ctx(s_rows: list[list[float]], adv: list[float], mask_rows: list[list[float]], step: int = 0) -> AlgoContext:
    """Tokens at p = 0.5 with H = 2 S - ln 0.5, so that S = p (H + ln p) is the given value."""
    s = torch.tensor(s_rows, dtype=torch.float64)
    logprobs = torch.full_like(s, math.log(0.5))
    entropy = 2.0 * s - math.log(0.5)
    mask = torch.tensor(mask_rows, dtype=torch.float64)
    return AlgoContext(
        response_mask=mask,
        old_logprobs=logprobs,
        old_entropy=entropy,
        advantages=torch.tensor(adv, dtype=torch.float64).unsqueeze(-1) * mask,
        step=step,
        extras={"row_index": torch.arange(len(adv))},
    )


# 7 valid tokens, S = 0.1, -0.3, 0, 0.1 | 0.1, -0.3, 0: mean -0.3/7 = -0.042857; deviations 0.142857 (x3),
# -0.257143 (x2), 0.042857 (x2); population var = (3 * 0.020408 + 2 * 0.066122 + 2 * 0.001837) / 7 = 0.028163,
# std 0.167819. mu 1.5: threshold -0.251729 < -0.257143 is false -> the -0.3 token of the negative row is cut.
S_ROWS = [[0.1, -0.3, 0.0, 0.1], [0.1, -0.3, 0.0, 0.0]]
MASK = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
ADV = [1.0, -1.0]


def test_clip_b_keeps_positives_and_cuts_low_discriminator_negatives() -> None:
    ctx = make_ctx(S_ROWS, ADV, MASK)
    comp = token_weight.build("clip_b", {"mu": 1.5})
    batch_metrics = comp.prepare(ctx)
    out = comp(ctx)
    assert out.weights.tolist() == [[1, 1, 1, 1], [1, 0, 1, 0]]
    assert torch.equal(out.loss_mask, out.weights)
    assert out.metrics["clip_b/s_mean"] == pytest.approx(-0.3 / 7)
    assert out.metrics["clip_b/s_std"] == pytest.approx(0.167819, abs=1e-6)
    assert out.metrics["clip_b/frac_clipped"] == pytest.approx(1 / 7)
    assert out.metrics["clip_b/frac_clipped_neg"] == pytest.approx(1 / 3)
    assert out.metrics["clip_b/batch_scope"] == 1.0
    assert batch_metrics["clip_b/batch/frac_clipped"] == pytest.approx(1 / 7)
    # mu 2: threshold -0.335638 -> nothing cut; mu 1: -0.167819 -> the same token only
    assert token_weight.build("clip_b", {"mu": 2.0, "scope": "micro"})(ctx).weights.sum() == 7
    assert token_weight.build("clip_b", {"mu": 1.0, "scope": "micro"})(ctx).weights.tolist()[1] == [1, 0, 1, 0]


def test_zero_advantage_is_kept_and_a_constant_discriminator_keeps_everything() -> None:
    ctx = make_ctx(S_ROWS, [0.0, -1.0], MASK)
    comp = token_weight.build("clip_b", {"mu": 1.5, "scope": "micro"})
    assert comp(ctx).weights.tolist() == [[1, 1, 1, 1], [1, 0, 1, 0]]  # A = 0 row: kept like A > 0
    flat = make_ctx([[0.2] * 4, [0.2] * 4], ADV, MASK)  # sigma_S = 0 < 1e-12
    assert comp(flat).weights.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_batch_scope_uses_the_rollout_batch_statistics_in_each_micro_batch() -> None:
    ctx = make_ctx(S_ROWS, ADV, MASK)
    batch = token_weight.build("clip_b", {"mu": 1.5})
    batch.prepare(ctx)
    micro = ctx.select(torch.tensor([1]))
    # batch statistics (threshold -0.251729): the -0.3 token is cut
    assert batch(micro).weights.tolist() == [[1, 0, 1, 0]]
    # the micro-batch alone: S = 0.1, -0.3, 0: mean -0.066667, std sqrt((0.027778 + 0.054444 + 0.004444)/3)
    # = 0.169967, threshold -0.254951 < deviation -0.233333 -> kept
    alone = token_weight.build("clip_b", {"mu": 1.5, "scope": "micro"})(micro)
    assert alone.weights.tolist() == [[1, 1, 1, 0]]
    assert alone.metrics["clip_b/s_std"] == pytest.approx(0.169967, abs=1e-6)


def test_batch_scope_falls_back_to_the_micro_batch_without_prepare() -> None:
    ctx = make_ctx(S_ROWS, ADV, MASK, step=3)
    comp = token_weight.build("clip_b", {"mu": 1.5})
    comp.prepare(make_ctx(S_ROWS, ADV, MASK, step=2))  # a previous step's batch
    with pytest.warns(UserWarning, match="scope='batch' unavailable"):
        out = comp(ctx.select(torch.tensor([1])))
    assert out.weights.tolist() == [[1, 1, 1, 0]]
    assert out.metrics["clip_b/batch_scope"] == 0.0
