"""progrpo: the low-probability answer confidence, the prompt confidence and the solved-group shift by hand."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.progrpo import low_probability_confidence
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")


def make_ctx(with_prompt: bool = True) -> AlgoContext:
    # group 0 (rows 0, 1) has a correct response; group 1 (rows 2, 3) has none
    old = torch.tensor(
        [[-0.1, -2.0, -0.3, -0.5, -4.0], [-1.0, -1.0, NAN, NAN, NAN], [-0.2] * 5, [-3.0, NAN, NAN, NAN, NAN]],
        dtype=torch.float64,
    )
    mask = (~old.isnan()).to(torch.float64)
    extras = {}
    if with_prompt:
        extras = {
            "prompt_logprobs": torch.tensor([[NAN, -1.0, -2.0], [NAN, -1.0, -2.0], [NAN, -0.5, NAN], [NAN, -0.5, NAN]]),
            "prompt_mask": torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
        }
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
        correct=torch.tensor([True, False, False, False]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        old_logprobs=old,
        extras=extras,
    )


def test_low_probability_confidence() -> None:
    ctx = make_ctx()
    # 20% of 5 tokens -> 1 lowest (-4.0); of 2 tokens -> 1 (-1.0); of 1 -> 1
    got = low_probability_confidence(ctx.old_logprobs, ctx.response_mask, 0.2).tolist()
    assert got == pytest.approx([-4.0, -1.0, -0.2, -3.0])
    # 50%: ceil(2.5) = 3 lowest of row 0 -> (-4, -2, -0.5)
    assert low_probability_confidence(ctx.old_logprobs, ctx.response_mask, 0.5)[0].item() == pytest.approx(-6.5 / 3)


def test_shift_only_on_groups_with_a_correct_response() -> None:
    ctx = make_ctx()
    base = advantage.build("grpo")(ctx)
    got = advantage.build("progrpo", {"alpha": 0.5})(ctx)
    # c(q) = -1.5 for group 0; shifts 0.5 * (-1.5 + 4.0) = 1.25 and 0.5 * (-1.5 + 1.0) = -0.25
    assert (got[0] - base[0]).tolist() == pytest.approx([1.25] * 5, abs=1e-12)
    assert (got[1] - base[1]).tolist() == pytest.approx([-0.25, -0.25, 0.0, 0.0, 0.0], abs=1e-12)
    assert torch.equal(got[2:], base[2:])  # no correct response: plain advantage
    no_prompt = advantage.build("progrpo", {"alpha": 0.5, "prompt_term": False})(make_ctx(with_prompt=False))
    assert (no_prompt[0] - base[0]).tolist() == pytest.approx([2.0] * 5, abs=1e-12)


def test_missing_prompt_logprobs() -> None:
    with pytest.raises(MissingInputError, match="prompt_logprobs"):
        advantage.build("progrpo")(make_ctx(with_prompt=False))
    ctx = make_ctx()
    ctx.extras["prompt_mask"] = ctx.extras["prompt_mask"][:, :2]
    with pytest.raises(MissingInputError, match="must both be"):
        advantage.build("progrpo")(ctx)
    with pytest.raises(ConfigError, match="low_prob_ratio"):
        advantage.build("progrpo", {"low_prob_ratio": 0.0})
