"""Advantage estimators against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.errors import ConfigError, MissingInputError


def make_ctx(
    rewards: list[float], groups: list[int] | None, lengths: list[int], width: int = 3
) -> AlgoContext:
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor(rewards),
        group_ids=None if groups is None else torch.tensor(groups),
    )


def run(name: str, ctx: AlgoContext, **knobs: object) -> torch.Tensor:
    return advantage.build(name, dict(knobs))(ctx)


def seq_values(adv: torch.Tensor) -> list[float]:
    return adv[:, 0].tolist()


def close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-6, rtol=0.0)


def test_grpo_group_std_and_singleton() -> None:
    # group 0 = [1, 0, 0]: mean 1/3, unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3, std = 0.5773503
    #   A = (2/3) / 0.5773503 = 1.1547005 and (-1/3) / 0.5773503 = -0.5773503
    # group 1 = [2] (singleton): verl sets mean 0, std 1 -> A = 2
    ctx = make_ctx([1.0, 0.0, 0.0, 2.0], [0, 0, 0, 1], [3, 2, 1, 2])
    adv = run("grpo", ctx, eps=0.0)
    assert seq_values(adv) == pytest.approx([1.1547005, -0.5773503, -0.5773503, 2.0], abs=1e-6)
    # broadcast to the valid tokens, zero on padding
    expected_mask = ctx.response_mask
    assert torch.equal(adv != 0, expected_mask.bool())
    assert adv[0].tolist() == pytest.approx([1.1547005] * 3, abs=1e-6)
    # default eps = 1e-6: singleton gives 2 / (1 + 1e-6) = 1.999998
    assert run("grpo", ctx)[3, 0].item() == pytest.approx(1.999998, abs=1e-7)


def test_grpo_two_groups_default_eps_and_arbitrary_ids() -> None:
    # ids interleaved: group 7 = rows 0, 2 = {1, 0}; group 3 = rows 1, 3 = {0, 1}
    # each: mean 0.5, unbiased std = sqrt(0.5) = 0.7071068; A = +-0.5 / (0.7071068 + 1e-6) = +-0.7071058
    ctx = make_ctx([1.0, 0.0, 0.0, 1.0], [7, 3, 7, 3], [1, 1, 1, 1])
    expected = [0.7071058, -0.7071058, -0.7071058, 0.7071058]
    assert seq_values(run("grpo", ctx)) == pytest.approx(expected, abs=1e-6)


def test_grpo_batch_scale() -> None:
    # TRL scale_rewards="batch": centre per group, divide by the std of all rewards.
    # rewards [1, 0, 0, 1]: batch unbiased var = 4 * 0.25 / 3 = 1/3, std 0.5773503
    # A = +-0.5 / 0.5773503 = +-0.8660254
    ctx = make_ctx([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [2, 2, 2, 2])
    assert seq_values(run("grpo", ctx, scale="batch", eps=0.0)) == pytest.approx(
        [0.8660254, -0.8660254, -0.8660254, 0.8660254], abs=1e-6
    )


def test_grpo_all_equal_group_is_zero() -> None:
    ctx = make_ctx([1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1], [3, 3, 3, 3])
    assert torch.count_nonzero(run("grpo", ctx)) == 0


def test_dr_grpo_and_grpo_without_std() -> None:
    # group [1, 0, 0] -> 1 - 1/3 = 2/3, -1/3, -1/3 ; singleton [2] -> 2 (mean 0)
    ctx = make_ctx([1.0, 0.0, 0.0, 2.0], [0, 0, 0, 1], [3, 2, 1, 2])
    expected = [0.6666667, -0.3333333, -0.3333333, 2.0]
    assert seq_values(run("dr_grpo", ctx)) == pytest.approx(expected, abs=1e-6)
    assert seq_values(run("grpo", ctx, norm_by_std=False)) == pytest.approx(expected, abs=1e-6)


def test_grpo_bad_scale_and_missing_rewards() -> None:
    ctx = make_ctx([1.0, 0.0], [0, 0], [1, 1])
    with pytest.raises(ConfigError, match="scale"):
        run("grpo", ctx, scale="global")
    with pytest.raises(MissingInputError, match="group_ids"):
        run("grpo", make_ctx([1.0, 0.0], None, [1, 1]))


def test_rloo() -> None:
    # group [1, 0, 0]: 1 - (0+0)/2 = 1 ; 0 - (1+0)/2 = -0.5 (twice)
    # group [3, 1]:    3 - 1 = 2 ; 1 - 3 = -2
    # singleton [5]:   5 (no leave-one-out baseline, as verl)
    ctx = make_ctx([1.0, 0.0, 0.0, 3.0, 1.0, 5.0], [0, 0, 0, 1, 1, 2], [1, 2, 3, 1, 2, 3])
    adv = run("rloo", ctx)
    assert seq_values(adv) == pytest.approx([1.0, -0.5, -0.5, 2.0, -2.0, 5.0], abs=1e-6)
    assert adv[0, 1:].tolist() == [0.0, 0.0]


def test_reinforce_pp_gamma_one() -> None:
    # rewards [1, 0], lengths 3 and 2 -> token returns 1,1,1 | 0,0 ; mean 0.6
    # deviations 0.4 (x3), -0.6 (x2); unbiased var = (3*0.16 + 2*0.36) / 4 = 0.3, std 0.5477226
    # A = 0.4/0.5477226 = 0.7302967, -0.6/0.5477226 = -1.0954451
    ctx = make_ctx([1.0, 0.0], None, [3, 2])
    adv = run("reinforce_pp", ctx)
    close(adv, [[0.7302967] * 3, [-1.0954451, -1.0954451, 0.0]])


def test_reinforce_pp_discounted() -> None:
    # gamma 0.5, rewards [1, 2], lengths 3, 2: returns .25 .5 1 | 1 2 ; mean 4.75/5 = 0.95
    # deviations -.7 -.45 .05 | .05 1.05 ; unbiased var = 1.8/4 = 0.45, std 0.6708204
    ctx = make_ctx([1.0, 2.0], None, [3, 2])
    adv = run("reinforce_pp", ctx, gamma=0.5)
    expected = [[-1.0434984, -0.6708204, 0.0745356], [0.0745356, 1.5652476, 0.0]]
    close(adv, expected)
    with pytest.raises(ConfigError, match="gamma"):
        run("reinforce_pp", ctx, gamma=1.5)


def test_reinforce_pp_baseline_dler() -> None:
    # rewards [1,0 | 0,1] -> centred [.5, -.5, -.5, .5]; lengths 2, 1, 3, 1 -> 7 tokens
    # token mean = (2*.5 - .5 - 3*.5 + .5)/7 = -1/14 ; deviations 4/7 (3 tokens), -3/7 (4 tokens)
    # unbiased var = (3*16/49 + 4*9/49) / 6 = 2/7, std 0.5345225
    # A = (4/7)/0.5345225 = 1.0690450, (-3/7)/0.5345225 = -0.8017837
    ctx = make_ctx([1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1], [2, 1, 3, 1])
    adv = run("reinforce_pp_baseline", ctx)
    p, n = 1.0690450, -0.8017837
    close(adv, [[p, p, 0.0], [n, 0.0, 0.0], [n, n, n], [p, 0.0, 0.0]])


def test_requires_recorded() -> None:
    assert advantage.entry("reinforce_pp").requires == frozenset({"rewards"})
    assert advantage.entry("grpo").requires == frozenset({"rewards", "group_ids"})
