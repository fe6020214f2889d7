"""Shared fixtures: a config small enough that a few RL steps take about a second on a CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

# Fuzzers run with a fixed seed and no example database, so CI is deterministic.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")

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


@tasks.register("test_checksum", override=True)
class ChecksumTask(CountdownTask):
    """Scores a response 1 when the sum of its character codes is even.

    About half the samples of a group score 1 whatever the policy, so GRPO advantages (and the
    policy gradient) are non-zero in nearly every group at every step: the task for trainer tests
    that compare updates (on countdown the tiny model scores 0 everywhere and every update is 0).
    """

    name = "test_checksum"

    def score(self, problem: Problem, response: str) -> float:
        return float(sum(map(ord, response)) % 2 == 0)


INFORMATIVE = ["task=test_checksum"]
"""Overrides giving FAST a reward that varies within groups (see :class:`ChecksumTask`)."""
MIN_GRAD_NORM = 0.05
"""Pre-clip gradient norm every INFORMATIVE step must exceed (about 0.2-1 with FAST + INFORMATIVE)."""


def capture_grads(trainer) -> list[dict[str, torch.Tensor]]:
    """A list that receives, at each optimizer step of ``trainer``, the gradients it applies (after clipping).

    Hooks every optimizer ``trainer``'s learner makes from now on (``run`` and ``_restore`` call
    ``make_optimizer``); entries map parameter names to gradient copies.
    """
    log: list[dict[str, torch.Tensor]] = []
    make = trainer.learner.make_optimizer

    def make_hooked() -> torch.optim.Optimizer:
        optimizer = make()
        names = {id(p): name for name, p in trainer.model.named_parameters()}

        def record(opt, args, kwargs) -> None:
            params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
            log.append({names[id(p)]: p.grad.detach().clone() for p in params})

        optimizer.register_step_pre_hook(record)
        return optimizer

    trainer.learner.make_optimizer = make_hooked
    return log


def grad_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||a||`` over all parameters of two captured gradients (same parameter names)."""
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(a[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5 if den > 0 else float("inf")


def assert_same_grads(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], rtol: float = 1e-5) -> None:
    """Two runs took the same number of optimizer steps with non-zero gradients equal to ``rtol``."""
    assert len(a) == len(b) > 0
    for i, (ga, gb) in enumerate(zip(a, b)):
        diff = grad_rel_diff(ga, gb)
        assert diff <= rtol, f"optimizer step {i}: relative gradient difference {diff:.2e}"


def assert_learning_signal(records: list[dict]) -> None:
    """Every training record had rewards that vary and a gradient norm well above zero."""
    train = [r for r in records if "train/grad_norm" in r]
    assert train, "no training step logged"
    for r in train:
        assert r["reward/std"] > 0, r["step"]
        assert r["train/grad_norm"] > MIN_GRAD_NORM, (r["step"], r["train/grad_norm"])


@pytest.fixture(scope="session")
def informative():
    """The helpers above, for tests that compare updates on a reward that varies within groups.

    ``overrides`` is INFORMATIVE (to add to ``fast``); ``fast`` is FAST + INFORMATIVE, for
    fixtures wider than a function, which cannot use the ``fast`` fixture.
    """
    import types

    return types.SimpleNamespace(
        overrides=list(INFORMATIVE),
        fast=[*FAST, *INFORMATIVE],
        capture=capture_grads,
        rel_diff=grad_rel_diff,
        assert_same=assert_same_grads,
        assert_learning=assert_learning_signal,
    )
