"""AEPO: positive temperature-adjusted samples replace the first rows with advantage 1."""

from __future__ import annotations

from pathlib import Path

import torch

from rlvr.rollout.base import RolloutBatch
from rlvr.algos.aepo import mix, select_positive, sub_prompt_count
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer


def _batch(rows: int, width: int, group_ids: list[int]) -> RolloutBatch:
    return RolloutBatch(
        input_ids=torch.arange(rows * (2 + width)).view(rows, 2 + width),
        attention_mask=torch.ones(rows, 2 + width, dtype=torch.long),
        prompt_len=2,
        response_mask=torch.ones(rows, width),
        responses=[f"r{i}" for i in range(rows)],
        truncated=torch.zeros(rows, dtype=torch.bool),
        group_ids=torch.tensor(group_ids),
    )


def test_select_positive_by_hand():
    # group 0 rewards [1, 0, 0]: mean 1/3, std 0.577 -> advantages [1.155, -0.577, -0.577]
    # group 1 rewards [1, 1, 1]: all advantages 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert select_positive(rewards, torch.tensor([0, 0, 0, 1, 1, 1]), 0.05).tolist() == [0]
    assert sub_prompt_count(16, 0.25) == 4 and sub_prompt_count(2, 0.25) == 1


def test_mix_replaces_first_rows_and_halves_k_above_target():
    main = _batch(4, 3, [0, 0, 1, 1])
    extra = _batch(4, 5, [0, 0, 1, 1])
    extra_rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])  # rows 0 and 2 are positive
    args = dict(
        main_problems=list("abcd"),
        main_rewards=torch.tensor([0.0, 1.0, 0.0, 1.0]),
        main_correct=torch.tensor([False, True, False, True]),
        main_advantages=torch.full((4, 3), -0.5),
        extra=extra,
        extra_problems=list("wxyz"),
        extra_rewards=extra_rewards,
        target=0.5,
        max_samples=60,
        adv_threshold=0.05,
        pad_token_id=0,
    )
    below = mix(main, entropy=0.3, **args)
    assert below.stats == {"aepo/positive": 2.0, "aepo/replaced": 2.0}
    assert below.problems == ["w", "y", "c", "d"]
    assert below.advantages.shape == (4, 5)
    assert below.advantages[:2].tolist() == [[1.0] * 5] * 2
    assert below.advantages[2:, :3].eq(-0.5).all() and below.advantages[2:, 3:].eq(0).all()
    assert below.correct.tolist() == [True, True, False, True]
    above = mix(main, entropy=0.9, **args)  # H > target: k = 2 // 2 = 1
    assert above.stats["aepo/replaced"] == 1.0 and above.problems == ["w", "b", "c", "d"]


def test_aepo_runs_in_the_trainer(fast_overrides):
    cfg = load_config(
        None,
        [
            *fast_overrides,
            "task=test_parity",
            "train.steps=2",
            "rollout.aepo.enabled=true",
            "rollout.aepo.group_size=4",
            "rollout.aepo.prompt_fraction=1.0",
        ],
    )
    Trainer(cfg, quiet=True).run()
    records = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "reward/mean" in r]
    assert [r["aepo/temperature"] for r in records] == [1.2, records[1]["aepo/temperature"]]
    assert records[0]["aepo/entropy"] == 0.0 and records[1]["aepo/entropy"] > 0
    assert all(r["train/updates"] >= 1 for r in records)
    assert any(r["aepo/replaced"] > 0 for r in records)
