"""Countdown: generator, safe scorer, solution counting and the held-out split."""

from __future__ import annotations

import random

import pytest

from rlvr.errors import ConfigError
from rlvr.tasks.base import Task, is_heldout, stable_hash
from rlvr.tasks.countdown import (
    CountdownTask,
    count_solutions,
    countdown_problem,
    parse_expression,
    render,
    solutions,
)


@pytest.fixture(scope="module")
def task() -> CountdownTask:
    return CountdownTask()


@pytest.fixture(scope="module")
def problem() -> "object":
    return countdown_problem([7, 3, 5], 22, solution="3*5+7")


def test_format_and_ids(problem) -> None:
    assert problem.prompt == "3 5 7>22="
    assert problem.id == "countdown:3,5,7:22"
    assert problem.answer == "22"
    assert problem.meta == {"numbers": [3, 5, 7], "target": 22}


def test_is_a_task(task) -> None:
    assert isinstance(task, Task)


@pytest.mark.parametrize("response", ["3*5+7", "5*3+7", "7+3*5", "7+5*3", "(3*5)+7", "((5*3))+(7)", " 3 * 5 + 7 ", "3*5+7\ntrailing junk", "3*5+7" + " " * 1000])
def test_valid_answers_score_one(task, problem, response: str) -> None:
    assert task.score(problem, response) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "3*5+8",  # wrong number
        "3*5+7+7",  # reused number
        "3*5",  # missing number
        "15+7",  # combined numbers
        "35+7",  # concatenation
        "3*(5+7)",  # wrong value
        "-3+5*5",  # unary minus (and wrong numbers)
        "7-(-3)*5",  # unary minus
        "3**2",
        "22",
        "",
        "\n3*5+7",
        "garbage",
        "__import__('os')",
        "__import__('os').system('echo hi')",
        "eval('3*5+7')",
        "3*5+7;1",
        "0x3*5+7",
        "3_0",
        "3*5+7.0",
        "(" * 300 + "3*5+7" + ")" * 300,
        "3*5+7" + "+0" * 200,
        "3/5+7",
        "lambda: 22",
        "[3,5,7]",
    ],
)
def test_invalid_answers_score_zero(task, problem, response: str) -> None:
    assert task.score(problem, response) == 0.0


def test_score_never_raises(task, problem) -> None:
    for response in [None, 123, b"3*5+7", "\x00", "9" * 10_000, "(" * 100_000]:
        assert task.score(problem, response) == 0.0  # type: ignore[arg-type]
    broken = countdown_problem([1], 1)
    object.__setattr__(broken, "meta", {})
    assert task.score(broken, "1") == 0.0


def test_score_random_strings(task, problem) -> None:
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("0123456789+-*() 357\nx_") for _ in range(rng.randint(0, 16)))
        assert task.score(problem, text) in (0.0, 1.0)


def test_parse_expression_is_safe() -> None:
    assert parse_expression("(3+5)*7") == ([3, 5, 7], 56)
    assert parse_expression("__import__('os')") is None
    assert parse_expression("-3") is None


def test_generated_problems_are_solvable(task) -> None:
    problems = task.train_problems(300, random.Random(0))
    for p in problems:
        numbers, target = p.meta["numbers"], p.meta["target"]
        assert p.prompt == " ".join(map(str, sorted(numbers))) + f">{target}="
        assert len(numbers) == 3 and all(1 <= x <= 9 for x in numbers)
        assert target >= 1
        assert task.score(p, p.solution) == 1.0
        sols = solutions(numbers, target)
        assert p.solution in sols
        assert all(task.score(p, s) == 1.0 for s in sols)


def test_several_solution_paths(task) -> None:
    assert solutions([3, 5, 7], 22) == ["3*5+7", "5*3+7", "7+3*5", "7+5*3"]
    assert count_solutions([1, 2, 3], 6) > 5
    counts = [count_solutions(p.meta["numbers"], p.meta["target"]) for p in task.heldout_problems(100)]
    assert min(counts) >= 1
    assert sum(c >= 2 for c in counts) >= 80  # most problems have more than one answer


def test_render_minimal_parentheses() -> None:
    assert render(("-", 9, ("+", 3, 2))) == "9-(3+2)"
    assert render(("+", 9, ("-", 3, 2))) == "9+3-2"
    assert render(("*", ("+", 1, 2), 3)) == "(1+2)*3"
    assert render(("-", ("-", 9, 3), 2)) == "9-3-2"


def test_heldout_deterministic_and_disjoint(task) -> None:
    heldout = task.heldout_problems(150)
    assert len(heldout) == 150
    assert [p.id for p in heldout] == [p.id for p in CountdownTask().heldout_problems(150)]
    assert len({p.id for p in heldout}) == 150
    assert all(is_heldout(p.id) for p in heldout)
    train = task.train_problems(3000, random.Random(1))
    assert not {p.id for p in train} & {p.id for p in heldout}
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    again = CountdownTask().train_problems(50, random.Random(1))
    assert [p.id for p in again] == [p.id for p in train[:50]]


def test_heldout_is_capped_by_problem_space() -> None:
    small = CountdownTask(num_count=2, max_number=3)
    assert 0 < len(small.heldout_problems(1000)) < 1000


def test_stable_hash_is_fixed() -> None:
    assert stable_hash("countdown:3,5,7:22") == stable_hash("countdown:3,5,7:22")
    assert stable_hash("abc") == 0xBA7816BF8F01CFEA  # first 8 bytes of sha256("abc")


def test_knobs_validated() -> None:
    with pytest.raises(ConfigError, match="num_count"):
        CountdownTask(num_count=0)
    with pytest.raises(ConfigError, match="ops"):
        CountdownTask(ops="/")
    only_plus = CountdownTask(num_count=4, ops="+")
    for p in only_plus.train_problems(20, random.Random(0)):
        assert "-" not in p.solution and "*" not in p.solution
        assert p.meta["target"] == sum(p.meta["numbers"])
