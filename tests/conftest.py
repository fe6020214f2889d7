"""Shared fixtures: a config small enough that a few RL steps take about a second on a CPU."""

from __future__ import annotations

import pytest

from rlvr.tasks.base import Problem, tasks
from rlvr.tasks.countdown import CountdownTask

FAST = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=1",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=64",
    "warmstart.steps=10",
    "warmstart.batch_size=16",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=8",
    "eval.num_problems=8",
    "eval.samples=2",
    "eval.pass_k=[1,2]",
    "eval.every=2",
    "eval.report=false",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=5",
]


@pytest.fixture
def fast_overrides(tmp_path):
    """FAST plus an output_dir under the test's tmp_path."""
    return [*FAST, f"output_dir={tmp_path / 'run'}"]


@pytest.fixture
def fast():
    """FAST alone, for tests that choose their own output_dir(s)."""
    return list(FAST)


@tasks.register("test_parity", override=True)
class ParityTask(CountdownTask):
    """Scores a response 1 when its length is even: a random-looking but informative signal."""

    name = "test_parity"

    def score(self, problem: Problem, response: str) -> float:
        return float(len(response) % 2 == 0)
