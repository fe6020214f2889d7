"""Arithmetic: ``a+b=`` / ``a-b=`` / ``a*b=`` with an integer answer.

Format (char-model friendly)::

    prompt:   "47+8="
    response: "55"       then the tokenizer's EOS

The response's first line, stripped, must be an integer (optional leading ``-``) equal to the result.
Held-out split as for countdown: a sha256 bucket of the stable id ``arithmetic:47+8``.
"""

from __future__ import annotations

import random
import re

from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem, tasks
from rlvr.tasks.base import draw_heldout, draw_train
from rlvr.tasks.countdown import first_line

ALLOWED_OPS = "+-*"
_INTEGER = re.compile(r"-?\d{1,64}")


def apply_op(a: int, op: str, b: int) -> int:
    """``a op b`` for op in ``+ - *``."""
    return a + b if op == "+" else a - b if op == "-" else a * b


def arithmetic_problem(a: int, op: str, b: int) -> Problem:
    """The Problem ``a op b =`` with its stable id, answer and (trivial) worked solution."""
    result = str(apply_op(a, op, b))
    expression = f"{a}{op}{b}"
    return Problem(
        id=f"arithmetic:{expression}",
        prompt=f"{expression}=",
        answer=result,
        solution=result,
        meta={"a": a, "b": b, "op": op},
    )


def parse_integer(response: str) -> int | None:
    """The integer on the first line of ``response``, or None if that line is not exactly an integer."""
    line = first_line(response)
    return int(line) if _INTEGER.fullmatch(line) else None


@tasks.register("arithmetic")
class ArithmeticTask:
    """Two operands of up to ``max_digits`` digits and one operator from ``ops``.

    Operands are uniform in ``0 .. 10**max_digits - 1``. With ``allow_negative=False`` the operands
    of ``-`` are ordered so the result is never negative.
    """

    name = "arithmetic"

    def __init__(self, *, max_digits: int = 2, ops: str = ALLOWED_OPS, allow_negative: bool = False) -> None:
        if not 1 <= max_digits <= 18:
            raise ConfigError(f"task.max_digits must be in 1..18, got {max_digits}")
        if not ops or not set(ops) <= set(ALLOWED_OPS):
            raise ConfigError(f"task.ops must be a non-empty subset of '{ALLOWED_OPS}', got '{ops}'")
        self.max_digits = max_digits
        self.ops = "".join(op for op in ALLOWED_OPS if op in ops)
        self.allow_negative = allow_negative

    def generate(self, rng: random.Random) -> Problem:
        """One random problem (train or held-out)."""
        high = 10**self.max_digits - 1
        a, b = rng.randint(0, high), rng.randint(0, high)
        op = rng.choice(self.ops)
        if op == "-" and not self.allow_negative and a < b:
            a, b = b, a
        return arithmetic_problem(a, op, b)

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` random problems outside the held-out split."""
        return draw_train(self.generate, n, rng, self.name)

    def heldout_problems(self, n: int) -> list[Problem]:
        """The first ``n`` distinct held-out problems of a fixed stream (same for every run)."""
        return draw_heldout(self.generate, n, self.name)

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the first line of ``response`` is exactly the integer result, else 0.0."""
        try:
            value = parse_integer(response)
            return 1.0 if value is not None and value == int(problem.answer) else 0.0
        except Exception:  # noqa: BLE001 - a scorer must never raise
            return 0.0
