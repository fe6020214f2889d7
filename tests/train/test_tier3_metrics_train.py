"""The spurious random reward and the answer-entropy statistics inside the trainer: logged, and an
interrupted run resumes to the same rewards and weights (the reward's generator is checkpointed)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

VOLATILE = ("time/", "throughput/")


@pytest.mark.parametrize("seed", ["null", "5"])  # the trainer's shuffle generator, or the shaper's own
def test_random_reward_resumes_exactly(tmp_path, fast, seed):
    extra = [
        f"algo.reward_shaping=[{{name: random_reward, seed: {seed}}}]",
        "algo.controllers=[{name: answer_entropy_stats, extract: first_line}]",
    ]
    Trainer(load_config(None, [*fast, *extra, "train.steps=3", f"output_dir={tmp_path / 'a'}"]), quiet=True).run()
    Trainer(load_config(None, [*fast, *extra, "train.steps=2", f"output_dir={tmp_path / 'b'}"]), quiet=True).run()
    Trainer(load_config(None, [*fast, *extra, "train.steps=3", f"output_dir={tmp_path / 'b'}"]), quiet=True).run(resume=True)

    def stable(run: str) -> list[dict]:
        records = read_metrics(tmp_path / run / "metrics.jsonl")
        return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]

    a, b = stable("a"), stable("b")
    assert a == b
    steps = [r for r in a if r["step"] > 0]
    assert all(r["reward/mean"] == r["random_reward/mean"] for r in steps)  # the reward is the coin flip
    assert all(r["reward/mean"] in {i / 16 for i in range(17)} for r in steps)  # 4 prompts x 4 samples of 0 / 1
    assert all(0.0 <= r["answer_entropy/entropy"] <= math.log(4) + 1e-9 for r in steps)  # groups of 4
    pa = torch.load(tmp_path / "a/checkpoints/step_000003/state.pt", weights_only=False)["model"]
    pb = torch.load(tmp_path / "b/checkpoints/step_000003/state.pt", weights_only=False)["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
