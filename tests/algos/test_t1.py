"""t1_oversample's balanced / first selection and masks; t1_anchor's refresh schedule and the parameter mix."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, controller, token_weight
from rlvr.algos.t1 import mix_parameters_, oversample_keep
from rlvr.errors import ConfigError, MissingInputError


def test_balanced_selection_by_hand() -> None:
    # group 0 (rows 0-5): rewards 0,0,0,1,0,1 -> P = rows 3, 5; N = rows 0, 1, 2, 4
    # group 1 (rows 6-8): all 0 -> P empty; group 2 (rows 9-10): fewer than keep -> all kept
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0] * 6 + [1] * 3 + [2] * 2)
    kept = oversample_keep(rewards, groups, keep=3, select="balanced")
    # alternate P, N: 3, 0, 5 | N only: 6, 7, 8 -> first 3 | rows 9, 10
    assert kept.nonzero().flatten().tolist() == [0, 3, 5, 6, 7, 8, 9, 10]
    first = oversample_keep(rewards, groups, keep=3, select="first")
    assert first.nonzero().flatten().tolist() == [0, 1, 2, 6, 7, 8, 9, 10]
    four = oversample_keep(rewards, groups, keep=4, select="balanced")
    assert four[:6].nonzero().flatten().tolist() == [0, 1, 3, 5]  # P exhausted, N fills


def test_token_weight_masks_the_dropped_rows_of_any_micro_batch() -> None:
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0])
    ctx = AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),
        rewards=rewards,
        group_ids=torch.zeros(4, dtype=torch.long),
        extras={"row_index": torch.arange(4)},
    )
    weight = token_weight.build("t1_oversample", {"keep": 2})
    with pytest.raises(MissingInputError, match="prepare"):
        weight(ctx)
    metrics = weight.prepare(ctx)
    assert metrics == {"t1_oversample/kept_frac": 0.5, "t1_oversample/kept_positive_frac": 0.5}
    part = weight(ctx.select(torch.tensor([3, 1])))  # kept rows: 1 (P) and 0 (N)
    assert part.weights.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert torch.equal(part.loss_mask, part.weights)


def test_mix_parameters() -> None:
    ref, pol = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])], [torch.tensor([3.0, 6.0]), torch.tensor([[0.0]])]
    mix_parameters_(ref, pol, 0.25)
    assert ref[0].tolist() == [1.5, 3.0] and ref[1].tolist() == [[3.0]]
    mix_parameters_(ref, pol, 1.0)
    assert ref[0].tolist() == [3.0, 6.0]
    with pytest.raises(ConfigError, match="shapes"):
        mix_parameters_([torch.zeros(2)], [torch.zeros(3)], 0.5)


def test_anchor_refreshes_every_n_steps_and_needs_the_trainer_hook() -> None:
    anchor = controller.build("t1_anchor", {"every": 2, "mix": 0.5})
    ctx = AlgoContext(response_mask=torch.ones(1, 1))
    with pytest.raises(MissingInputError, match="refresh_reference"):
        anchor.prepare(ctx)
    calls: list[float] = []
    ctx.extras["refresh_reference"] = calls.append
    flags = []
    for _ in range(5):
        anchor.prepare(ctx)
        flags.append(anchor.fn.after_step({})["t1_anchor/refreshed"])
    assert flags == [0.0, 1.0, 0.0, 1.0, 0.0] and calls == [0.5, 0.5]
    resumed = controller.build("t1_anchor", {"every": 2, "mix": 0.5})
    resumed.load_state_dict(anchor.state_dict())
    resumed.prepare(ctx)
    assert resumed.fn.after_step({})["t1_anchor/refreshed"] == 1.0  # step 6
