"""spae: the probe's correctness / confidence / potential by hand, and the saturation + potential-difference advantage."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.spae import probe_scores, step_potential, top_list_entropy
from rlvr.errors import MissingInputError

NAN = float("nan")
A = 1 / math.sqrt(2.0)


def test_probe_scores_by_hand() -> None:
    # 2 probes x 2 positions; probe 2 only has its first position (answer token absent from its list: -10)
    lp = torch.tensor([[-0.1, -0.2], [-10.0, NAN]], dtype=torch.float64)
    h = torch.tensor([[0.3, 0.4], [0.5, NAN]], dtype=torch.float64)
    pos = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    a, c = probe_scores(lp, h, pos)
    assert a.item() == pytest.approx((math.exp(-0.3) / 2 + math.exp(-10.0)) / 2)
    assert c.item() == pytest.approx((math.exp(-0.7) / 2 + math.exp(-0.5)) / 2)
    ga, gc = probe_scores(lp, h, pos, normalise="geometric")
    assert ga.item() == pytest.approx((math.exp(-0.15) + math.exp(-10.0)) / 2)
    assert gc.item() == pytest.approx((math.exp(-0.35) + math.exp(-0.5)) / 2)
    empty = probe_scores(lp, h, torch.zeros(2, 2))
    assert empty[0].item() == 0.0 and empty[1].item() == 0.0
    assert step_potential(1.0, 1.0) == 1.0 and step_potential(0.5, 0.2) == pytest.approx(0.15 + 0.25 - 0.2)
    assert top_list_entropy(torch.tensor([math.log(0.5), math.log(0.25)])).item() == pytest.approx(
        -(0.5 * math.log(0.5) + 0.25 * math.log(0.25))
    )


def make_ctx(potential: torch.Tensor | None) -> AlgoContext:
    mask = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2], dtype=torch.float64)
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        correct=torch.tensor([True, False]),
        group_ids=torch.tensor([0, 0]),
        extras={} if potential is None else {"step_potential": potential},
    )


def test_saturation_penalty_and_potential_shaping_by_hand() -> None:
    # steps of 2 tokens; row 0 (correct): Phi 0.2, 0.95 (saturates), unprobed; row 1 (wrong): 0.5, 0.95
    phi = torch.full((2, 6), NAN, dtype=torch.float64)
    phi[0, 1], phi[0, 3], phi[1, 1], phi[1, 3] = 0.2, 0.95, 0.5, 0.95
    comp = advantage.build("spae", {"split": "length", "step_len": 2, "base_kwargs": {"eps": 0.0}})
    assert comp.fn.probe_positions(make_ctx(phi)).nonzero().tolist() == [[0, 1], [0, 3], [0, 5], [1, 1], [1, 3]]
    got = comp(make_ctx(phi)).tolist()
    # row 0: step 1 A; step 2 A + 0.5 * 0.75; step 3 (after saturation, a checking step) 0.5 A, no probe -> no shaping
    assert got[0] == pytest.approx([A, A, A + 0.375, A + 0.375, 0.5 * A, 0.5 * A], abs=1e-12)
    # row 1 (wrong): its negative credit is not down-weighted; step 2 gets 0.5 * 0.45
    assert got[1] == pytest.approx([-A, -A, -A + 0.225, -A + 0.225, 0.0, 0.0], abs=1e-12)
    metrics = comp.fn.metrics
    assert metrics["spae/saturated_frac"] == 1.0
    assert metrics["spae/potential_mean"] == pytest.approx((0.2 + 0.95 + 0.5 + 0.95) / 4)
    assert metrics["spae/checking_frac"] == pytest.approx(2 / 10)


def test_missing_step_potential() -> None:
    with pytest.raises(MissingInputError, match="step_potential"):
        advantage.build("spae", {"split": "length"})(make_ctx(None))
    with pytest.raises(MissingInputError, match="step_potential"):
        advantage.build("spae", {"split": "length"})(make_ctx(torch.zeros(2, 3)))
