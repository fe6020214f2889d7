"""The task registry and build_task."""

from __future__ import annotations

import random

import pytest

from rlvr.errors import ConfigError, UnknownNameError
from rlvr.tasks import Problem, Task, build_task, tasks


def test_builtins_registered() -> None:
    assert {"countdown", "arithmetic", "math_jsonl", "reasoning_gym"} <= set(tasks.names())


def test_build_default_countdown() -> None:
    task = build_task("countdown")
    assert isinstance(task, Task)
    problems = task.train_problems(4, random.Random(0))
    assert all(isinstance(p, Problem) for p in problems)
    assert build_task("countdown", {"num_count": 4}).train_problems(1, random.Random(0))[0].prompt.count(" ") == 3


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid names: arithmetic, countdown, math_jsonl, reasoning_gym"):
        build_task("countdwon")


def test_unknown_and_missing_knobs() -> None:
    with pytest.raises(ConfigError, match="no knob 'num_cout'; valid knobs: max_number, min_target, num_count, ops"):
        build_task("countdown", {"num_cout": 3})
    with pytest.raises(ConfigError, match="needs knob 'path'"):
        build_task("math_jsonl")
