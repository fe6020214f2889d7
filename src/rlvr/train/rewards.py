"""Verifiable rewards that never crash or stall training.

A scorer that raises, returns a non-number, NaN or inf, or takes longer than the timeout gives that
sample reward 0; each case is counted so it shows up in the metrics.

Scoring runs in a daemon worker thread, one item after another, while the caller waits at most
``timeout_s`` per item. A worker stuck in a hung scorer is abandoned (a thread cannot be killed;
being a daemon it never blocks interpreter exit) and a fresh worker takes the remaining items.
Scorers that need a hard kill of runaway work (math-verify on pathological LaTeX) do it themselves
in a subprocess; see ``rlvr.tasks.math.verify_math``.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import Counter
from typing import Any, Callable

from rlvr.tasks.base import Problem



def _worker(
    score: Callable[[Problem, str], Any],
    items: list[tuple[int, Problem, str]],
    results: "queue.Queue[tuple[int, str, Any]]",
) -> None:
    for index, problem, response in items:
        try:
            results.put((index, "ok", score(problem, response)))
        except Exception as exc:  # a scorer bug must not stop training
            results.put((index, "error", exc))


def _as_reward(value: Any) -> tuple[float, str | None]:
    """``(reward, failure kind or None)`` for one scorer return value."""
    if isinstance(value, bool):
        return float(value), None
    try:
        reward = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0, "non_number"
    if not math.isfinite(reward):
        return 0.0, "non_finite"
    return reward, None


def safe_scores(
    score: Callable[[Problem, str], Any],
    problems: list[Problem],
    responses: list[str],
    timeout_s: float,
) -> tuple[list[float], Counter[str]]:
    """Score each response; failures become 0.0 and are tallied by kind.

    Kinds: ``error`` (raised), ``timeout`` (no answer within ``timeout_s``), ``non_number``,
    ``non_finite`` (NaN or inf).
    """
    failures: Counter[str] = Counter()
    scores = [0.0] * len(responses)
    pending = list(enumerate(zip(problems, responses)))
    while pending:
        results: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        items = [(i, p, r) for i, (p, r) in pending]
        threading.Thread(target=_worker, args=(score, items, results), daemon=True, name="rlvr-reward").start()
        answered = 0
        for _ in items:
            try:
                index, status, value = results.get(timeout=timeout_s)
            except queue.Empty:
                break
            answered += 1
            if status == "error":
                failures["error"] += 1
                continue
            scores[index], kind = _as_reward(value)
            if kind:
                failures[kind] += 1
        if answered == len(items):
            break
        # items[answered] hung: count it, abandon its worker, resume after it with a fresh one
        failures["timeout"] += 1
        pending = pending[answered + 1 :]
    return scores, failures
