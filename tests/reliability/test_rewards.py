"""Reward functions that raise, hang or return garbage give 0, are counted, and never stall."""

from __future__ import annotations

import time

from rlvr.tasks.base import Problem
from rlvr.train.rewards import safe_scores

P = Problem(id="p", prompt="q", answer="a")


def scorer(problem: Problem, response: str):
    behaviour = {
        "ok": 1.0,
        "half": 0.5,
        "true": True,
        "raise": None,
        "nan": float("nan"),
        "inf": float("inf"),
        "str": "abc",
        "none": None,
        "hang": None,
    }
    if response == "raise":
        raise RuntimeError("scorer bug")
    if response == "hang":
        time.sleep(30)
    return behaviour[response]


def test_each_failure_kind_is_zero_and_counted():
    responses = ["ok", "raise", "nan", "inf", "str", "none", "half", "true"]
    scores, failures = safe_scores(scorer, [P] * len(responses), responses, timeout_s=5.0)
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0]
    assert failures == {"error": 1, "non_finite": 2, "non_number": 2}


def test_hanging_scorer_is_bounded_and_later_items_still_scored():
    responses = ["ok", "hang", "ok", "hang", "half"]
    start = time.perf_counter()
    scores, failures = safe_scores(scorer, [P] * len(responses), responses, timeout_s=0.3)
    elapsed = time.perf_counter() - start
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.5]
    assert failures == {"timeout": 2}
    assert elapsed < 2 * 0.3 + 1.0
