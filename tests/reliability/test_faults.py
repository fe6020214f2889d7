"""Faults during training: NaN losses, bad samples, crashing scorers, kill -9, truncated checkpoints."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.algos import LossOutput, policy_loss
from rlvr.errors import RLVRError
from rlvr.tasks.base import Problem, tasks
from rlvr.tasks.countdown import CountdownTask
from rlvr.train.checkpoint import load_latest_checkpoint
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer



@policy_loss.register("test_nan_on_steps", requires=("logprobs", "advantages"), override=True)
def nan_on_steps(ctx, *, steps: tuple = (1,)) -> LossOutput:
    """-A * logp, but NaN on the given (0-based) steps."""
    per_token = -ctx.advantages * ctx.logprobs
    if ctx.step in steps:
        per_token = per_token * float("nan")
    return LossOutput(per_token=per_token)


@tasks.register("test_flaky", override=True)
class FlakyTask(CountdownTask):
    """Countdown whose scorer raises or returns NaN for some responses, and serves bad problems."""

    name = "test_flaky"

    def __init__(self, *, bad_every: int = 3) -> None:
        super().__init__()
        self.bad_every = bad_every
        self.calls = 0

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        good = super().train_problems(n, rng)
        bad = [Problem(id="empty", prompt="  ", answer="1"), Problem(id="long", prompt="9" * 5000, answer="1")]
        return bad + good[: max(0, n - 2)] if rng.random() < 0.5 else good

    def score(self, problem: Problem, response: str) -> float:
        self.calls += 1
        if self.calls % self.bad_every == 0:
            raise ValueError("scorer crashed")
        if self.calls % self.bad_every == 1:
            return float("nan")
        return super().score(problem, response)


@pytest.fixture
def overrides(fast_overrides):
    return lambda *extra: [*fast_overrides, *extra]


def test_nan_loss_skips_the_update_and_training_continues(overrides, informative):
    cfg = load_config(None, overrides(*informative.overrides, "train.steps=3", "algo.policy_loss=test_nan_on_steps"))
    trainer = Trainer(cfg, quiet=True)
    params_before_step2 = {}

    original = trainer.train_step

    def spy():
        if trainer.step == 1:
            params_before_step2.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return original()

    trainer.train_step = spy
    with pytest.warns(UserWarning, match="non-finite loss or gradient"):
        trainer.run()
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    assert [r.get("train/skipped_updates") for r in records[1:]] == [0, 1, 0]
    assert records[-1]["step"] == 3
    informative.assert_learning([records[1], records[3]])  # the other steps' updates are not zero
    # the skipped step left the weights untouched (checked via the step-2 checkpoint vs the snapshot)
    state = torch.load(Path(cfg.output_dir) / "checkpoints/step_000002/state.pt", weights_only=False)["model"]
    assert all(torch.equal(state[k], params_before_step2[k]) for k in state)
    after = torch.load(Path(cfg.output_dir) / "checkpoints/step_000003/state.pt", weights_only=False)["model"]
    assert any(not torch.equal(after[k], state[k]) for k in state)  # and the next step updated them again


def test_consecutive_nan_steps_stop_with_a_clear_error_and_keep_checkpoints(overrides):
    cfg = load_config(
        None,
        overrides(
            "train.steps=8",
            "algo.policy_loss=test_nan_on_steps",
            "algo.policy_loss.steps=[2,3,4,5,6]",
            "train.max_consecutive_bad_steps=3",
        ),
    )
    with pytest.warns(UserWarning), pytest.raises(RLVRError, match="3 consecutive steps"):
        Trainer(cfg, quiet=True).run()
    # steps 3-5 (1-based) are bad; the step-4 checkpoint was written before the stop and is intact
    assert load_latest_checkpoint(Path(cfg.output_dir) / "checkpoints")[1]["step"] == 4


def test_crashing_scorer_and_bad_problems_are_counted_not_fatal(overrides):
    cfg = load_config(None, overrides("train.steps=3", "task=test_flaky", "rollout.max_prompt_tokens=64"))
    with pytest.warns(UserWarning, match="skipping training problem"):
        Trainer(cfg, quiet=True).run()
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    train = [r for r in records if "reward/mean" in r]
    assert len(train) == 3
    assert sum(r.get("reward/failures_error", 0) for r in train) > 0
    assert sum(r.get("reward/failures_non_finite", 0) for r in train) > 0
    last = train[-1]
    assert last.get("data/skipped_empty_prompt", 0) > 0 and last.get("data/skipped_long_prompt", 0) > 0


def test_truncated_checkpoint_falls_back_to_the_previous_one(overrides):
    cfg = load_config(None, overrides("train.steps=4"))
    Trainer(cfg, quiet=True).run()
    root = Path(cfg.output_dir) / "checkpoints"
    newest = root / "step_000004" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        path, state = load_latest_checkpoint(root)
    assert path.name == "step_000002" and state["step"] == 2


VICTIM = Path(__file__).resolve().parents[1] / "victim.py"


def _cli(args: list[str], kill_after_step: int | None = None) -> subprocess.Popen:
    """``rlvr train`` in a child process (test tasks registered); it SIGKILLs itself entering the RL
    step after ``kill_after_step`` (whose checkpoint is complete), when given."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RLVR_KILL_AT": "step", "RLVR_KILL_STEP": str(kill_after_step or -1)}
    return subprocess.Popen([sys.executable, str(VICTIM), "train", "--quiet", *args], env=env)


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, fast, informative):
    base = [
        *fast,
        *informative.overrides,  # a reward that varies within groups: real updates and AdamW moments
        "train.steps=6",
        "train.checkpoint_every=1",
        "eval.every=3",
        "algo.regularizers=[siren, entropy_bonus]",
        "algo.controllers=[{name: entropy_pid, target: 0.5}]",
        "algo.reward_shaping=[hapo]",
    ]
    straight = _cli([*base, f"output_dir={tmp_path / 'a'}"])
    assert straight.wait(timeout=300) == 0

    victim = _cli([*base, f"output_dir={tmp_path / 'b'}"], kill_after_step=3)
    assert victim.wait(timeout=300) == -signal.SIGKILL
    assert (tmp_path / "b" / "checkpoints" / "step_000003").exists()
    assert not (tmp_path / "b" / "checkpoints" / "step_000004").exists()
    resumed = _cli([*base, f"output_dir={tmp_path / 'b'}", "--resume"])
    assert resumed.wait(timeout=300) == 0

    volatile = ("time/", "throughput/")
    a = [{k: v for k, v in r.items() if not k.startswith(volatile)} for r in read_metrics(tmp_path / "a/metrics.jsonl")]
    b = [{k: v for k, v in r.items() if not k.startswith(volatile)} for r in read_metrics(tmp_path / "b/metrics.jsonl")]
    informative.assert_learning(a)
    assert a == b
    sa = torch.load(tmp_path / "a/checkpoints/step_000006/state.pt", weights_only=False)
    sb = torch.load(tmp_path / "b/checkpoints/step_000006/state.pt", weights_only=False)
    assert sa["pipeline"] == sb["pipeline"]  # SIREN anchor, HAPO history, PID state, ...
    names = ["advantage", "policy_loss", "hapo", "siren", "entropy_bonus", "entropy_pid"]
    states = dict(zip(names, sa["pipeline"]))
    assert states["siren"]["anchor"] is not None and states["entropy_pid"]["prev_error"] is not None
    assert "history" in states["hapo"]
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
