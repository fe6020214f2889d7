"""Reward functions that raise, hang or return garbage give 0, are counted, and never stall."""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter

import pytest

from rlvr.errors import RLVRError
from rlvr.tasks.base import Problem
from rlvr.tasks.scoring import DEFAULT_WORKERS, ScorerHealth, ScorerPool, safe_scores

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


# -------------------------------------------------------------------------------------------------
# Hangs are timed out concurrently and leave a bounded number of threads behind

def blocking_scorer(release: threading.Event):
    """'hang' blocks until ``release`` is set (so a test can free its stuck threads), else 1.0."""

    def score(problem: Problem, response: str) -> float:
        if response == "hang":
            release.wait(60)
        return 1.0

    return score


def test_four_hangs_cost_about_one_timeout_not_four():
    release = threading.Event()
    pool = ScorerPool(workers=4, max_stuck=8)
    responses = ["hang", "ok", "hang", "hang", "ok", "hang", "ok"]
    try:
        start = time.perf_counter()
        scores, failures = safe_scores(blocking_scorer(release), [P] * 7, responses, timeout_s=0.5, pool=pool)
        elapsed = time.perf_counter() - start
    finally:
        release.set()
    assert scores == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert failures == {"timeout": 4}
    assert elapsed < 2 * 0.5  # one-at-a-time timeouts took 4 * 0.5 s


def test_thread_count_stays_bounded_over_many_calls_with_hangs():
    release = threading.Event()
    score = blocking_scorer(release)
    before = threading.active_count()
    pool = ScorerPool(workers=2, max_stuck=3)
    try:
        with pytest.warns(UserWarning, match="all 5 scorer threads are stuck"):
            for _ in range(10):
                scores, failures = safe_scores(score, [P] * 3, ["hang", "ok", "hang"], timeout_s=0.05, pool=pool)
                assert scores[0] == scores[2] == 0.0 and failures["timeout"] >= 2
                assert threading.active_count() - before <= 2 + 3
        # every thread is now stuck: further calls time out at once
        assert pool.stuck == pool.live == 5
        start = time.perf_counter()
        scores, failures = safe_scores(score, [P] * 2, ["ok", "ok"], timeout_s=5.0, pool=pool)
        assert time.perf_counter() - start < 1.0
        assert scores == [0.0, 0.0] and failures == {"timeout": 2}
    finally:
        release.set()
    # released threads recover; the surplus above `workers` exits
    deadline = time.monotonic() + 10
    while (pool.stuck or pool.live > 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stuck == 0 and pool.live == 2
    assert safe_scores(score, [P] * 3, ["ok"] * 3, timeout_s=5.0, pool=pool) == ([1.0, 1.0, 1.0], {})


def test_the_shared_pool_is_reused_across_calls():
    threads: set[threading.Thread] = set()

    def recording(problem: Problem, response: str) -> float:
        threads.add(threading.current_thread())
        return scorer(problem, response)

    for _ in range(20):
        assert safe_scores(recording, [P] * 8, ["ok", "half"] * 4, timeout_s=5.0) == ([1.0, 0.5] * 4, {})
    assert 1 <= len(threads) <= DEFAULT_WORKERS  # one fresh thread per call before


# -------------------------------------------------------------------------------------------------
# A scorer that fails on every sample stops training


def test_scorer_failing_on_every_sample_warns_then_stops():
    health = ScorerHealth(max_all_failed_steps=3)
    with pytest.warns(UserWarning, match=r"step 1: the scorer failed on all 8 samples \(error 8\)"):
        health.update(Counter(error=8), scored=8, step=1)
    health.update(Counter(error=7), scored=8, step=2)  # one sample scored: the streak restarts
    assert health.all_failed_steps == 0
    with pytest.warns(UserWarning):
        health.update(Counter(error=5, timeout=3), scored=8, step=3)
    with pytest.warns(UserWarning):
        health.update(Counter(timeout=8), scored=8, step=4)
    assert health.all_failed_steps == 2
    with pytest.raises(RLVRError, match="failed on every sample for 3 consecutive steps"):
        health.update(Counter(non_number=8), scored=8, step=5)


def test_scorer_health_ignores_steps_without_failures():
    health = ScorerHealth(max_all_failed_steps=1)
    health.update(Counter(), scored=8, step=1)
    health.update(Counter(), scored=0, step=2)
    assert health.all_failed_steps == 0


def test_a_raising_scorer_is_reported_once_per_exception_type():
    def broken(problem: Problem, response: str) -> float:
        raise KeyError(f"no field for {response}")

    with pytest.warns(UserWarning, match=r"scorer .*broken raised KeyError: 'no field for a' \(the sample scores 0"):
        assert safe_scores(broken, [P] * 2, ["a", "b"], timeout_s=5.0) == ([0.0, 0.0], {"error": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert safe_scores(broken, [P], ["c"], timeout_s=5.0) == ([0.0], {"error": 1})
