"""EMPO (arXiv 2504.05812): semantic-cluster frequency rewards, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.errors import ConfigError, MissingInputError

RESPONSES = [
    "so \\boxed{1}", "\\boxed{ 1 }", "\\boxed{1}", "\\boxed{2}",  # clusters (3, 1)
    "\\boxed{3}", "\\boxed{4}", "\\boxed{5}", "\\boxed{6}",  # all different
    "\\boxed{7}", "\\boxed{7}", "no box", "none either",  # 7, 7 and two without an answer
    "a", "b", "c", "d",  # no answer at all
]


def make_ctx(responses=RESPONSES, width=2) -> AlgoContext:
    n = len(responses)
    return AlgoContext(
        response_mask=torch.ones(n, width),
        rewards=torch.ones(n),  # the verifier reward is replaced, never read
        group_ids=torch.arange(n) // 4,
        extras={"responses": list(responses)},
    )


def run(**knobs) -> tuple[list[float], dict[str, float]]:
    shaper = reward.build("empo", knobs).fn
    out = shaper(make_ctx())
    return out.tolist(), shaper.prepare(None)


def test_default_rewards_by_hand() -> None:
    rewards, metrics = run()
    assert rewards == pytest.approx(
        [0.75, 0.75, 0.75, 0.25]  # own cluster's frequency
        + [0.0] * 4  # all different: H = log 4, filtered
        + [0.5, 0.5, 0.0, 0.0]  # missing answers: singletons, reward 0
        + [0.0] * 4  # four singletons: filtered
    )
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h2 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert metrics["empo/semantic_entropy"] == pytest.approx((h0 + 2 * math.log(4) + h2) / 4)
    assert metrics["empo/filtered_frac"] == 0.5 and metrics["empo/num_clusters"] == pytest.approx(13 / 4)
    assert metrics["empo/missing_frac"] == pytest.approx(6 / 16)


def test_variants_by_hand() -> None:
    unfiltered, _ = run(entropy_filter=False, missing_reward="frequency")  # the verl port
    assert unfiltered == pytest.approx([0.75, 0.75, 0.75, 0.25] + [0.25] * 4 + [0.5, 0.5, 0.25, 0.25] + [0.25] * 4)
    shared, _ = run(missing="cluster")  # missing answers form one cluster (still reward 0)
    assert shared[8:] == pytest.approx([0.5, 0.5, 0.0, 0.0] + [0.0] * 4)
    shared_freq, _ = run(missing="cluster", missing_reward="frequency")
    assert shared_freq[8:] == pytest.approx([0.5] * 4 + [1.0] * 4)


def test_expression_value_equivalence() -> None:
    texts = ["3*5+7", "7+5*3", "22", "2*11", "3*5", "15", "abc", "(5)*3"]
    shaper = reward.build("empo", {"extract": "first_line", "equivalence": "expression_value"}).fn
    assert shaper(make_ctx(texts)).tolist() == pytest.approx([1.0] * 4 + [0.75, 0.75, 0.0, 0.75])
    exact = reward.build("empo", {"extract": "first_line"}).fn
    assert exact(make_ctx(texts)).tolist() == [0.0] * 8  # every string differs in both groups: filtered


def test_official_float_filter_misses_g7() -> None:
    # why the exact "all distinct" test: the official numpy entropy of 7 distinct answers is < log 7
    p = np.bincount(np.arange(7)) / 7
    assert -(p * np.log(p)).sum() < math.log(7)
    texts = [f"\\boxed{{{i}}}" for i in range(6)] + ["no answer"]
    ctx = AlgoContext(response_mask=torch.ones(7, 1), group_ids=torch.zeros(7), extras={"responses": texts})
    assert reward.build("empo").fn(ctx).tolist() == [0.0] * 7
    assert reward.build("empo", {"entropy_filter": False}).fn(ctx).tolist() == pytest.approx([1 / 7] * 6 + [0.0])


def test_errors() -> None:
    with pytest.raises(ConfigError, match="equivalence"):
        reward.build("empo").fn.__class__(equivalence="llm")  # type: ignore[arg-type]
    with pytest.raises(MissingInputError, match="responses"):
        reward.build("empo").fn(AlgoContext(response_mask=torch.ones(2, 1), group_ids=torch.zeros(2)))
