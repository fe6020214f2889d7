"""The learner's own forwards (rlvr.ops.forward.OwnForward): each quantity's ctx.extras entries, computed
in micro-batches and assembled, equal a plain full forward of the policy over the text they describe;
G2RL's per-sequence feature comes with the rollout-policy forward; conflicting settings are rejected."""

from __future__ import annotations

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.rollout.hf import HFRollout
from rlvr.rollout.stage import RolloutResult
from rlvr.tasks.base import Problem
from rlvr.train.config import load_config
from rlvr.train.trainer import Trainer

PROBLEMS = [Problem("a", "1 2 3>6=", "6", solution="1+2+3"), Problem("b", "4 5>9=", "9")]
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, informative):
    methods = [
        "algo.advantage=progrpo",
        "algo.reward_shaping=[{name: rlpr, format: append, reference: solution}, g2rl]",
        f"rollout.temperature={TEMPERATURE}",
        "train.micro_batch_size=3",  # micro-batches that split groups and a last one of one row
    ]
    cfg = load_config(None, [*informative.fast, *methods, f"output_dir={tmp_path_factory.mktemp('own') / 'run'}"])
    return Trainer(cfg, quiet=True)


@pytest.fixture(scope="module")
def rollout(trainer):
    torch.manual_seed(0)
    batch = HFRollout(trainer.tokenizer).generate(trainer.model, PROBLEMS, n=3, max_new_tokens=6, temperature=TEMPERATURE)
    problems = [p for p in PROBLEMS for _ in range(3)]
    return RolloutResult(problems=problems, batch=batch, scores=torch.zeros(len(problems)))


def naive_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    """``log pi(ids[t] | ids[:t])`` for ``t >= start``, from the model's full logits at the sampling temperature."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1] / TEMPERATURE
    targets = torch.tensor(ids[1:])
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)[start - 1 :]


def test_reference_answer_and_baseline_equal_a_full_forward(trainer, rollout) -> None:
    extras = trainer.learner.own_forwards(rollout)
    tok, model, batch = trainer.tokenizer, trainer.model, rollout.batch
    for row, problem in enumerate(rollout.problems):
        prompt = batch.input_ids[row, : batch.prompt_len][batch.attention_mask[row, : batch.prompt_len].bool()].tolist()
        answer = problem.solution or problem.answer  # reference=solution; "b" has none
        spliced = prompt + tok(batch.responses[row] + " " + answer, add_special_tokens=False)["input_ids"]
        expected = naive_logprobs(model, spliced, len(spliced) - len(answer))  # char tokenizer: one token per character
        n = len(answer)
        assert extras["reference_answer_mask"][row].sum() == n
        assert torch.allclose(extras["reference_answer_logprobs"][row, :n], expected, atol=1e-5)
        baseline = prompt + tok(answer, add_special_tokens=False)["input_ids"]  # append: y* right after the prompt
        expected_a = naive_logprobs(model, baseline, len(prompt))
        assert torch.allclose(extras["reference_answer_baseline_logprobs"][row, :n], expected_a, atol=1e-5)
        p = batch.prompt_len
        expected_q = naive_logprobs(model, prompt, 1)
        assert extras["prompt_mask"][row].tolist() == [0.0] * (p - len(prompt) + 1) + [1.0] * (len(prompt) - 1)
        assert torch.allclose(extras["prompt_logprobs"][row, p - len(prompt) + 1 :], expected_q, atol=1e-5)
    assert extras["reference_answer_valid"].all()


def test_prepare_fills_extras_and_the_per_sequence_feature(trainer, rollout) -> None:
    ctx = trainer.learner.prepare(rollout, step=0).ctx
    assert {"reference_answer_logprobs", "reference_answer_baseline_logprobs", "prompt_logprobs"} <= ctx.extras.keys()
    assert ctx.extras["old_gradient_feature"].shape == (6, trainer.cfg.model.tiny.hidden_size)
    assert ctx.old_logprobs is not None and not hasattr(ctx, "old_gradient_feature")
    sub = ctx.select(torch.tensor([4, 1]))
    assert torch.equal(sub.extras["old_gradient_feature"], ctx.extras["old_gradient_feature"][[4, 1]])


def test_conflicting_splice_settings_are_a_config_error(fast_overrides) -> None:
    both = "algo.reward_shaping=[{name: rlpr, format: append}, {name: logprob_reward, format: r1}]"
    with pytest.raises(ConfigError, match="reference_answer_logprobs"):
        Trainer(load_config(None, [*fast_overrides, both]), quiet=True)
