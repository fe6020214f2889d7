"""SIREN (arXiv 2509.25133) and its ablations against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlvr.algos import AlgoContext, regularizer
from rlvr.algos.siren import peak_entropy_mask, selected_entropy
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")
PAD = 7.0  # a large entropy on padding: must never be selected

# Six responses, T = 10 (the hand example for the peak mask):
#  A: 5 valid [0.3, 0.9, 0.1, 0.4, 0.2]; sorted 0.1 0.2 0.3 0.4 0.9, r = 0.8 * 4 = 3.2
#     tau = s3 + 0.2 (s4 - s3) = 0.4 + 0.2 * 0.5 = 0.5 -> keep 0.9 (t=1)
#  B: 4 valid [0.2, 0.6, 0.4, 0.8]; r = 0.8 * 3 = 2.4, tau = 0.6 + 0.4 * 0.2 = 0.68 -> keep 0.8 (t=3)
#  C: 3 valid [1.0, 2.0, 3.0]; r = 1.6, tau = 2.0 + 0.6 * 1.0 = 2.6 -> keep 3.0 (t=2)
#  D: 10 valid [0.5 .1 .9 .3 .8 .2 .7 .4 .6 1.0]; r = 7.2, tau = 0.8 + 0.2 * 0.1 = 0.82 -> keep t=2, 9
#  E: 4 valid, all 0.3 -> tau = 0.3, strict '>' keeps nothing
#  F: no valid token -> nothing
ROWS = [
    [0.3, 0.9, 0.1, 0.4, 0.2],
    [0.2, 0.6, 0.4, 0.8],
    [1.0, 2.0, 3.0],
    [0.5, 0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 1.0],
    [0.3, 0.3, 0.3, 0.3],
    [],
]
EXPECTED_KEEP = [[1], [3], [2], [2, 9], [], []]
WIDTH = 10


def example(pad: float = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    entropy = torch.tensor([r + [pad] * (WIDTH - len(r)) for r in ROWS])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (WIDTH - len(r)) for r in ROWS])
    return entropy, mask


def keep_lists(mask: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in mask]


# H_sel over the example (rows E, F select nothing: they count as 0 and the mean is over all 6 rows,
# as the official seq-mean-token-mean):
#   A: 0.9, B: 0.8, C: 3.0, D: (0.9 + 1.0) / 2 = 0.95 -> H_sel = (0.9 + 0.8 + 3.0 + 0.95 + 0 + 0) / 6
H_SEL = 5.65 / 6  # 0.9416667
SEL_COUNTS = [1, 1, 1, 2, 0, 0]
FRAC = 5 / 26  # 5 selected of 5 + 4 + 3 + 10 + 4 + 0 = 26 valid tokens


# ------------------------------------------------------------------------------ peak mask ---------


def test_peak_mask_hand_example() -> None:
    entropy, mask = example()
    assert keep_lists(peak_entropy_mask(entropy, mask, 0.8)) == EXPECTED_KEEP
    # NaN padding behaves the same (the official code masks padding with NaN)
    entropy_nan, _ = example(pad=NAN)
    assert keep_lists(peak_entropy_mask(entropy_nan, mask, 0.8)) == EXPECTED_KEEP
    # quantile 0.5 on row B: r = 1.5, tau = 0.4 + 0.5 * 0.2 = 0.5 -> keep 0.6, 0.8 (t = 1, 3)
    assert keep_lists(peak_entropy_mask(entropy, mask, 0.5))[1] == [1, 3]


def test_peak_mask_bfloat16_and_bool_mask() -> None:
    entropy, mask = example()
    out = peak_entropy_mask(entropy.to(torch.bfloat16), mask.bool(), 0.8)
    assert out.dtype == torch.float32
    assert keep_lists(out) == EXPECTED_KEEP


def slow_peak_mask(entropy: list[list[float]], mask: list[list[float]], q: float) -> list[list[float]]:
    """Row loop: sort the valid values, linear interpolation at r = q (n - 1), keep values > tau."""
    out = []
    for values, m in zip(entropy, mask):
        valid = sorted(v for v, keep in zip(values, m) if keep)
        if not valid:
            out.append([0.0] * len(values))
            continue
        r = q * (len(valid) - 1)
        lo, hi = math.floor(r), math.ceil(r)
        tau = valid[lo] + (r - lo) * (valid[hi] - valid[lo])
        out.append([1.0 if keep and v > tau else 0.0 for v, keep in zip(values, m)])
    return out


def test_peak_mask_matches_slow_reference_on_random_inputs() -> None:
    rng = random.Random(0)
    for trial in range(30):
        b, t = rng.randint(1, 6), rng.randint(1, 12)
        q = rng.choice([0.8, 0.5, 0.9, 0.0, 1.0, rng.random()])
        rounding = trial % 2 == 0  # half the trials with many ties
        entropy = [[round(rng.random(), 1) if rounding else rng.random() for _ in range(t)] for _ in range(b)]
        mask = [[0.0] * t for _ in range(b)]
        for row in mask:
            n = rng.randint(0, t)
            row[:n] = [1.0] * n
        got = peak_entropy_mask(torch.tensor(entropy, dtype=torch.float64), torch.tensor(mask), q)
        assert got.tolist() == slow_peak_mask(entropy, mask, q), (entropy, mask, q)


def test_applying_the_mask_twice_changes_nothing() -> None:
    # the official update_policy zeroes the non-peak tokens, then masks the zeroed tensor again
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        entropy = torch.rand(5, 16, generator=gen) * 3
        entropy[torch.rand(5, 16, generator=gen) < 0.5] = 0.0  # many exact zeros (top-p entropy 0)
        lengths = torch.randint(0, 17, (5,), generator=gen)
        mask = (torch.arange(16) < lengths[:, None]).float()
        once = peak_entropy_mask(entropy, mask)
        zeroed = torch.where(once > 0, entropy, torch.zeros_like(entropy))
        twice = peak_entropy_mask(zeroed, mask)
        assert torch.equal(once, twice)


def test_selected_entropy_value() -> None:
    entropy, mask = example()
    h_sel, sel = selected_entropy(entropy, mask)
    assert h_sel.item() == pytest.approx(H_SEL)  # 0.9416667
    assert sel.sum(-1).tolist() == SEL_COUNTS


# --------------------------------------------------------------------------------- SIREN ----------


def siren_ctx(current: torch.Tensor, mask: torch.Tensor, *, old: torch.Tensor | None = None, frac: float = 1.0):
    return AlgoContext(response_mask=mask, top_p_entropy=current, old_top_p_entropy=old, micro_batch_fraction=frac)


def test_siren_loss_and_gradient_by_hand() -> None:
    entropy, mask = example()
    siren = regularizer.build("siren", {"coef": 0.005})
    siren.load_state_dict({"anchor": 0.5})
    leaf = entropy.clone().requires_grad_(True)
    out = siren(siren_ctx(leaf, mask, frac=0.5))
    # loss = c (H_sel - a)^2 f = 0.005 * (0.9416667 - 0.5)^2 * 0.5 = 0.005 * 0.1950694 * 0.5 = 0.00048767361
    assert out.loss.item() == pytest.approx(0.00048767361, rel=1e-6)
    out.loss.backward()
    # dL/dH_{i,t} = 2 c f (H_sel - a) * s_{i,t} / (B n_i) = 2 * 0.005 * 0.5 * 0.4416667 / (6 n_i)
    #             = 0.0022083333 / (6 n_i): n_i = 1 -> 0.00036805556; n_i = 2 -> 0.00018402778
    grad = leaf.grad
    assert grad is not None
    expected = torch.zeros_like(entropy)
    expected[0, 1] = expected[1, 3] = expected[2, 2] = 0.00036805556
    expected[3, 2] = expected[3, 9] = 0.00018402778
    torch.testing.assert_close(grad, expected, atol=1e-9, rtol=1e-6)
    assert out.metrics["siren/selected_entropy"] == pytest.approx(H_SEL)
    assert out.metrics["siren/anchor"] == 0.5
    assert out.metrics["siren/frac_selected"] == pytest.approx(FRAC)
    # the metric is the value before the share f (the trainer's weighted average restores it)
    assert out.metrics["siren/loss"] == pytest.approx(0.00097534722, rel=1e-6)


def test_siren_anchor_set_once_and_held() -> None:
    entropy, mask = example()
    siren = regularizer.build("siren", {})
    assert siren.state_dict() == {"anchor": None}
    metrics = siren.prepare(siren_ctx(entropy, mask, old=entropy))
    assert siren.state_dict()["anchor"] == pytest.approx(H_SEL)
    assert metrics["siren/anchor"] == pytest.approx(H_SEL)
    assert metrics["siren/old_selected_entropy"] == pytest.approx(H_SEL)
    # a second step with the entropy doubled: the rollout's selected entropy doubles, the anchor stays
    metrics = siren.prepare(siren_ctx(entropy, mask, old=entropy * 2))
    assert metrics["siren/old_selected_entropy"] == pytest.approx(2 * H_SEL)
    assert metrics["siren/anchor"] == pytest.approx(H_SEL)
    assert siren.state_dict()["anchor"] == pytest.approx(H_SEL)
    # at the anchor the loss is 0
    assert siren(siren_ctx(entropy, mask)).loss.item() == pytest.approx(0.0, abs=1e-12)


def test_siren_state_dict_round_trip() -> None:
    entropy, mask = example()
    first = regularizer.build("siren", {"coef": 0.01})
    first.prepare(siren_ctx(entropy, mask, old=entropy * 0.5))  # anchor = 5.65 / 12 = 0.4708333
    state = first.state_dict()
    assert state == {"anchor": pytest.approx(5.65 / 12)}
    second = regularizer.build("siren", {"coef": 0.01})
    second.load_state_dict(state)
    assert second.state_dict() == state
    # restored anchor works without a prepare: 0.01 * (0.9416667 - 0.4708333)^2 = 0.0022168403
    assert second(siren_ctx(entropy, mask)).loss.item() == pytest.approx(0.0022168403, rel=1e-6)
    # and is not overwritten by the next prepare
    second.prepare(siren_ctx(entropy, mask, old=entropy))
    assert second.state_dict() == state


def test_siren_needs_prepare_or_state() -> None:
    entropy, mask = example()
    siren = regularizer.build("siren", {})
    with pytest.raises(MissingInputError, match="anchor"):
        siren(siren_ctx(entropy, mask))
    # a first rollout batch that selects nothing (all-equal rows) does not set the anchor
    flat = torch.full((2, 4), 0.3)
    siren.prepare(siren_ctx(flat, torch.ones(2, 4), old=flat))
    assert siren.state_dict() == {"anchor": None}
    out = siren(siren_ctx(entropy.requires_grad_(True), mask))
    assert out.loss.item() == 0.0 and "siren/anchor" not in out.metrics
    with pytest.raises(MissingInputError, match="old_top_p_entropy"):
        siren.prepare(siren_ctx(entropy, mask))


def test_siren_knob_checks() -> None:
    with pytest.raises(ConfigError, match="quantile"):
        regularizer.build("siren", {"quantile": 1.5})
    with pytest.raises(ConfigError, match="knob"):
        regularizer.build("siren_wo_topp", {"use_top_p": True})
    entry = regularizer.entry("siren")
    assert entry.requires == frozenset({"top_p_entropy", "old_top_p_entropy"})
    assert regularizer.build("siren", {"top_p": 0.9}).fn.top_p == 0.9  # read by the trainer


# ------------------------------------------------------------------------------- ablations --------


def test_siren_wo_topp_uses_full_entropy() -> None:
    entropy, mask = example()
    reg = regularizer.build("siren_wo_topp", {"coef": 0.005})
    assert reg.requires == frozenset({"entropy", "old_entropy"})
    ctx = AlgoContext(response_mask=mask, entropy=entropy, old_entropy=entropy * 0.5)
    metrics = reg.prepare(ctx)
    # anchor = H_sel(0.5 H) = 0.4708333; loss = 0.005 * (0.9416667 - 0.4708333)^2 = 0.005 * 0.2216840
    assert metrics["siren/anchor"] == pytest.approx(5.65 / 12)
    assert reg(ctx).loss.item() == pytest.approx(0.0011084201, rel=1e-6)
    with pytest.raises(MissingInputError, match="entropy"):
        reg(siren_ctx(entropy, mask))  # top-p fields only


def test_siren_wo_anchor_is_selective_bonus() -> None:
    entropy, mask = example()
    reg = regularizer.build("siren_wo_anchor", {"coef": 0.005})
    assert reg.requires == frozenset({"top_p_entropy"})
    assert reg.prepare(AlgoContext(response_mask=mask)) == {}  # no old entropy needed
    leaf = entropy.clone().requires_grad_(True)
    out = reg(siren_ctx(leaf, mask, frac=0.5))
    # -c H_sel f = -0.005 * 0.9416667 * 0.5 = -0.0023541667
    assert out.loss.item() == pytest.approx(-0.0023541667, rel=1e-6)
    out.loss.backward()
    # dL/dH = -c f / (B n_i) = -0.0025 / (6 n_i): -0.00041666667 (n_i = 1), -0.00020833333 (n_i = 2)
    assert leaf.grad is not None
    assert leaf.grad[0, 1].item() == pytest.approx(-0.00041666667)
    assert leaf.grad[3, 9].item() == pytest.approx(-0.00020833333)
    assert leaf.grad[4].abs().sum().item() == 0.0


# entropies for the unmasked baselines: row means 2 and 2.5; 5 valid tokens summing to 11
NAIVE_H = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, 1.0, NAN, NAN]])
NAIVE_M = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_entropy_adaptive_step_updates() -> None:
    reg = regularizer.build("entropy_adaptive", {"coef": 0.01, "lr_c": 0.1})
    step1 = AlgoContext(response_mask=NAIVE_M, old_entropy=NAIVE_H)  # H_bar = 2.25
    m = reg.prepare(step1)
    # first batch: anchor = 2.25, c += 0.1 (2.25 - 2.25) = 0 -> 0.01
    assert m["entropy_adaptive/anchor"] == pytest.approx(2.25)
    assert reg.state_dict() == {"coef": pytest.approx(0.01), "anchor": pytest.approx(2.25)}
    # step 2, entropy dropped by 1 (H_bar = 1.25): c = 0.01 + 0.1 (2.25 - 1.25) = 0.11
    reg.prepare(AlgoContext(response_mask=NAIVE_M, old_entropy=NAIVE_H - 1))
    assert reg.state_dict()["coef"] == pytest.approx(0.11)
    # loss with c = 0.11 on H_bar = 2.25, f = 0.5: -0.11 * 2.25 * 0.5 = -0.12375
    ctx = AlgoContext(response_mask=NAIVE_M, entropy=NAIVE_H, micro_batch_fraction=0.5)
    out = reg(ctx)
    assert out.loss.item() == pytest.approx(-0.12375)
    assert reg.state_dict()["coef"] == pytest.approx(0.11)  # the loss does not move c in "step" mode
    # step 3, entropy up by 2 (H_bar = 4.25): c = max(0, 0.11 + 0.1 (2.25 - 4.25)) = max(0, -0.09) = 0
    reg.prepare(AlgoContext(response_mask=NAIVE_M, old_entropy=NAIVE_H + 2))
    assert reg.state_dict()["coef"] == 0.0
    # round trip
    other = regularizer.build("entropy_adaptive", {})
    other.load_state_dict(reg.state_dict())
    assert other.state_dict() == reg.state_dict()


def test_entropy_adaptive_micro_batch_updates() -> None:
    reg = regularizer.build("entropy_adaptive", {"coef": 0.01, "lr_c": 0.1, "update": "micro_batch"})
    reg.prepare(AlgoContext(response_mask=NAIVE_M, old_entropy=NAIVE_H))  # anchor 2.25, c stays 0.01
    low = AlgoContext(response_mask=NAIVE_M, entropy=NAIVE_H - 1)  # H_bar = 1.25
    # micro-batch 1 uses c = 0.01: -0.01 * 1.25 = -0.0125; then c = 0.01 + 0.1 * (2.25 - 1.25) = 0.11
    assert reg(low).loss.item() == pytest.approx(-0.0125)
    assert reg.state_dict()["coef"] == pytest.approx(0.11)
    # micro-batch 2 uses c = 0.11: -0.11 * 1.25 = -0.1375; then c = 0.21
    assert reg(low).loss.item() == pytest.approx(-0.1375)
    assert reg.state_dict()["coef"] == pytest.approx(0.21)
    # prepare does not update c in this mode (only sets the anchor once)
    reg.prepare(AlgoContext(response_mask=NAIVE_M, old_entropy=NAIVE_H + 5))
    assert reg.state_dict() == {"coef": pytest.approx(0.21), "anchor": pytest.approx(2.25)}
    with pytest.raises(ConfigError, match="update"):
        regularizer.build("entropy_adaptive", {"update": "epoch"})


def test_siren_micro_batches_average_like_the_official_accumulation() -> None:
    # two micro-batches of 3 responses (f = 3/6 = 0.5 each); the official actor adds
    # loss_k * len(micro_k) / mini_batch_size, i.e. sum_k 0.5 * c (H_sel,k - a)^2
    #   rows A, B, C: H_sel,1 = (0.9 + 0.8 + 3.0) / 3 = 4.7 / 3
    #   rows D, E, F: H_sel,2 = (0.95 + 0 + 0) / 3 = 0.3166667 (E and F select nothing)
    #   c = 0.005, a = 0.5: 0.5 * 0.005 * ((4.7/3 - 0.5)^2 + (0.95/3 - 0.5)^2)
    #   (4.7/3 - 0.5)^2 = (3.2/3)^2 = 10.24/9 = 1.1377778; (0.55/3)^2 = 0.3025/9 = 0.0336111
    #                     = 0.0025 * (1.1377778 + 0.0336111) = 0.0029284722
    entropy, mask = example()
    siren = regularizer.build("siren", {})
    siren.load_state_dict({"anchor": 0.5})
    full = siren_ctx(entropy, mask)
    total = 0.0
    for rows in (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])):
        micro = full.select(rows)
        micro.micro_batch_fraction = 0.5
        total += siren(micro).loss.item()
    assert total == pytest.approx(0.0029284722, rel=1e-6)


def test_rows_without_selected_token_count_as_zero() -> None:
    # official seq-mean-token-mean (Linn3a/siren core_algos.agg_loss): a row whose peak mask is empty
    # contributes 0 and the mean still divides by all B rows.
    # Rows A (selects 0.9) and E (all 0.3, selects nothing): H_sel = (0.9 + 0) / 2 = 0.45
    entropy, mask = example()
    rows = torch.tensor([0, 4])
    h_sel, _ = selected_entropy(entropy[rows], mask[rows])
    assert h_sel.item() == pytest.approx(0.45)
    siren = regularizer.build("siren", {"coef": 0.005})
    metrics = siren.prepare(siren_ctx(entropy[rows], mask[rows], old=entropy[rows]))
    assert metrics["siren/anchor"] == pytest.approx(0.45)  # the anchor uses the same mean
    # current H_sel = 0.45 * 2 = 0.9: loss = 0.005 * (0.9 - 0.45)^2 = 0.005 * 0.2025 = 0.0010125
    leaf = (entropy[rows] * 2).requires_grad_(True)
    out = siren(siren_ctx(leaf, mask[rows]))
    assert out.loss.item() == pytest.approx(0.0010125)
    out.loss.backward()
    # dL/dH_{A,1} = 2 c (H_sel - a) / (B n_A) = 2 * 0.005 * 0.45 / (2 * 1) = 0.00225
    assert leaf.grad is not None and leaf.grad[0, 1].item() == pytest.approx(0.00225)
    # a micro-batch that selects nothing: H_sel = 0, loss c (0 - a)^2 f, no gradient
    flat = torch.full((2, 4), 0.3, requires_grad=True)
    empty = siren(siren_ctx(flat, torch.ones(2, 4), frac=0.5))
    assert empty.loss.item() == pytest.approx(0.005 * 0.45**2 * 0.5)
    assert empty.metrics["siren/selected_entropy"] == 0.0
