"""laser_de: the n-gram repetition check and the exploration bonus on long non-repetitive wrong answers."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.laser_de import is_repetitive, repetition_start
from rlvr.errors import MissingInputError


def test_repetition_start() -> None:
    assert repetition_start([1, 2, 1, 2]) == 4  # N <= 2n = 8: too short to judge
    # N = 12 < 30 -> bigrams, 2 occurrences needed closer than 12 // 3 = 4 tokens:
    # scanning from the end, (1, 2) is seen at 4 and then at 2 (gap 2) -> repetition from 2
    assert repetition_start([1, 2, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8]) == 2
    # (1, 2) at 8 and 0: gap 8 >= 4 is not a repetition; no 4-gram repeats either
    assert repetition_start([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 9, 10]) == 12
    # N = 40 -> trigrams; trigrams of one repeated unit are skipped, but the 6-gram "xxxxxx" repeats:
    # first seen at 34, again at 33 -> min(33, 34)
    assert repetition_start(["x"] * 40) == 33
    assert is_repetitive("ab" * 10) and not is_repetitive("abcdefghijklmnopqrst")


def ctx_of(texts: list[str], lengths: list[int], correct: list[bool], truncated: list[bool]) -> AlgoContext:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        truncated=torch.tensor(truncated),
        group_ids=torch.zeros(len(texts), dtype=torch.long),
        max_response_length=10,
        extras={"responses": texts},
    )


TEXTS = [
    "short",
    "one two three four five six seven eight nine ten",  # 10 distinct words: not repetitive
    "a b a b a b a b a b",  # (a, b) repeats 2 words apart < 10 // 3
    "cut off",
    "x",
]


def test_laser_de_exploration_bonus() -> None:
    comp = reward.build("laser_de", {"target_length": 4, "monitor_freq": 0})
    ctx = ctx_of(TEXTS, [3, 6, 6, 6, 2], [True, False, False, False, False], [False, False, False, True, False])
    out = comp(ctx)
    # target 4 for every bucket (monitor_freq 0: never refreshed). row 0 correct, L 3 <= 4: +0.5;
    # row 1 wrong, L 6 > 4, not repetitive: +0.5;  row 2 repetitive: 0;  row 3 truncated: 0;  row 4 L 2 <= 4: 0
    assert out.tolist() == pytest.approx([1.5, 0.5, 0.0, 0.0, 0.0])
    metrics = comp.prepare(ctx)
    assert metrics["laser_de/frac_explore_bonus"] == pytest.approx(0.2)
    assert metrics["laser_de/frac_repetitive"] == pytest.approx(0.5)  # rows 1 and 2 were checked
    assert metrics["laser_de/mean_term"] == pytest.approx(0.2)  # (0.5 + 0.5) / 5
    assert metrics["laser_de/monitored"] == 0.0


def test_laser_de_token_ids_unit() -> None:
    ctx = ctx_of(TEXTS, [3, 6, 6, 6, 2], [True, False, False, False, False], [False, False, False, True, False])
    comp = reward.build("laser_de", {"target_length": 4, "monitor_freq": 0, "repetition_unit": "token_ids"})
    with pytest.raises(MissingInputError, match="response_token_ids"):
        comp(ctx)
    # the ids replace the text: row 2's "a b a b ..." is now 6 distinct ids -> not repetitive;
    # row 1's ids repeat, but N = 6 <= 2n = 8 is too short to count -> both rows get +0.5
    ctx.extras["response_token_ids"] = [[1] * 3, [7, 8, 7, 8, 7, 8], [1, 2, 3, 4, 5, 6], [9] * 6, [2, 2]]
    assert comp(ctx).tolist() == pytest.approx([1.5, 0.5, 0.5, 0.0, 0.0])
