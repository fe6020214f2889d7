"""What a verifiable task is: prompts with stable ids, reference answers, and a scorer."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

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


# --------------------------------------------------------------------------------------------------
# Deterministic train / held-out split, shared by the procedural tasks

HELDOUT_MODULUS = 10
"""One problem id in ``HELDOUT_MODULUS`` (10 %) is reserved for evaluation."""

HELDOUT_SEED = 1234
"""Seed of the fixed stream the held-out problems are read from."""


def stable_hash(text: str) -> int:
    """A process-independent 64-bit hash of ``text`` (sha256; Python's ``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_heldout(problem_id: str, modulus: int = HELDOUT_MODULUS) -> bool:
    """Whether ``problem_id`` belongs to the held-out split (``stable_hash(id) % modulus == 0``)."""
    return stable_hash(problem_id) % modulus == 0


def draw_train(generate: Callable[[random.Random], Problem], n: int, rng: random.Random, what: str) -> list[Problem]:
    """``n`` problems from ``generate(rng)`` outside the held-out split (repeats are possible)."""
    out: list[Problem] = []
    budget = 1000 + 100 * n
    while len(out) < n:
        budget -= 1
        if budget < 0:
            raise RuntimeError(f"{what}: could not draw {n} training problems; the problem space is too small")
        problem = generate(rng)
        if not is_heldout(problem.id):
            out.append(problem)
    return out


def draw_heldout(generate: Callable[[random.Random], Problem], n: int, what: str, seed: int = HELDOUT_SEED) -> list[Problem]:
    """The first ``n`` distinct held-out problems of a fixed-seed stream (fewer if the space runs out)."""
    rng = random.Random(f"{what}:heldout:{seed}")  # str seeds are hashed with sha512: stable across runs
    out: list[Problem] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n and misses < 20_000:
        problem = generate(rng)
        if problem.id in seen or not is_heldout(problem.id):
            misses += 1
            continue
        seen.add(problem.id)
        out.append(problem)
        misses = 0
    return out


tasks = Registry("task", package="rlvr.tasks")
