"""Countdown: combine the given numbers with + - * (and parentheses) to hit a target.

The built-in default task. It suits a tiny character-level model trained from scratch in minutes:
prompts and answers are a dozen characters, the verifier is exact, and most problems have several
valid answers (any order, any bracketing), so RL has room to improve on the warm start.

Format (the worked solutions have no spaces; spaces in a response are allowed)::

    prompt:   "3 5 7>22="        numbers in ascending order, '>', the target, '='
    response: "3*5+7"            then the tokenizer's EOS

A response is correct when it is an expression over ints with only ``+ - *`` and parentheses (no
unary minus), uses each given number exactly once, and evaluates to the target. Anything after the
first newline is ignored.

The train / held-out split is by a hash of the problem id (see :func:`is_heldout`), shared with the
other procedural tasks.
"""

from __future__ import annotations

import ast
import itertools
import random
from collections import Counter
from functools import lru_cache
from typing import Union

from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem, draw_heldout, draw_train, tasks

# --------------------------------------------------------------------------------------------------
# Expression trees

Leaf = int
Node = Union[Leaf, tuple[str, "Node", "Node"]]
"""An expression: an int leaf or ``(op, left, right)`` with op in ``+ - *``."""

ALLOWED_OPS = "+-*"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_LEAF_PRECEDENCE = 3
MAX_RESPONSE_CHARS = 200
"""Longer responses score 0 without being parsed."""
_RESPONSE_CHARS = frozenset("0123456789+-*() ")


def evaluate(node: Node) -> int:
    """Value of an expression tree."""
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = evaluate(left), evaluate(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def render(node: Node) -> str:
    """The expression with the fewest parentheses that keep its value, e.g. ``3*(5+7)``, ``3*5+7``."""
    return _render(node)[0]


def _render(node: Node) -> tuple[str, int]:
    """(text, precedence of its top operator)."""
    if isinstance(node, int):
        return str(node), _LEAF_PRECEDENCE
    op, left, right = node
    prec = _PRECEDENCE[op]
    left_text, left_prec = _render(left)
    right_text, right_prec = _render(right)
    if left_prec < prec:
        left_text = f"({left_text})"
    # a-(b+c) and a-(b-c) need their parentheses; a+(b-c) and a*(b*c) do not.
    if right_prec < prec or (right_prec == prec and op == "-"):
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}", prec


def random_tree(values: list[int], ops: str, rng: random.Random) -> Node:
    """A random binary expression over ``values`` in this order, with random operators."""
    if len(values) == 1:
        return values[0]
    split = rng.randint(1, len(values) - 1)
    return (rng.choice(ops), random_tree(values[:split], ops, rng), random_tree(values[split:], ops, rng))


@lru_cache(maxsize=4096)
def _all_expressions(values: tuple[int, ...], ops: str) -> dict[str, tuple[int, int]]:
    """Every expression over ``values`` in this order: minimal-parenthesis text -> (value, precedence)."""
    if len(values) == 1:
        return {str(values[0]): (values[0], _LEAF_PRECEDENCE)}
    out: dict[str, tuple[int, int]] = {}
    for split in range(1, len(values)):
        lefts = _all_expressions(values[:split], ops)
        rights = _all_expressions(values[split:], ops)
        for (lt, (lv, lp)), (rt, (rv, rp)), op in itertools.product(lefts.items(), rights.items(), ops):
            prec = _PRECEDENCE[op]
            left_text = f"({lt})" if lp < prec else lt
            right_text = f"({rt})" if rp < prec or (rp == prec and op == "-") else rt
            value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
            out.setdefault(f"{left_text}{op}{right_text}", (value, prec))
    return out


def solutions(numbers: list[int] | tuple[int, ...], target: int, ops: str = ALLOWED_OPS) -> list[str]:
    """All distinct valid answers, as minimal-parenthesis strings, sorted.

    Two answers are distinct when their texts differ, so ``3*5+7``, ``5*3+7`` and ``7+3*5`` count
    separately while ``(3+5)+7`` and ``3+(5+7)`` are the same ``3+5+7``. Cost grows fast with the
    count: fine up to 5 numbers.
    """
    found: set[str] = set()
    for order in set(itertools.permutations(numbers)):
        for text, (value, _) in _all_expressions(tuple(order), ops).items():
            if value == target:
                found.add(text)
    return sorted(found)


def count_solutions(numbers: list[int] | tuple[int, ...], target: int, ops: str = ALLOWED_OPS) -> int:
    """How many distinct valid answers ``numbers -> target`` has (see :func:`solutions`)."""
    return len(solutions(numbers, target, ops))


# --------------------------------------------------------------------------------------------------
# Safe parsing of a response


class _Rejected(Exception):
    """The response is not an allowed expression."""


