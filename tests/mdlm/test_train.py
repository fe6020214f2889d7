"""CJ-GRPO on the tiny masked diffusion model in the real trainer: exact micro-batching and resume,
a real gradient on a reward that varies within groups, and an end-to-end run on countdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

MDLM = ["model.kind=mdlm", "algo.advantage=dr_grpo", "algo.policy_loss=cj_grpo"]
VOLATILE = ("time/", "throughput/")


def _stable(records):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def _after_steps(overrides, informative, steps=1):
    trainer = Trainer(load_config(None, [*overrides, "eval.every=1000"]), quiet=True)
    grads = informative.capture(trainer)
    trainer._warm_start()
    trainer.learner.start()
    return trainer, [trainer.train_step() for _ in range(steps)], grads


@pytest.mark.parametrize(
    "extra", [[], ["train.mini_batch_size=8", "algo.policy_loss.beta=0.5"]], ids=["one-update", "mini8-kl"]
)
def test_micro_batching_does_not_change_the_update(extra, tmp_path, fast, informative):
    runs = {}
    for micro in (16, 3):
        overrides = [*fast, *MDLM, *informative.overrides, *extra, f"train.micro_batch_size={micro}", f"output_dir={tmp_path / str(micro)}"]
        trainer, records, grads = _after_steps(overrides, informative, steps=2)
        informative.assert_learning(records)
        assert trainer.learner.ref_model is not None
        runs[micro] = (records, grads, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    (one, grads_one, params_one), (acc, grads_acc, params_acc) = runs[16], runs[3]
    informative.assert_same(grads_one, grads_acc, rtol=1e-5)
    assert acc[-1]["train/grad_norm"] == pytest.approx(one[-1]["train/grad_norm"], rel=1e-5)
    assert one[-1]["kl"] > 0  # the second step's policy has moved away from the reference
    for key in params_one:
        assert torch.allclose(params_one[key], params_acc[key], atol=1e-6), key


def test_resume_continues_exactly(tmp_path, fast, informative):
    extra = [*MDLM, *informative.overrides, "train.mini_batch_size=8", "train.ppo_epochs=2"]
    straight = Trainer(load_config(None, [*fast, *extra, "train.steps=4", f"output_dir={tmp_path / 'a'}"]), quiet=True)
    grads_a = informative.capture(straight)
    straight.run()
    Trainer(load_config(None, [*fast, *extra, "train.steps=2", f"output_dir={tmp_path / 'b'}"]), quiet=True).run()
    second = Trainer(load_config(None, [*fast, *extra, "train.steps=4", f"output_dir={tmp_path / 'b'}"]), quiet=True)
    grads_b = informative.capture(second)
    second.run(resume=True)
    a = _stable(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    b = _stable(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    informative.assert_learning(a)
    assert a == b
    assert len(grads_a) == 16 and len(grads_b) == 8
    informative.assert_same(grads_a[8:], grads_b, rtol=0.0)
    pa = torch.load(tmp_path / "a/checkpoints/step_000004/state.pt", weights_only=False)["model"]
    pb = torch.load(tmp_path / "b/checkpoints/step_000004/state.pt", weights_only=False)["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


COUNTDOWN = [
    *MDLM,
    "task=countdown",
    "task.kwargs={num_count: 2, ops: '+'}",
    "rollout.max_new_tokens=4",  # ASS: 2 steps committing 1 then 3 tokens ("a+b" and EOS)
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=1",
    "model.tiny.num_heads=4",
    "model.tiny.num_kv_heads=2",
    "model.tiny.intermediate_size=128",
    "warmstart.steps=100",
    "warmstart.batch_size=32",
    "warmstart.lr=5e-3",
    "rollout.prompts_per_step=8",
    "rollout.group_size=8",
    "eval.num_problems=8",
    "eval.samples=2",
    "eval.pass_k=[1,2]",
]


def test_countdown_end_to_end(tmp_path):
    """Warm start, then CJ-GRPO steps on (two-number, '+') countdown: the warm-started policy solves
    some training problems, so rewards vary within groups, the update has a gradient and the policy moves.

    Whether RL raises the held-out accuracy is not checked here: that takes minutes (docs/mdlm.md).
    """
    trainer = Trainer(load_config(None, [*COUNTDOWN, f"output_dir={tmp_path / 'run'}"]), quiet=True)
    trainer._warm_start()
    trainer.learner.start()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.evaluate()
    train = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in train)
    informative = [r for r in train if r["reward/std"] > 0]
    assert informative and max(r["reward/mean"] for r in train) > 0, [r["reward/mean"] for r in train]
    assert all(r["train/grad_norm"] > 1e-3 for r in informative), [r["train/grad_norm"] for r in informative]
    assert train[-1]["kl"] > 0  # per-step log-probs of the trained policy differ from the reference's
    moved = sum(float((v - before[k]).abs().sum()) for k, v in trainer.model.state_dict().items())
    assert moved > 0


def test_the_preset_trains(fast_overrides):
    cfg = load_config("cj_grpo", [*fast_overrides, "train.steps=1"])
    assert cfg.model.kind == "mdlm" and cfg.algo.policy_loss.name == "cj_grpo" and cfg.rollout.max_new_tokens == 8
    Trainer(cfg, quiet=True).run()
    last = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")[-1]
    assert last["train/updates"] == 1 and torch.isfinite(torch.tensor(last["train/loss"]))
    assert last["response_length/mean"] == 8.0  # every committed position is a response token
