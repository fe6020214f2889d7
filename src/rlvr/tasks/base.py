"""What a verifiable task is: prompts with stable ids, reference answers, and a scorer."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlvr.algos.registry import Registry


@dataclass(frozen=True)
class Problem:
    """One prompt. ``id`` is stable across epochs and runs (per-prompt state such as HAPO keys on it).

    ``solution`` is one worked target response (used by the supervised warm start); ``answer`` is the
    reference the verifier checks against.
    """

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A source of problems and a verifier.

    ``score`` returns the verifiable reward of one response in [0, 1] (1 = correct); it must not
    raise on any string (a malformed response scores 0).
    """

    name: str

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` training problems drawn with ``rng`` (never overlapping the held-out set)."""
        ...

    def heldout_problems(self, n: int) -> list[Problem]:
        """A fixed, deterministic held-out set of up to ``n`` problems for evaluation."""
        ...

    def score(self, problem: Problem, response: str) -> float:
        """Reward of ``response`` to ``problem``: 1.0 when verified correct, else in [0, 1)."""
        ...


tasks = Registry("task", package="rlvr.tasks")
