"""Verifiable rewards that never crash or stall training.

A scorer that raises, returns a non-number, NaN or inf, or takes longer than the timeout gives that
sample reward 0; each case is counted so it shows up in the metrics.

Scoring runs in a small pool of daemon threads shared by all calls (:class:`ScorerPool`): the items
of one call are handed out in order to whichever worker is free, and each item's deadline runs from
the moment a worker starts it, so ``k`` hanging samples cost about one timeout when ``k`` does not
exceed the pool size, not ``k`` timeouts. A thread stuck in a hung scorer cannot be killed; it is
abandoned (its sample scores 0) and replaced, up to :data:`MAX_STUCK_THREADS` stuck threads, after
which calls time out at once with a warning. A stuck thread that returns rejoins the pool (or exits
when the pool is full again). Scorers that need a hard kill of runaway work (math-verify on
pathological LaTeX) do it themselves in a subprocess; see ``rlvr.tasks.math.verify_math``.

:class:`ScorerHealth` turns "the scorer failed on every sample" from a silent reward of 0 into a
warning, then an :class:`~rlvr.errors.RLVRError` after a few such steps in a row.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
import time
import warnings
from collections import Counter
from typing import Any, Callable

from rlvr.errors import RLVRError
from rlvr.tasks.base import Problem

DEFAULT_WORKERS = 4
"""Scorer threads of the shared pool: up to this many hanging samples of a call cost one timeout together."""
MAX_STUCK_THREADS = 16
"""Threads stuck in scorer calls that never returned beyond which no replacement is started."""

Outcome = tuple[str, Any]
"""``("ok", value)``, ``("error", exception)`` or ``("timeout", None)``."""


def _call(score: Callable[[Problem, str], Any], problem: Problem, response: str) -> Outcome:
    try:
        return "ok", score(problem, response)
    except BaseException as exc:  # noqa: BLE001 - a scorer bug (even SystemExit) must not kill the worker
        return "error", exc


class _Batch:
    """The items of one scoring call: handed out in order, each resolved exactly once."""

    def __init__(self, score: Callable[[Problem, str], Any], problems: list[Problem], responses: list[str]) -> None:
        self.score = score
        self.problems = problems
        self.responses = responses
        self.started: list[float | None] = [None] * len(responses)
        self.outcomes: list[Outcome | None] = [None] * len(responses)
        self.abandoned: set[int] = set()
        self.lock = threading.RLock()
        self.done = threading.Event()
        self.closed = False
        self._remaining = len(responses)
        self._next = itertools.count()
        if not responses:
            self.done.set()

    def take(self) -> int | None:
        """The next unstarted item (its start time recorded), or None when there is none."""
        if self.closed:
            return None
        index = next(self._next)  # atomic: itertools.count is implemented in C
        if index >= len(self.responses):
            return None
        self.started[index] = time.monotonic()
        return index

    def resolve(self, index: int, outcome: Outcome, *, abandon: bool = False) -> bool:
        """Record ``outcome`` unless the item already has one; ``abandon`` marks its worker stuck."""
        with self.lock:
            if self.outcomes[index] is not None:
                return False
            self.outcomes[index] = outcome
            if abandon:
                self.abandoned.add(index)
            self._remaining -= 1
            if self._remaining == 0:
                self.done.set()
            return True


class ScorerPool:
    """``workers`` scorer threads reused across calls, plus replacements for stuck ones.

    At most ``workers + max_stuck`` threads ever exist. ``live`` counts running threads, ``stuck``
    those inside a scorer call that missed its deadline.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, max_stuck: int = MAX_STUCK_THREADS) -> None:
        if workers < 1 or max_stuck < 0:
            raise ValueError(f"ScorerPool needs workers >= 1 and max_stuck >= 0, got {workers}, {max_stuck}")
        self.workers = workers
        self.max_stuck = max_stuck
        self.pid = os.getpid()
        self.live = 0
        self.stuck = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._warned = False

    def _spawn_locked(self) -> bool:
        if self.live >= self.workers + self.max_stuck:
            return False
        self.live += 1
        threading.Thread(target=self._work, daemon=True, name="rlvr-reward").start()
        return True

    def _work(self) -> None:
        while True:
            with self._lock:
                if self.live - self.stuck > self.workers:  # a recovered thread made the pool too big
                    self.live -= 1
                    return
            batch = self._queue.get()
            while (index := batch.take()) is not None:
                outcome = _call(batch.score, batch.problems[index], batch.responses[index])
                if not batch.resolve(index, outcome) and index in batch.abandoned:
                    with self._lock:
                        self.stuck -= 1
                        self._warned = False

    def _abandon(self, batch: _Batch, index: int) -> None:
        """Time out a started item; its thread counts as stuck and a replacement joins the batch."""
        with batch.lock:  # held across both so the worker's "was I abandoned" check sees the stuck count
            if not batch.resolve(index, ("timeout", None), abandon=True):
                return
            with self._lock:
                self.stuck += 1
                self._spawn_locked()
        self._queue.put(batch)  # for the replacement, or for an idle thread when no more may start

    def _all_stuck(self) -> bool:
        with self._lock:
            return self.live > 0 and self.live == self.stuck and self.live >= self.workers + self.max_stuck

    def run(
        self, score: Callable[[Problem, str], Any], problems: list[Problem], responses: list[str], timeout_s: float
    ) -> list[Outcome]:
        """The outcome of ``score`` on every pair; each item gets ``timeout_s`` from when it starts."""
        batch = _Batch(score, problems, responses)
        with self._lock:
            while self.live - self.stuck < self.workers and self._spawn_locked():
                pass
        for _ in range(min(self.workers, len(responses))):
            self._queue.put(batch)
        try:
            self._wait(batch, timeout_s)
        finally:
            batch.closed = True  # e.g. Ctrl-C while waiting: workers take no further items of this call
        return [outcome or ("timeout", None) for outcome in batch.outcomes]

    def _wait(self, batch: _Batch, timeout_s: float) -> None:
        """Until every item of ``batch`` has an outcome, timing out each ``timeout_s`` after it started."""
        while not batch.done.is_set():
            now = time.monotonic()
            wait = timeout_s
            for index, started in enumerate(batch.started):
                if started is None or batch.outcomes[index] is not None:
                    continue
                if now - started >= timeout_s:
                    self._abandon(batch, index)
                else:
                    wait = min(wait, started + timeout_s - now)
            if self._all_stuck():
                self._give_up(batch)
                return
            if batch.done.wait(max(wait, 1e-3)):
                return
            if None in batch.started:  # unstarted items left: make sure a free thread hears of them
                self._queue.put(batch)

    def _give_up(self, batch: _Batch) -> None:
        """Every thread is stuck: the unscored items time out now."""
        batch.closed = True
        for index in range(len(batch.outcomes)):
            batch.resolve(index, ("timeout", None))
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"all {self.live} scorer threads are stuck in scorer calls that never returned; samples score 0 "
                "(timeout) until one returns. The task's score() hangs on some responses: give it its own "
                "timeout (see rlvr.tasks.math.verify_math) or fix it"
            )


