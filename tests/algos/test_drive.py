"""DRIVE (arXiv 2511.06307): the hard set and its pruning by hand, the two-stage plan, its state."""

from __future__ import annotations

import random

import pytest

from rlvr.algos import controller
from rlvr.algos.drive import hard_set, prune
from rlvr.errors import ConfigError
from rlvr.tasks.countdown import countdown_problem
from rlvr.tasks.subset import problem_record
from rlvr.train.history import PromptHistory

RATES = {"a": [0.0, 0.5], "b": [1.0], "c": [0.5], "d": [0.0, 0.0], "e": [0.75, 0.25], "f": []}


def test_hard_set_by_hand() -> None:
    # means a .25, b 1, c .5, d 0, e .5 (f never visited): <= .5 hardest first, c before e (first seen)
    assert hard_set(RATES, 0.5, 10, 1) == ["d", "a", "c", "e"]
    assert hard_set(RATES, 0.5, 3, 1) == ["d", "a", "c"]
    assert hard_set(RATES, 0.0, 10, 2) == ["d", "a"]  # only d qualifies: the 2 lowest-rated stay


def test_prune_by_hand() -> None:
    latest = {"a": 0.8, "b": 0.5, "c": 1.0, "d": None}  # d not visited again: counts as 0
    assert prune(["a", "b", "c", "d"], latest, 0.75, 1) == ["b", "d"]
    assert prune(["a", "c"], latest, 0.75, 1) == ["a"]  # every one above: the hardest stays


def _history(visits: dict[int, list[float]]) -> PromptHistory:
    """A history whose prompt ``countdown:1,k:k+1`` had accuracies ``visits[k]`` (its problem stored)."""
    problems = {k: countdown_problem([1, k], 1 + k) for k in visits}
    history = PromptHistory(keep_problems=True)
    history.load_state_dict(
        {
            "visits": {problems[k].id: {"step": list(range(1, len(v) + 1)), "accuracy": v, "reward": v, "n": [4] * len(v)} for k, v in visits.items()},
            "problems": {p.id: problem_record(p) for p in problems.values()},
        }
    )
    return history


def _drive(**knobs):
    drive = controller.build("drive", {"switch_step": 2, "stage1_length": 0.75, "stage2_group_size": 8, **knobs}).fn
    drive.configure(group_size=4, prompts_per_step=4, max_new_tokens=8, seed=3)  # 16 rows: stage 2 has 2 prompts
    return drive


def test_two_stage_plan() -> None:
    drive = _drive(hard_max_pass_rate=0.5, drop_pass_rate=0.75)
    history = _history({1: [0.25], 2: [1.0], 3: [0.5], 4: [0.0]})
    ids = {k: countdown_problem([1, k], 1 + k).id for k in (1, 2, 3, 4)}
    for step in (0, 1):  # stage 1: the task's draws, 8 * 0.75 = 6 new tokens
        plan = drive.rollout_plan(step, history)
        assert (plan.stage, plan.group_size, plan.max_new_tokens, plan.prompts, plan.prompt_ids) == (1, 4, 6, 4, None)
    first = drive.rollout_plan(2, history)
    hard = [ids[4], ids[1], ids[3]]  # 0, .25, .5 (2 solved every time is left out)
    assert drive.hard == hard and (first.stage, first.group_size, first.max_new_tokens, first.prompts) == (2, 8, 8, 2)
    order = list(hard)
    random.Random("drive:3:1").shuffle(order)
    second = drive.rollout_plan(3, history)
    assert list(first.prompt_ids) + [second.prompt_ids[0]] == order  # one pass: each hard prompt once, shuffled
    # the pass ended inside step 3: before its second prompt the set was pruned on the latest pass rates
    assert drive.passes == 2 and drive.hard == hard  # nothing above 0.75 yet
    restored = _drive()  # a resume from here plans the same
    restored.load_state_dict(drive.state_dict())
    history.visits[ids[1]]["accuracy"].append(1.0)  # prompt 1 now solved
    for _ in range(2):  # the rest of pass 2, then pass 3 without prompt 1
        plans = [d.rollout_plan(4, history).prompt_ids for d in (drive, restored)]
        assert plans[0] == plans[1]
    assert drive.hard == [ids[4], ids[3]] and drive.passes == 3
    assert drive.prepare(None) == {"drive/stage": 2.0, "drive/hard_set": 2.0, "drive/passes": 3.0}


def test_knobs_and_shape_are_checked() -> None:
    with pytest.raises(ConfigError, match="switch_step"):
        controller.build("drive", {"switch_step": 0})
    with pytest.raises(ConfigError, match="stage1_length"):
        controller.build("drive", {"stage1_length": 1.5})
    drive = controller.build("drive", {"stage2_group_size": 64}).fn
    with pytest.raises(ConfigError, match="must divide"):
        drive.configure(group_size=8, prompts_per_step=4, max_new_tokens=16, seed=0)  # 32 rows
