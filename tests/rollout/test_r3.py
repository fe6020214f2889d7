"""R^3 replay and reflection: which groups are repaired, what the injected rows hold, the buffer, the trainer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from rlvr.models.tiny import char_tokenizer
from rlvr.rollout.engines import HFEngine
from rlvr.rollout.r3 import R3_SOURCE, REFLECTED, REPLAYED, SAMPLED, R3Injector, sampled_rows
from rlvr.rollout.stage import RolloutStage, Sampling, generate_continuations
from rlvr.tasks.countdown import countdown_problem
from rlvr.train.checkpoint import load_latest_checkpoint
from rlvr.train.config import R3Config, load_config
from rlvr.train.history import PromptHistory
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer


class Switch:
    """Scores every response ``value`` (set by the test between rounds)."""

    name = "switch"

    def __init__(self) -> None:
        self.value = 1.0

    def score(self, problem, response: str) -> float:
        return self.value


class FailFirst:
    """Scores 0 for the first ``n`` calls, 1 afterwards (the fresh round fails, the reflections succeed)."""

    name = "fail_first"

    def __init__(self, n: int) -> None:
        self.left, self.lock = n, threading.Lock()

    def score(self, problem, response: str) -> float:
        with self.lock:
            self.left -= 1
            return float(self.left < 0)


@pytest.fixture(scope="module")
def tok():
    tok = char_tokenizer()
    tok.eos_token = "<"  # a character the spread model emits, so some responses end before the limit
    return tok


PROBLEMS = [countdown_problem([1, 2], 3), countdown_problem([12, 5, 7], 99)]


def _stage(task, tok, greedy: bool, n: int = 3) -> RolloutStage:
    sampling = Sampling(n=n, max_new_tokens=8, greedy=greedy)
    return RolloutStage(task, HFEngine(tok, "off"), tok, sampling=sampling, prompts_per_step=2, max_prompt_tokens=64, seed=3)


def _rows_of(batch, row):
    prompt = batch.input_ids[row, : batch.prompt_len][batch.attention_mask[row, : batch.prompt_len].bool()].tolist()
    return prompt, batch.response_token_ids(row)


def test_replay_injects_stored_successes_into_failed_groups(tok, spread_model):
    task = Switch()
    stage = _stage(task, tok, greedy=False)
    history = PromptHistory()
    r3 = R3Injector(R3Config(replay=True, inject=2, buffer_size=2), history)
    first = r3.augment(stage, spread_model, stage.sample(spread_model, PROBLEMS, key=(0, 0)), step=0, key=(0, 0))
    assert first.batch.extras[R3_SOURCE].tolist() == [SAMPLED] * 6 and not first.off_policy
    for g, problem in enumerate(PROBLEMS):  # every row was correct: the last buffer_size of each group are kept
        stored = history.stored_responses(problem.id)
        assert [e.ids.tolist() for e in stored] == [first.batch.response_token_ids(3 * g + j) for j in (1, 2)]
        assert all(e.step == 1 and e.score == 1.0 for e in stored)
    task.value = 0.0
    fresh = stage.sample(spread_model, PROBLEMS, key=(1, 0))
    out = r3.augment(stage, spread_model, fresh, step=1, key=(1, 0))
    assert out.batch.extras[R3_SOURCE].tolist() == [SAMPLED, REPLAYED, REPLAYED] * 2
    assert out.off_policy and out.correct.tolist() == [False, True, True] * 2
    assert out.scores.tolist() == [0.0, 1.0, 1.0] * 2
    assert out.batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.id for p in out.problems] == [p.id for p in PROBLEMS for _ in range(3)]
    prompt_ids = stage.engine.prompt_token_ids(PROBLEMS)
    for row in range(6):
        prompt, resp = _rows_of(out.batch, row)
        assert prompt == prompt_ids[row // 3]
        if row % 3 == 0:  # the group's own failed response, unchanged
            assert resp == fresh.batch.response_token_ids(row)
        else:
            assert resp in [e.ids.tolist() for e in history.stored_responses(PROBLEMS[row // 3].id)]
            assert out.batch.responses[row] == tok.decode(resp, skip_special_tokens=True)
    # both stored responses of each prompt injected once (drawn without replacement)
    for g in range(2):
        assert sorted(map(tuple, (_rows_of(out.batch, 3 * g + j)[1] for j in (1, 2)))) == sorted(
            tuple(e.ids.tolist()) for e in history.stored_responses(PROBLEMS[g].id)
        )
    again = r3.augment(stage, spread_model, stage.sample(spread_model, PROBLEMS, key=(1, 0)), step=1, key=(1, 0))
    assert torch.equal(again.batch.input_ids, out.batch.input_ids)  # the draw is seeded by (seed, step, round)
    assert sampled_rows(out).tolist() == [0, 3]
    stats = r3.pop_stats()
    assert stats["r3/failed_groups"] == 4 and stats["r3/replayed_groups"] == 4  # over the two repeated rounds
    assert r3.pop_stats() == {}


def test_replay_leaves_groups_with_a_success_and_unknown_prompts_alone(tok, spread_model):
    task = Switch()
    task.value = 0.0
    stage = _stage(task, tok, greedy=False)
    r3 = R3Injector(R3Config(replay=True, inject=1), PromptHistory())
    fresh = stage.sample(spread_model, PROBLEMS, key=(0, 0))
    out = r3.augment(stage, spread_model, fresh, step=0, key=(0, 0))  # failed, but nothing stored yet
    assert out.batch.extras[R3_SOURCE].tolist() == [SAMPLED] * 6 and not out.off_policy
    assert torch.equal(out.batch.input_ids, fresh.batch.input_ids)


@pytest.mark.parametrize("context", ["original", "reflection"])
def test_reflection_retries_after_the_failed_attempt(tok, spread_model, context):
    stage = _stage(FailFirst(6), tok, greedy=True)  # the 6 fresh responses fail, every reflection succeeds
    cfg = R3Config(reflection=True, inject=1, reflection_n=2, reflection_context=context, reflection_prompt="=")
    history = PromptHistory()
    r3 = R3Injector(cfg, history)
    fresh = stage.sample(spread_model, PROBLEMS, key=(0, 0))
    out = r3.augment(stage, spread_model, fresh, step=0, key=(0, 0))
    assert out.batch.extras[R3_SOURCE].tolist() == [SAMPLED, SAMPLED, REFLECTED] * 2
    assert out.correct.tolist() == [False, False, True] * 2 and out.off_policy
    # what was sampled: greedy continuations of prompt + first attempt (EOS dropped) + the reflection text
    note = tok("=", add_special_tokens=False)["input_ids"]
    prefixes = []
    for g in range(2):
        attempt = fresh.batch.response_token_ids(3 * g)
        prefixes.append([t for t in attempt if t != tok.eos_token_id] + note)
    expected = generate_continuations(stage.engine, spread_model, PROBLEMS, prefixes, Sampling(n=1, max_new_tokens=8, greedy=True))
    prompt_ids = stage.engine.prompt_token_ids(PROBLEMS)
    for g in range(2):
        prompt, resp = _rows_of(out.batch, 3 * g + 2)
        assert resp == expected.response_token_ids(g)
        assert prompt == (prompt_ids[g] if context == "original" else prompt_ids[g] + prefixes[g])
        assert _rows_of(out.batch, 3 * g)[1] == fresh.batch.response_token_ids(3 * g)
    stats = r3.pop_stats()
    assert stats["r3/reflections"] == 2 and stats["r3/reflected_groups"] == 2 and stats["r3/reflection_samples"] == 4
    assert out.scored == 6 + 4  # the fresh round and every reflection sample
    # a prompt solved before is not reflected on; min visits counts the earlier visits
    history.record(1, [PROBLEMS[0]] * 2, torch.tensor([True, False]), torch.tensor([1.0, 0.0]))
    assert not r3._never_solved(PROBLEMS[0].id) and r3._never_solved(PROBLEMS[1].id)
    patient = R3Injector(R3Config(reflection=True, reflect_min_visits=2), PromptHistory())
    assert not patient._never_solved(PROBLEMS[1].id)


def test_r3_config_is_checked():
    with pytest.raises(ValueError, match="rollout.r3.inject"):
        load_config(None, ["rollout.r3.replay=true", "rollout.r3.inject=4", "rollout.group_size=4"])
    with pytest.raises(ValueError, match="rollout.r3"):
        load_config(None, ["rollout.r3.replay=true", "rollout.cure.enabled=true"])


def test_r3_replay_repairs_a_failed_step_in_the_trainer(fast_overrides, informative, tmp_path):
    """Step 1 is all correct (its responses are stored), step 2 all wrong: replay gives step 2 a gradient,
    the prompt history sees the sampled rows only, and the buffer survives a checkpoint."""
    overrides = [*fast_overrides, "train.steps=2", "eval.every=100", "rollout.r3.replay=true", "rollout.r3.inject=2",
                 "rollout.dynamic_sampling=true", "rollout.max_sampling_rounds=1", "algo.reward_shaping=[{name: r3_rank, window: 2}]"]  # fmt: skip
    trainer = Trainer(load_config(None, overrides), quiet=True)
    problems = trainer.rollout.draw_problems(trainer.cfg.rollout.prompts_per_step)
    trainer.rollout.draw_problems = lambda n: list(problems)
    task = Switch()
    trainer.rollout.scorer = trainer.rollout.scorer.__class__(task.score)
    seen = []
    update = trainer.learner.update

    def record_update(tb, step):
        seen.append(tb)
        task.value = 0.0  # after step 1's update: everything fails from now on
        return update(tb, step)

    trainer.learner.update = record_update
    grads = informative.capture(trainer)
    trainer.run()
    n, k = trainer.cfg.rollout.group_size, trainer.cfg.rollout.prompts_per_step
    assert seen[1].ctx.correct.view(k, n)[:, -2:].all() and not seen[1].ctx.correct.view(k, n)[:, :-2].any()
    assert seen[1].ctx.extras[R3_SOURCE].view(k, n)[:, -2:].eq(REPLAYED).all()
    records = [r for r in read_metrics(Path(trainer.cfg.output_dir) / "metrics.jsonl") if "train/loss" in r]
    assert records[0]["r3/replayed_frac"] == 0.0 and records[0]["sampling/informative_groups"] == 0
    assert records[1]["r3/replayed_frac"] == pytest.approx(2 / n) and records[1]["sampling/informative_groups"] == k
    assert records[1]["r3/sampled_accuracy"] == 0.0
    assert records[1]["train/grad_norm"] > 0.05 and len(grads) == 2
    visits = trainer.history.visits[problems[0].id]
    assert visits["accuracy"][-1] == 0.0 and visits["n"][-1] == (n - 2) * sum(p.id == problems[0].id for p in problems)
    restored = PromptHistory()
    _, state = load_latest_checkpoint(trainer.ckpt_root)  # the weights_only loader resume uses
    restored.load_state_dict(state["prompt_history"])
    assert [e.ids.tolist() for e in restored.stored_responses(problems[0].id)] == [
        e.ids.tolist() for e in trainer.history.stored_responses(problems[0].id)
    ]
