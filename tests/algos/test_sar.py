"""sar: the self-aligned reward max((ppl(a) - ppl(a|q)) / ppl(a), -1), from hand-made log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.sar import perplexity, self_aligned_reward
from rlvr.errors import MissingInputError

NAN = float("nan")


def ctx_of(extras: dict) -> AlgoContext:
    # row 0: two tokens of prob 1/2 -> ppl(a|q) = 2;  row 1: one token of prob 1/8 (then NaN padding) -> 8
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        rewards=torch.tensor([1.0, 0.0]),
        old_logprobs=torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(1 / 8), NAN]]),
        extras=extras,
    )


# answer only: row 0 two tokens of prob 1/8 -> ppl(a) = 8;  row 1 one token of prob 1/2 -> 2
PER_TOKEN = torch.tensor([[math.log(1 / 8), math.log(1 / 8)], [math.log(0.5), NAN]])


def test_perplexity_and_formula() -> None:
    ctx = ctx_of({})
    assert perplexity(ctx.old_logprobs, ctx.response_mask).tolist() == pytest.approx([2.0, 8.0])
    # row 0: (8 - 2) / 8 = 0.75;  row 1: (2 - 8) / 2 = -3 -> floor -1
    sar = self_aligned_reward(torch.tensor([2.0, 8.0]), torch.tensor([8.0, 2.0]))
    assert sar.tolist() == pytest.approx([0.75, -1.0])
    # use_log: (ln 8 - ln 2) / ln 8 = (3 - 1)/3 = 2/3;  (ln 2 - ln 8) / ln 2 = -2 -> -1
    assert self_aligned_reward(torch.tensor([2.0, 8.0]), torch.tensor([8.0, 2.0]), use_log=True).tolist() == (
        pytest.approx([2 / 3, -1.0])
    )
    # clip_value 5 caps both terms: (5 - 2) / 5 = 0.6
    assert self_aligned_reward(torch.tensor([2.0]), torch.tensor([8.0]), clip_value=5.0).tolist() == pytest.approx(
        [0.6]
    )


@pytest.mark.parametrize(
    "extras",
    [
        {"answer_only_logprobs": PER_TOKEN},  # (B, T) per-token log-probs
        {"answer_only_logprobs": torch.tensor([math.log(1 / 8), math.log(0.5)])},  # (B,) mean log-probs
        {"answer_only_ppl": torch.tensor([8.0, 2.0])},  # (B,) perplexities
    ],
)
def test_sar_reward(extras: dict) -> None:
    comp = reward.build("sar", {})
    # R += 0.2 * R_SA: 1 + 0.2 * 0.75 = 1.15;  0 + 0.2 * (-1) = -0.2
    assert comp(ctx_of(extras)).tolist() == pytest.approx([1.15, -0.2])
    metrics = comp.prepare(ctx_of(extras))
    assert metrics["sar/mean_sar"] == pytest.approx(-0.125)
    assert metrics["sar/mean_ppl_qa"] == pytest.approx(5.0)
    assert metrics["sar/mean_ppl_a"] == pytest.approx(5.0)
    assert metrics["sar/frac_floor"] == pytest.approx(0.5)


def test_sar_needs_answer_only_forward() -> None:
    with pytest.raises(MissingInputError, match="answer_only_logprobs"):
        reward.build("sar", {})(ctx_of({}))
    assert "answer_only_logprobs" in reward.entry("sar").requires
