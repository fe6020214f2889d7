"""grpo_lambda (inferred): Kimi length penalty on the top-lambda groups by accuracy, 0/1 elsewhere."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.grpo_lambda import top_lambda_groups


def ctx_of() -> AlgoContext:
    # g0: both correct, L 2, 4 (acc 1);  g1: L 2 correct, L 6 wrong (acc .5);  g2: both wrong (acc 0);
    # g3: both correct with equal lengths (acc 1)
    lengths = [2, 4, 2, 6, 3, 5, 4, 4]
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    correct = [True, True, True, False, False, False, True, True]
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        group_ids=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
    )


def test_top_lambda_selection() -> None:
    ctx = ctx_of()
    assert ctx.correct is not None and ctx.group_ids is not None
    # K = 4 groups ranked by acc: 1, 1, .5, 0
    # lam .5 -> ceil(2) = 2nd ranked acc = 1 -> g0, g3;  lam .25 -> 1st = 1 -> g0, g3 (tie kept)
    # lam .75 -> 3rd = .5 -> g0, g1, g3;  lam 1 -> 4th = 0, but acc 0 is never selected -> g0, g1, g3
    two = [True, True, False, False, False, False, True, True]
    three = [True, True, True, True, False, False, True, True]
    assert top_lambda_groups(ctx.correct, ctx.group_ids, 0.5).tolist() == two
    assert top_lambda_groups(ctx.correct, ctx.group_ids, 0.25).tolist() == two
    assert top_lambda_groups(ctx.correct, ctx.group_ids, 0.75).tolist() == three
    assert top_lambda_groups(ctx.correct, ctx.group_ids, 1.0).tolist() == three
    assert not top_lambda_groups(ctx.correct, ctx.group_ids, 0.0).any()


def test_grpo_lambda_rewards() -> None:
    comp = reward.build("grpo_lambda", {"eps": 0.0})
    # lam .5: g0 and g3 penalised. g0: lambda = 0.5 - (L-2)/2 -> L 2: +0.5, L 4: -0.5 -> x0.4 -> +0.2, -0.2
    # g3: equal lengths -> 0.  g1, g2 keep their 0/1 rewards
    assert comp(ctx_of()).tolist() == pytest.approx([1.2, 0.8, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    metrics = comp.prepare(ctx_of())
    assert metrics["grpo_lambda/frac_selected"] == pytest.approx(0.5)
    assert metrics["grpo_lambda/frac_penalised"] == pytest.approx(1 / 8)
    # lam .75 adds g1: L 2 correct: +0.5*0.4 = +0.2; L 6 wrong: 0.4*min(0, -0.5) = -0.2
    wide = reward.build("grpo_lambda", {"lam": 0.75, "eps": 0.0})
    assert wide(ctx_of()).tolist() == pytest.approx([1.2, 0.8, 1.2, -0.2, 0.0, 0.0, 1.0, 1.0])
