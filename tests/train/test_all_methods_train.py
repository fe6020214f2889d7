"""Every built-in method runs one step inside the real trainer with default knobs and a finite loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlvr.algos import REGISTRIES
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

SLOT = {
    "advantage": "algo.advantage={}",
    "policy_loss": "algo.policy_loss={}",
    "reward": "algo.reward_shaping=[{}]",
    "token_weight": "algo.token_weights=[{}]",
    "regularizer": "algo.regularizers=[{}]",
    "controller": "algo.controllers=[{}]",
}
EXTRA = {
    "drpo": ["train.shuffle=groups", "train.micro_batch_size=16"],
    "entropy_pid": ["algo.controllers=[{name: entropy_pid, target: 0.5}]", "algo.regularizers=[entropy_bonus]"],
}


def _builtin_methods() -> list[tuple[str, str]]:
    return [
        (stage, name)
        for stage, registry in REGISTRIES.items()
        for name in registry.names()
        if registry.entry(name).factory.__module__.startswith("rlvr.")
    ]


@pytest.mark.parametrize("stage, name", _builtin_methods(), ids=lambda x: str(x))
def test_method_runs_in_the_trainer(stage, name, fast_overrides):
    overrides = [*fast_overrides, "train.steps=1", "eval.every=100", SLOT[stage].format(name), *EXTRA.get(name, [])]
    cfg = load_config(None, overrides)
    Trainer(cfg, quiet=True).run()
    record = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")[-1]
    assert record["step"] == 1
    assert math.isfinite(record["train/loss"]), record
    assert record["train/updates"] >= 1