_POOL: ScorerPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> ScorerPool:
    """The process-wide scorer pool (a fresh one in a forked child, whose threads did not survive the fork)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = ScorerPool()
        return _POOL


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


_REPORTED: set[tuple[str, str]] = set()


def _report_error(score: Callable[..., Any], exc: BaseException, counted_in: str = "reward/failures_error") -> None:
    """Warn the first time a scorer raises a given exception type (later ones are only counted in ``counted_in``)."""
    key = (getattr(score, "__qualname__", repr(score)), type(exc).__name__)
    if key not in _REPORTED:
        _REPORTED.add(key)
        warnings.warn(
            f"scorer {key[0]} raised {key[1]}: {str(exc)[:200]} (the sample scores 0; further failures are "
            f"counted in {counted_in})"
        )


def safe_scores(
    score: Callable[[Problem, str], Any],
    problems: list[Problem],
    responses: list[str],
    timeout_s: float,
    *,
    pool: ScorerPool | None = None,
) -> tuple[list[float], Counter[str]]:
    """Score each response; failures become 0.0 and are tallied by kind.

    Kinds: ``error`` (raised), ``timeout`` (no answer within ``timeout_s`` of starting),
    ``non_number``, ``non_finite`` (NaN or inf). Runs on ``pool`` (default: :func:`shared_pool`).
    """
    rows = score_rows(score, problems, responses, timeout_s, pool=pool)
    return [reward for reward, _ in rows], Counter(kind for _, kind in rows if kind)


def score_rows(
    score: Callable[[Problem, str], Any],
    problems: list[Problem],
    responses: list[str],
    timeout_s: float,
    *,
    pool: ScorerPool | None = None,
) -> list[tuple[float, str | None]]:
    """``(reward, failure kind or None)`` of each response: :func:`safe_scores` row by row."""
    rows: list[tuple[float, str | None]] = []
    for status, value in (pool or shared_pool()).run(score, problems, responses, timeout_s):
        if status != "ok":
            if status == "error":
                _report_error(score, value)
            rows.append((0.0, status))
            continue
        rows.append(_as_reward(value))
    return rows


class ScorerHealth:
    """Stops training when the scorer fails on every sample for ``max_all_failed_steps`` steps in a row.

    Each such step warns; a step with at least one sample scored resets the count. (A scorer that
    always fails trains at reward 0: no signal, yet the run would otherwise end "successfully".)
    """

    def __init__(self, max_all_failed_steps: int = 3) -> None:
        if max_all_failed_steps < 1:
            raise ValueError(f"max_all_failed_steps must be >= 1, got {max_all_failed_steps}")
        self.max_all_failed_steps = max_all_failed_steps
        self.all_failed_steps = 0

    def update(self, failures: Counter[str], scored: int, step: int) -> None:
        """Account one step that scored ``scored`` samples with ``failures`` (from :func:`safe_scores`)."""
        if scored <= 0 or sum(failures.values()) < scored:
            self.all_failed_steps = 0
            return
        self.all_failed_steps += 1
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(failures.items()))
        if self.all_failed_steps >= self.max_all_failed_steps:
            raise RLVRError(
                f"the scorer failed on every sample for {self.all_failed_steps} consecutive steps (step {step}: "
                f"{kinds}), so every reward was 0 and nothing is learned; check the task's score() on a few "
                "responses by hand, or raise train.reward_timeout_s if the failures are timeouts"
            )
        warnings.warn(
            f"step {step}: the scorer failed on all {scored} samples ({kinds}); training stops after "
            f"{self.max_all_failed_steps} such steps in a row"
        )