def _leaves_and_value(node: ast.AST) -> tuple[list[int], int]:
    """Integer leaves and value of an ``ast`` expression made only of ints, + - * and parentheses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value], node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        left_leaves, a = _leaves_and_value(node.left)
        right_leaves, b = _leaves_and_value(node.right)
        if isinstance(node.op, ast.Add):
            value = a + b
        elif isinstance(node.op, ast.Sub):
            value = a - b
        else:
            value = a * b
        return left_leaves + right_leaves, value
    raise _Rejected(type(node).__name__)


def parse_expression(text: str) -> tuple[list[int], int] | None:
    """(numbers used, value) of an allowed expression, or None when ``text`` is not one.

    Allowed: decimal ints, binary ``+ - *``, parentheses and spaces; at most
    :data:`MAX_RESPONSE_CHARS` characters. Everything else (names, calls, unary minus, ``**``, ``/``,
    hex or ``_`` literals, ...) is rejected before or while walking the ``ast``; nothing is executed.
    """
    if not text or len(text) > MAX_RESPONSE_CHARS or not set(text) <= _RESPONSE_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        return _leaves_and_value(tree.body)
    except (_Rejected, SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def first_line(response: str) -> str:
    """The response up to its first newline, stripped."""
    return response.split("\n", 1)[0].strip()


def is_valid_answer(numbers: list[int] | tuple[int, ...], target: int, response: str) -> bool:
    """Whether ``response`` uses each of ``numbers`` exactly once and evaluates to ``target``."""
    parsed = parse_expression(first_line(response))
    if parsed is None:
        return False
    used, value = parsed
    return Counter(used) == Counter(numbers) and value == target


# --------------------------------------------------------------------------------------------------
# The task

PROMPT_FORMAT = "{numbers}>{target}="
"""``numbers`` space-separated in ascending order; e.g. ``"3 5 7>22="``."""


def countdown_id(numbers: list[int] | tuple[int, ...], target: int) -> str:
    """Canonical stable id, e.g. ``countdown:3,5,7:22`` (numbers sorted)."""
    return f"countdown:{','.join(map(str, sorted(numbers)))}:{target}"


def countdown_prompt(numbers: list[int] | tuple[int, ...], target: int) -> str:
    """The prompt for ``numbers -> target``, e.g. ``"3 5 7>22="``."""
    return PROMPT_FORMAT.format(numbers=" ".join(map(str, sorted(numbers))), target=target)


def countdown_problem(numbers: list[int] | tuple[int, ...], target: int, solution: str | None = None) -> Problem:
    """A countdown Problem with canonical id and prompt."""
    ordered = sorted(numbers)
    return Problem(
        id=countdown_id(ordered, target),
        prompt=countdown_prompt(ordered, target),
        answer=str(target),
        solution=solution,
        meta={"numbers": ordered, "target": target},
    )


@tasks.register("countdown")
class CountdownTask:
    """Countdown with ``num_count`` numbers in ``1..max_number`` and a target reachable with ``ops``.

    Each problem is made by drawing the numbers (repeats allowed), shuffling them, building a random
    expression over them and taking its value as the target (redrawn while it is below
    ``min_target``); that expression is the problem's ``solution``. Prompt ``"3 5 7>22="``, answer
    e.g. ``"3*5+7"`` (any valid expression scores 1).
    """

    name = "countdown"

    def __init__(self, *, num_count: int = 3, max_number: int = 9, ops: str = ALLOWED_OPS, min_target: int = 1) -> None:
        if num_count < 1 or num_count > 6:
            raise ConfigError(f"task.num_count must be in 1..6, got {num_count}")
        if max_number < 1:
            raise ConfigError(f"task.max_number must be >= 1, got {max_number}")
        if not ops or not set(ops) <= set(ALLOWED_OPS):
            raise ConfigError(f"task.ops must be a non-empty subset of '{ALLOWED_OPS}', got '{ops}'")
        self.num_count = num_count
        self.max_number = max_number
        self.ops = "".join(op for op in ALLOWED_OPS if op in ops)
        self.min_target = min_target

    def generate(self, rng: random.Random) -> Problem:
        """One random problem (train or held-out) and its generating expression."""
        for _ in range(10_000):
            numbers = [rng.randint(1, self.max_number) for _ in range(self.num_count)]
            tree = random_tree(numbers, self.ops, rng)
            target = evaluate(tree)
            if target >= self.min_target:
                return countdown_problem(numbers, target, solution=render(tree))
        raise ConfigError(f"task.min_target={self.min_target} is unreachable with these numbers and ops")

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` random problems outside the held-out split."""
        return draw_train(self.generate, n, rng, self.name)

    def heldout_problems(self, n: int) -> list[Problem]:
        """The first ``n`` distinct held-out problems of a fixed stream (same for every run)."""
        return draw_heldout(self.generate, n, self.name)

    def score(self, problem: Problem, response: str) -> float:
        """1.0 for a valid expression that hits the target with exactly the given numbers, else 0.0."""
        try:
            return 1.0 if is_valid_answer(problem.meta["numbers"], int(problem.meta["target"]), response) else 0.0
        except Exception:  # noqa: BLE001 - a scorer must never raise
            return 0.0
