"""copo: prompt accuracies, the global z-score and the outcome-entropy blend by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.copo import binary_entropy_ratio
from rlvr.errors import MissingInputError


def make_ctx() -> AlgoContext:
    # prompts: 0 all correct (p=1), 1 all wrong (p=0), 2 one of four (p=0.25), 3 half (p=0.5)
    rewards = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]
    return AlgoContext(
        response_mask=torch.ones(16, 2, dtype=torch.float64),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        group_ids=torch.arange(4).repeat_interleave(4),
    )


def test_blend_by_hand() -> None:
    ctx = make_ctx()
    local = advantage.build("grpo", {"eps": 0.0})(ctx)
    got = advantage.build("copo", {"eps": 0.0, "base_kwargs": {"eps": 0.0}})(ctx)
    p = [1.0, 0.0, 0.25, 0.5]
    mean = sum(p) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in p) / 3)
    glob = [(x - mean) / std for x in p]
    hb = lambda x: 0.0 if x in (0.0, 1.0) else -(x * math.log(x) + (1 - x) * math.log(1 - x)) / math.log(2)  # noqa: E731
    for q in range(4):
        h = hb(p[q])
        for row in range(4 * q, 4 * q + 4):
            # GRPO with eps 0 is 0/0 on a consistent group: copo ignores the local term there (h = 0)
            want = (h * float(local[row, 0]) if h > 0 else 0.0) + (1 - h) * glob[q]
            assert got[row].tolist() == pytest.approx([want, want], abs=1e-12)
    # consistent groups take the global term alone; the half-correct group is plain GRPO
    assert got[0, 0].item() == pytest.approx(glob[0]) and got[4, 0].item() == pytest.approx(glob[1])
    assert torch.allclose(got[12:], local[12:])


def test_binary_entropy_and_errors() -> None:
    assert binary_entropy_ratio(torch.tensor([0.0, 0.5, 1.0, 0.25])).tolist() == pytest.approx(
        [0.0, 1.0, 0.0, 0.8112781244591328]
    )
    ctx = make_ctx()
    single = AlgoContext(response_mask=torch.ones(2, 1), rewards=torch.tensor([1.0, 1.0]), group_ids=torch.zeros(2))
    assert advantage.build("copo")(single).abs().sum() == 0.0  # one prompt: no global signal
    ctx.rewards = None
    with pytest.raises(MissingInputError, match="rewards"):
        advantage.build("copo")(ctx)
