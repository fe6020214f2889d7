"""format_length: regex format bonus/penalty plus the shortness bonus of correct responses."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import ConfigError


def ctx_of(texts: list[str], lengths: list[int], correct: list[bool]) -> AlgoContext:
    width = max(lengths)
    return AlgoContext(
        response_mask=torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths]),
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        max_response_length=20,
        extras={"responses": texts},
    )


TEXTS = [
    "<think>a</think> <answer>4</answer>",
    "  <think>x</think><answer>5</answer>\n",
    "4",
    "<answer>4</answer>",
]


def test_format_length_values() -> None:
    ctx = ctx_of(TEXTS, [10, 12, 30, 4], [True, False, True, True])
    comp = reward.build("format_length", {"format_penalty": 0.2})
    # format (fullmatch of the stripped text): rows 0, 1 ok (+0.1), rows 2, 3 not (-0.2)
    # length (correct only, L_ref 20): row 0: 0.1*(1 - 10/20) = 0.05; row 2: min(30, 20) -> 0;
    # row 3: 0.1*(1 - 4/20) = 0.08
    assert comp(ctx).tolist() == pytest.approx([1.15, 0.1, 0.8, 0.88])
    metrics = comp.prepare(ctx)
    assert metrics["format_length/frac_format_ok"] == pytest.approx(0.5)
    assert metrics["format_length/mean_length_term"] == pytest.approx((0.05 + 0.08) / 4)


def test_format_length_search_pattern_and_errors() -> None:
    ctx = ctx_of(["so \\boxed{4}.", "4"], [5, 1], [False, False])
    comp = reward.build("format_length", {"pattern": r"\\boxed\{.+\}", "match": "search", "length_coef": 0.0})
    assert comp(ctx).tolist() == pytest.approx([0.1, 0.0])
    with pytest.raises(ConfigError, match="invalid pattern"):
        reward.build("format_length", {"pattern": "("})
    with pytest.raises(ConfigError, match="match: expected 'fullmatch' or 'search'"):
        reward.build("format_length", {"match": "prefix"})
    with pytest.raises(ConfigError, match="unknown match 'prefix'"):  # the class checks too (direct use)
        reward.get("format_length")(match="prefix")
