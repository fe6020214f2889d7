"""Dynamic sampling (DAPO), group-aligned shuffling, and loss denominators from known masks."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext
from rlvr.errors import RLVRError
from rlvr.tasks.reward_funcs import RewardScorer
from rlvr.train.config import load_config
from rlvr.train.trainer import Trainer


def test_dynamic_sampling_keeps_exactly_the_informative_groups(fast_overrides):
    cfg = load_config(
        None, [*fast_overrides, "task=test_parity", "rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=20"]
    )
    trainer = Trainer(cfg, quiet=True)
    torch.manual_seed(0)
    rollout = trainer.rollout.collect(trainer.model)
    problems, batch, rewards, stats = rollout.problems, rollout.batch, rollout.scores, rollout.stats
    groups = batch.group_ids.unique()
    assert len(groups) == cfg.rollout.prompts_per_step == stats["sampling/informative_groups"] or (
        stats["sampling/informative_groups"] >= cfg.rollout.prompts_per_step and len(groups) == cfg.rollout.prompts_per_step
    )
    for g in groups:
        scores = rewards[batch.group_ids == g]
        assert len(scores) == cfg.rollout.group_size and scores.max() > scores.min()
    assert [len(r) % 2 == 0 for r in batch.responses] == rewards.bool().tolist()
    assert len(problems) == len(batch.responses)
    # every response of every round was scored (the scorer health check compares its failures with this)
    assert rollout.scored == stats["sampling/rounds"] * cfg.rollout.prompts_per_step * cfg.rollout.group_size


def test_group_shuffle_keeps_groups_whole(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "train.shuffle=groups", "train.micro_batch_size=8"])
    trainer = Trainer(cfg, quiet=True)
    group_ids = torch.arange(5).repeat_interleave(4)
    ctx = AlgoContext(response_mask=torch.ones(20, 3), group_ids=group_ids)
    order = trainer.learner.shuffled_rows(ctx)
    assert sorted(order.tolist()) == list(range(20))
    blocks = group_ids[order].view(5, 4)
    assert (blocks == blocks[:, :1]).all()


def test_group_shuffle_rejects_batches_that_split_groups(fast_overrides):
    import pytest

    from rlvr.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of rollout.group_size"):
        load_config(None, [*fast_overrides, "train.shuffle=groups", "train.micro_batch_size=6"])


def test_masked_truncated_tokens_leave_the_token_mean_denominator(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "algo.token_weights=[mask_truncated]"])
    trainer = Trainer(cfg, quiet=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ctx = AlgoContext(response_mask=mask, truncated=torch.tensor([True, False]))
    assert trainer.pipeline.denominator_mask(ctx).tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]


def test_sar_gets_answer_only_logprobs_from_the_trainer(fast_overrides):
    """SAR's ppl(a) comes from a forward of each response without its query."""
    from pathlib import Path

    from rlvr.train.logging import read_metrics

    cfg = load_config(None, [*fast_overrides, "train.steps=1", "algo.reward_shaping=[sar]"])
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    assert "reward/mean" in read_metrics(Path(cfg.output_dir) / "metrics.jsonl")[-1]
    from rlvr.rollout.hf import HFRollout

    torch.manual_seed(0)
    batch = HFRollout(trainer.tokenizer).generate(trainer.model, ["1 2 3>6="], n=2, max_new_tokens=5)
    got = trainer.learner.answer_only_logprobs(batch)
    tok = trainer.tokenizer
    for row in range(2):
        ids = batch.response_ids[row][batch.response_mask[row].bool()]
        full = torch.cat([torch.tensor([tok.bos_token_id]), ids]).unsqueeze(0)
        with torch.no_grad():
            logits = trainer.model(full).logits[0, :-1]
        expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(got[row, : len(ids)], expected, atol=1e-5)


def test_a_scorer_failing_on_every_round_stops_training(fast_overrides):
    """The trainer's scorer health sees every scored response of every dynamic-sampling round."""
    overrides = ["rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=2", "train.max_consecutive_bad_steps=2",
                 "train.steps=5", "eval.every=100"]  # fmt: skip
    trainer = Trainer(load_config(None, [*fast_overrides, *overrides]), quiet=True)

    def broken(problem, response: str) -> float:
        raise KeyError("no such field")

    trainer.rollout.scorer = RewardScorer(broken)
    with pytest.raises(RLVRError, match="failed on every sample for 2 consecutive steps"), pytest.warns(UserWarning):
        trainer.run()
    assert trainer.step == 1  # the first all-failed step trained (at reward 0), the second stopped the run
