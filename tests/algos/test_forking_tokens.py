"""Forking-token selection (Beyond the 80/20 rule, arXiv 2506.01939): values by hand and a sort-based reference."""

from __future__ import annotations

import random

import pytest
import torch

from rlvr.algos import AlgoContext, token_weight
from rlvr.algos.aggregation import aggregate
from rlvr.algos.forking_tokens import forking_mask, num_top_tokens
from rlvr.errors import ConfigError, MissingInputError

ENTROPY = [[0.1, 2.0, 0.5, 9.0], [1.5, 0.2, 3.0, 7.0]]
MASK = [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]  # 7 valid tokens; the 9.0 is padding


def make_ctx(**kw) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.tensor(MASK),
        entropy=torch.tensor(ENTROPY, requires_grad=True),
        **kw,
    )


def run(ctx: AlgoContext, **knobs):
    return token_weight.build("forking_tokens", knobs)(ctx)


def test_topk_selects_ceil_ratio_tokens_over_the_whole_micro_batch() -> None:
    # k = ceil(0.2 * 7) = 2: entropies 7.0 (row 1) and 3.0 (row 1); padding (9.0) is never chosen
    out = run(make_ctx())
    assert out.loss_mask.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]
    assert out.weights.tolist() == out.loss_mask.tolist()  # no global normaliser -> scale 1
    m = out.metrics
    assert m["forking/frac_selected"] == pytest.approx(2 / 7)
    assert m["forking/entropy_selected"] == pytest.approx(5.0)
    assert m["forking/entropy_unselected"] == pytest.approx((0.1 + 2.0 + 0.5 + 1.5 + 0.2) / 5)
    assert m["forking/threshold"] == pytest.approx(3.0)
    assert not out.weights.requires_grad


def test_quantile_method_keeps_ties_at_the_threshold() -> None:
    # valid sorted: 0.1 0.2 0.5 1.5 2.0 3.0 7.0; quantile 0.6 (top_ratio 0.4): pos 0.6*6 = 3.6
    # -> 1.5 + 0.6 * (2.0 - 1.5) = 1.8; keep >= 1.8: 2.0, 3.0, 7.0
    out = run(make_ctx(), top_ratio=0.4, method="quantile")
    assert out.loss_mask.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]
    tied = AlgoContext(response_mask=torch.ones(1, 5), entropy=torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]))
    assert run(tied, top_ratio=0.2, method="quantile").loss_mask.sum() == 4  # all ties kept
    assert run(tied, top_ratio=0.2).loss_mask.sum() == 1  # topk: exactly ceil(0.2 * 5)


def test_ceil_is_robust_to_float_noise() -> None:
    assert 0.55 * 100 > 55.0  # 55.00000000000001 in float; a plain ceil would give 56
    assert num_top_tokens(100, 0.55) == 55
    assert num_top_tokens(7, 0.2) == 2 and num_top_tokens(3, 0.01) == 1 and num_top_tokens(4, 1.0) == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_topk_matches_sorting_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows, cols, ratio = 5, 11, rng.choice([0.1, 0.2, 0.35])
    ent = [[rng.uniform(0, 5) for _ in range(cols)] for _ in range(rows)]
    mask = [[1.0 if t < rng.randint(1, cols) else 0.0 for t in range(cols)] for _ in range(rows)]
    cells = sorted(((ent[i][t], i, t) for i in range(rows) for t in range(cols) if mask[i][t]), reverse=True)
    k = max(1, int(len(cells) * ratio + 0.9999))
    expected = [[0.0] * cols for _ in range(rows)]
    for _, i, t in cells[:k]:
        expected[i][t] = 1.0
    got = forking_mask(torch.tensor(ent), torch.tensor(mask), ratio, "topk")
    assert got.float().tolist() == expected


def test_renormalize_makes_token_mean_a_mean_over_selected_tokens() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    ctx = make_ctx(agg_mode="token-mean", global_num_tokens=7.0)
    out = run(ctx)
    assert out.metrics["forking/scale"] == pytest.approx(3.5)  # 7 valid / 2 selected
    got = aggregate(loss * out.weights, out.loss_mask, "token-mean", num_tokens=7.0)
    assert float(got) == pytest.approx((7.0 + 8.0) / 2)  # official: mean over the selected tokens
    # without renormalisation the global denominator counts every response token
    raw = run(ctx, renormalize=False)
    assert float(aggregate(loss * raw.weights, raw.loss_mask, "token-mean", num_tokens=7.0)) == pytest.approx(15 / 7)
    # other modes: no rescaling (the per-sequence denominators already use the loss mask)
    assert run(make_ctx(agg_mode="seq-mean-token-mean", global_num_tokens=7.0)).metrics["forking/scale"] == 1.0


def test_micro_batches_are_weighted_by_their_row_share() -> None:
    # official dp_actor: each micro-batch's token-mean loss (mean over its selected tokens) is scaled by
    # 1 / gradient_accumulation = its share of the mini-batch's rows before backward().
    # This micro-batch: 2 of 4 rows (f = 0.5), 7 valid tokens of a 10-token mini-batch, selected losses 7, 8:
    # contribution = 0.5 * (7 + 8) / 2 = 3.75; scale s = f * N_global / N_sel = 0.5 * 10 / 2 = 2.5
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    out = run(make_ctx(agg_mode="token-mean", global_num_tokens=10.0, micro_batch_fraction=0.5))
    assert out.metrics["forking/scale"] == pytest.approx(2.5)
    got = aggregate(loss * out.weights, out.loss_mask, "token-mean", num_tokens=10.0)
    assert float(got) == pytest.approx(3.75)


def test_errors_and_empty_batch() -> None:
    with pytest.raises(ConfigError):
        run(make_ctx(), top_ratio=0.0)
    with pytest.raises(ConfigError):
        run(make_ctx(), method="median")
    with pytest.raises(MissingInputError):
        run(AlgoContext(response_mask=torch.ones(1, 2)))
    empty = AlgoContext(response_mask=torch.zeros(1, 3), entropy=torch.ones(1, 3))
    out = run(empty)
    assert out.loss_mask.sum() == 0 and out.metrics["forking/frac_selected"] == 0.0
