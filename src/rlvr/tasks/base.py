"""What a verifiable task is: prompts with stable ids, reference answers, and a scorer."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from rlvr.registry import Registry


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


# --------------------------------------------------------------------------------------------------
# Prompts a model can take: shared by the trainer's training and held-out sets and by ``rlvr eval``

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
"""Hugging Face config fields that give a model's context length, in the order they are tried."""


def context_length(config: Mapping[str, Any]) -> int | None:
    """The context length recorded in a model config dict (also under ``text_config``), or None."""
    for source in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def prompt_issue(problem: Any, count_tokens: Callable[[str], int], max_tokens: int | None) -> str | None:
    """Why ``problem`` cannot be prompted (None if it can).

    ``wrong_type`` (not a Problem with a str prompt), ``empty_prompt``, or ``long_prompt`` (more
    than ``max_tokens`` tokens by ``count_tokens``; no limit when ``max_tokens`` is None).
    """
    if not isinstance(problem, Problem) or not isinstance(problem.prompt, str):
        return "wrong_type"
    if not problem.prompt.strip():
        return "empty_prompt"
    if max_tokens is not None and count_tokens(problem.prompt) > max_tokens:
        return "long_prompt"
    return None


def drop_unusable(
    problems: list[Any], count_tokens: Callable[[str], int], max_tokens: int | None, what: str
) -> tuple[list[Problem], Counter[str], str | None]:
    """``problems`` without those :func:`prompt_issue` rejects, the rejections by reason, and one
    warning line naming their number, reasons and first ids (None when nothing was dropped)."""
    kept: list[Problem] = []
    skipped: Counter[str] = Counter()
    shown: list[str] = []
    for problem in problems:
        reason = prompt_issue(problem, count_tokens, max_tokens)
        if reason is None:
            kept.append(problem)
            continue
        skipped[reason] += 1
        if len(shown) < 3:
            shown.append(str(getattr(problem, "id", repr(problem)[:40])))
    if not skipped:
        return kept, skipped, None
    labels = {"long_prompt": f"longer than {max_tokens} tokens"}
    reasons = ", ".join(f"{count} {labels.get(r, r.replace('_', ' '))}" for r, count in sorted(skipped.items()))
    more = ", ..." if sum(skipped.values()) > len(shown) else ""
    note = f"skipping {sum(skipped.values())} of {len(problems)} {what} problems ({reasons}): {', '.join(shown)}{more}"
    return kept, skipped, note


tasks = Registry("task", package="rlvr.tasks")
