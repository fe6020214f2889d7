"""Arithmetic task: format, scorer and held-out split."""

from __future__ import annotations

import random

import pytest

from rlvr.errors import ConfigError
from rlvr.tasks.arithmetic import ArithmeticTask, arithmetic_problem
from rlvr.tasks.base import is_heldout


def test_format() -> None:
    p = arithmetic_problem(47, "+", 8)
    assert (p.id, p.prompt, p.answer, p.solution) == ("arithmetic:47+8", "47+8=", "55", "55")


@pytest.mark.parametrize(("response", "reward"), [("55", 1.0), (" 55 ", 1.0), ("55\nmore", 1.0), ("055", 1.0), ("56", 0.0), ("55.0", 0.0), ("5 5", 0.0), ("", 0.0), ("x", 0.0), ("47+8", 0.0), ("__import__('os')", 0.0), ("9" * 100, 0.0)])
def test_score(response: str, reward: float) -> None:
    assert ArithmeticTask().score(arithmetic_problem(47, "+", 8), response) == reward


def test_negative_answers() -> None:
    p = arithmetic_problem(3, "-", 8)
    assert ArithmeticTask().score(p, "-5") == 1.0
    assert ArithmeticTask().score(p, "5") == 0.0


def test_generated_problems() -> None:
    task = ArithmeticTask(max_digits=3, ops="-*")
    for p in task.train_problems(300, random.Random(0)):
        a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
        assert op in "-*" and 0 <= a < 1000 and 0 <= b < 1000
        assert int(p.answer) >= 0  # allow_negative=False
        assert task.score(p, p.solution) == 1.0
        assert task.score(p, str(int(p.answer) + 1)) == 0.0
        assert not is_heldout(p.id)


def test_heldout_deterministic_and_disjoint() -> None:
    task = ArithmeticTask()
    heldout = task.heldout_problems(200)
    assert len(heldout) == 200 and len({p.id for p in heldout}) == 200
    assert [p.id for p in heldout] == [p.id for p in ArithmeticTask().heldout_problems(200)]
    train = task.train_problems(2000, random.Random(3))
    assert not {p.id for p in train} & {p.id for p in heldout}


def test_knobs_validated() -> None:
    with pytest.raises(ConfigError, match="max_digits"):
        ArithmeticTask(max_digits=0)
    with pytest.raises(ConfigError, match="ops"):
        ArithmeticTask(ops="+/")
