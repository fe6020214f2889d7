"""empg: step entropies, the batch min-max, g and the next-step bonus by hand; normalisation; delimiter steps."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")
A = 1 / math.sqrt(2.0)  # GRPO of rewards (1, 0) with eps 0


def make_ctx(texts: list[str] | None = None) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
        old_entropy=torch.tensor([[1.0, 3.0, 2.0, 2.0], [0.0, 1.0, 4.0, NAN]], dtype=torch.float64),
        extras={"responses": texts} if texts is not None else {},
    )


def build(**knobs: object):
    return advantage.build("empg", {"base_kwargs": {"eps": 0.0}, **knobs})


def test_fixed_length_steps_by_hand() -> None:
    # step_len 2: row 0 steps {0,1} H=2, {2,3} H=2; row 1 steps {0,1} H=0.5, {2} H=4
    # H~ = (H - 0.5) / (3.5 + 1e-8): 3/7, 3/7, 0, 1; g = e^{-H~} / mean; f = e^{-H~}
    h = [3 / 7, 3 / 7, 0.0, 1.0]
    h = [x * 3.5 / (3.5 + 1e-8) for x in h]
    raw = [math.exp(-x) for x in h]
    mean_raw = sum(raw) / 4
    g = [r / (mean_raw + 1e-8) for r in raw]
    f = raw
    zeta = 0.1
    row0 = [g[0] * A + zeta * f[1]] * 2 + [g[1] * A] * 2
    row1 = [-g[2] * A + zeta * f[3]] * 2 + [-g[3] * A]
    comp = build(split="length", step_len=2, normalize="none")
    got = comp(make_ctx()).tolist()
    assert got[0] == pytest.approx(row0, abs=1e-12)
    assert got[1] == pytest.approx(row1 + [0.0], abs=1e-12)
    assert comp.fn.metrics["empg/steps_mean"] == 2.0
    assert comp.fn.metrics["empg/scale_max"] == pytest.approx(g[2], abs=1e-12)
    # normalize="mean" subtracts the token mean of the 7 valid values
    mean = (sum(row0) + sum(row1)) / 7
    centred = build(split="length", step_len=2)(make_ctx()).tolist()
    assert centred[0] == pytest.approx([v - mean for v in row0], abs=1e-12)
    assert centred[1] == pytest.approx([v - mean for v in row1] + [0.0], abs=1e-12)
    whitened = build(split="length", step_len=2, normalize="mean_std")(make_ctx())
    valid = whitened[make_ctx().response_mask > 0]
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(valid.var()) == pytest.approx(1.0, abs=1e-6)  # verl's unbiased masked_var


def test_equal_step_entropies_give_the_base_advantage_plus_the_bonus() -> None:
    ctx = make_ctx()
    ctx.old_entropy = torch.full_like(ctx.old_entropy, 0.5)  # exact step means (0.7 would differ by an ulp)
    # one step per response (default step_len 64): H~ = 0 everywhere, g = 1 / (1 + 1e-8), no next step
    got = build(normalize="none")(ctx).tolist()
    assert got[0] == pytest.approx([A / (1 + 1e-8)] * 4, abs=1e-12)
    assert got[1] == pytest.approx([-A / (1 + 1e-8)] * 3 + [0.0], abs=1e-12)


def test_delimiter_steps_from_the_text() -> None:
    # one character per token: "ab\n\n" and "x\n\n" each end their only step at their last token
    ctx = make_ctx(["ab\n\n", "x\n\n"])
    got = build(split="delimiter", normalize="none")(ctx).tolist()
    # row 0: one step H=2; row 1: one step {0,1,2}, H=5/3; H~ = 1, 0 -> g = e^-1 / m, 1 / m
    m = (math.exp(-1.0) + 1.0) / 2
    h0 = 1.0 * (1 / 3) / (1 / 3 + 1e-8)
    g0, g1 = math.exp(-h0) / (m + 1e-8), 1.0 / (m + 1e-8)
    assert got[0] == pytest.approx([g0 * A] * 4, rel=1e-7)
    assert got[1] == pytest.approx([-g1 * A] * 3 + [0.0], rel=1e-7)


def test_errors() -> None:
    ctx = make_ctx()
    ctx.old_entropy = None
    with pytest.raises(MissingInputError, match="old_entropy"):
        build()(ctx)
    with pytest.raises(ConfigError, match="normalize"):
        advantage.build("empg", {"normalize": "z"})
    with pytest.raises(ConfigError, match="base"):
        advantage.build("empg", {"base": "empg"})
