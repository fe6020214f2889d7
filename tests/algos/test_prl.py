"""prl: the KL-suffix process advantage by hand for each base and step split; equal to GRPO at pi_old = pi_ref."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.errors import MissingInputError

NAN = float("nan")
INV_SQRT2 = 1 / math.sqrt(2.0)
# d = log pi_old - log pi_ref: row 0 (5 tokens) 0.1, 0.2, -0.1, 0.3, 0.5; row 1 (3 tokens) 0.4, 0.0, -0.2
# suffix sums C: row 0 1.0, 0.9, 0.7, 0.8, 0.5; row 1 0.2, -0.2, -0.2; eta 10 -> C / eta
D = [[0.1, 0.2, -0.1, 0.3, 0.5], [0.4, 0.0, -0.2, NAN, NAN]]
MASK = [[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0]]


def make_ctx(texts: list[str] | None = None) -> AlgoContext:
    d = torch.tensor(D, dtype=torch.float64)
    ref = torch.full_like(d, math.log(0.25))
    return AlgoContext(
        response_mask=torch.tensor(MASK, dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
        old_logprobs=ref + d,
        ref_logprobs=ref,
        extras={"responses": texts} if texts is not None else {},
    )


def adv_of(ctx: AlgoContext, **knobs: object) -> list[list[float]]:
    return advantage.build("prl", {"eta": 10.0, "eps": 0.0, **knobs})(ctx).tolist()


def test_token_split_gives_every_token_its_own_kl_suffix() -> None:
    # base grpo: b = (R - 0.5) / std(1, 0) = +-1/sqrt(2) = +-0.707107; A_t = b - C_t / 10
    got = adv_of(make_ctx(), split="token")
    b = INV_SQRT2
    assert got[0] == pytest.approx([b - 0.10, b - 0.09, b - 0.07, b - 0.08, b - 0.05], abs=1e-12)
    assert got[1] == pytest.approx([-b - 0.02, -b + 0.02, -b + 0.02, 0.0, 0.0], abs=1e-12)
    # base raw (official prm.adv='prm'): b = R
    raw = adv_of(make_ctx(), split="token", base="raw")
    assert raw[0] == pytest.approx([0.90, 0.91, 0.93, 0.92, 0.95], abs=1e-12)
    assert raw[1] == pytest.approx([-0.02, 0.02, 0.02, 0.0, 0.0], abs=1e-12)


def test_fixed_length_steps_take_the_value_at_the_step_end() -> None:
    # step_len 2: row 0 steps end at tokens 1, 3, 4 -> C = 0.9, 0.9, 0.8, 0.8, 0.5; row 1 at 1, 2 -> -0.2 (all)
    got = adv_of(make_ctx(), split="length", step_len=2)
    b = INV_SQRT2
    assert got[0] == pytest.approx([b - 0.09, b - 0.09, b - 0.08, b - 0.08, b - 0.05], abs=1e-12)
    assert got[1] == pytest.approx([-b + 0.02] * 3 + [0.0, 0.0], abs=1e-12)
    # default step_len 64: one step per response, every token charged the last token's d only
    default = advantage.build("prl", {"eta": 10.0, "eps": 0.0})
    assert default(make_ctx()).tolist()[0] == pytest.approx([b - 0.05] * 5, abs=1e-12)
    assert default.fn.metrics["prl/steps_mean"] == 1.0
    assert default.fn.metrics["prl/kl_mean"] == pytest.approx(1.2 / 8)


def test_delimiter_steps_from_the_response_text() -> None:
    # one character per token: "ab\ncd" ends steps at tokens 2 and 4; "xyz" only at its last token
    got = adv_of(make_ctx(["ab\ncd", "xyz"]), split="delimiter")
    b = INV_SQRT2
    assert got[0] == pytest.approx([b - 0.07] * 3 + [b - 0.05] * 2, abs=1e-12)
    assert got[1] == pytest.approx([-b + 0.02] * 3 + [0.0, 0.0], abs=1e-12)
    with pytest.raises(MissingInputError, match="token_texts"):
        adv_of(make_ctx(["a much longer text", "xyz"]), split="delimiter")


def test_equals_grpo_while_the_policy_is_the_reference() -> None:
    ctx = make_ctx()
    ctx.old_logprobs = ctx.ref_logprobs.clone()
    ctx.rewards = torch.tensor([1.0, 0.0])
    grpo = advantage.build("grpo")(ctx)
    assert torch.allclose(advantage.build("prl")(ctx).float(), grpo.float(), atol=0.0)
    ctx.ref_logprobs = None
    with pytest.raises(MissingInputError, match="ref_logprobs"):
        advantage.build("prl")(ctx)


def test_outcome_base_rejects_an_unknown_choice() -> None:
    from rlvr.algos.prl import outcome_base
    from rlvr.errors import ConfigError

    with pytest.raises(ConfigError, match="base 'bogus'"):
        outcome_base(torch.ones(2), torch.zeros(2), "bogus", True, 0.0)  # type: ignore[arg-type]
