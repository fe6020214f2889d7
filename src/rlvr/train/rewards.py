"""Verifiable rewards that never crash or stall training.

A scorer that raises, returns a non-number, NaN or inf, or takes longer than the timeout gives that
sample reward 0; each case is counted so it shows up in the metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from rlvr.tasks.base import Problem

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rlvr-reward")


def safe_scores(
    score: Callable[[Problem, str], float],
    problems: list[Problem],
    responses: list[str],
    timeout_s: float,
) -> tuple[list[float], Counter[str]]:
    """Score each response; failures become 0.0 and are tallied by kind (error/timeout/non_finite)."""
    failures: Counter[str] = Counter()
    futures = [_POOL.submit(score, p, r) for p, r in zip(problems, responses)]
    scores: list[float] = []
    for future in futures:
        try:
            value = future.result(timeout=timeout_s)
        except FutureTimeout:
            failures["timeout"] += 1
            scores.append(0.0)
            continue
        except Exception:
            failures["error"] += 1
            scores.append(0.0)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            failures["non_number"] += 1
            scores.append(0.0)
            continue
        if not math.isfinite(value):
            failures["non_finite"] += 1
            scores.append(0.0)
            continue
        scores.append(value)
    return scores, failures
