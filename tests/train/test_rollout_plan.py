"""What the trainer gives rollout-steering methods: DRIVE's two stages in a run (and its resume), Adaptive Deep
Reasoning's instruction halves and mode logits (against a direct forward), T1's reference refresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.rollout.hf import format_prompts
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.rollout_plan import REASONING_MODE, ModeLogits
from rlvr.train.trainer import Trainer

POOL = ["task=test_checksum", "task.kwargs.num_count=2", "task.kwargs.max_number=3", "eval.every=100"]
DRIVE = "algo.controllers=[{name: drive, switch_step: 2, stage1_length: 0.5, stage2_group_size: 8, hard_max_pass_rate: 0.5}]"
ADR = ["algo.reward_shaping=[adr_reward]", "algo.regularizers=[{name: adr_switch, short_token: '1', long_token: '2'}]"]


def _trainer(overrides: list[str], run: Path) -> Trainer:
    return Trainer(load_config(None, [*overrides, f"output_dir={run}"]), quiet=True)


def test_drive_two_stages_in_the_trainer_and_resume(tmp_path, fast) -> None:
    overrides = [*fast, *POOL, DRIVE, "train.steps=4", "train.checkpoint_every=1"]
    straight = _trainer(overrides, tmp_path / "a")
    straight.run()
    metrics = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "drive/stage" in r]
    assert [r["drive/stage"] for r in metrics] == [1.0, 1.0, 2.0, 2.0]
    assert all(r["response_length/max"] <= 4 for r in metrics[:2])  # stage 1: 0.5 x 8 new tokens
    visits = read_metrics(tmp_path / "a" / "prompt_history.jsonl")
    stage1: dict[str, list[float]] = {}
    for v in visits:
        if v["step"] <= 2:
            assert v["n"] % 4 == 0  # 4 responses per prompt drawn
            stage1.setdefault(v["prompt_id"], []).append(v["accuracy"])
    means = {pid: sum(a) / len(a) for pid, a in stage1.items()}
    hard = sorted((pid for pid in means if means[pid] <= 0.5), key=lambda pid: means[pid])  # stable: first seen
    assert straight.pipeline.controllers[0].fn.hard == hard and len(hard) >= 2
    for step in (3, 4):  # stage 2: 2 hard prompts x 8 responses = the same 16 rows
        rows = [v for v in visits if v["step"] == step]
        assert {v["prompt_id"] for v in rows} <= set(hard) and all(v["n"] % 8 == 0 for v in rows)
        assert sum(v["n"] for v in rows) == 16
    # resumed inside stage 2 (from step 3): the same hard-set draws
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b/checkpoints/step_000004")
    _trainer(overrides, tmp_path / "b").run(resume=True)
    assert (tmp_path / "b/prompt_history.jsonl").read_text() == (tmp_path / "a/prompt_history.jsonl").read_text()


def test_drive_refuses_rollout_options_that_redraw_rows(tmp_path, fast) -> None:
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        _trainer([*fast, DRIVE, "rollout.dynamic_sampling=true"], tmp_path / "x")
    with pytest.raises(ConfigError, match="must divide"):
        _trainer([*fast, DRIVE.replace("stage2_group_size: 8", "stage2_group_size: 64")], tmp_path / "y")


def test_adr_instruction_halves_and_mode_logits(tmp_path, fast) -> None:
    trainer = _trainer([*fast, "task=test_checksum", "train.steps=1", "eval.every=100", *ADR], tmp_path / "run")
    seen: dict = {}
    collect, provide = trainer.control.collect, trainer.control.provide

    def spy_collect(*args, **kwargs):
        seen["rollout"] = collect(*args, **kwargs)
        return seen["rollout"]

    def spy_provide(ctx, learner):
        provide(ctx, learner)
        seen["ctx"] = ctx

    trainer.control.collect, trainer.control.provide = spy_collect, spy_provide
    trainer.run()
    rollout, ctx, tok = seen["rollout"], seen["ctx"], trainer.tokenizer
    batch = rollout.batch
    assert batch.group_ids.tolist() == [g for g in range(4) for _ in range(4)]
    assert batch.extras[REASONING_MODE].tolist() == [1, 1, 0, 0] * 4
    assert torch.equal(ctx.extras[REASONING_MODE], batch.extras[REASONING_MODE])
    for row, problem in enumerate(rollout.problems):  # the task's problems; the rows hold the instructed prompts
        prompt = tok.decode(batch.input_ids[row, : batch.prompt_len][batch.attention_mask[row, : batch.prompt_len].bool()])
        mode = "Long" if row % 4 < 2 else "Short"
        assert "CoT" not in problem.prompt and prompt.endswith(f"[Please answer with {mode} CoT]\n{problem.prompt}")
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert "adr_switch/loss" in record and "adr_reward/prefer_short_frac" in record
    # the mode logits: log pi(token | prompt without the instruction), with gradient, = a direct forward
    logits_fn = ctx.extras["mode_logits"]
    assert isinstance(logits_fn, ModeLogits)
    rows = torch.tensor([5, 0])
    got = logits_fn(rows)
    model = trainer.model
    short, long = tok("1", add_special_tokens=False)["input_ids"][0], tok("2", add_special_tokens=False)["input_ids"][0]
    for k, row in enumerate(rows.tolist()):
        text = format_prompts(tok, [rollout.problems[row]], trainer.cfg.rollout.chat_template)[0]
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            direct = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        assert got[k].detach().tolist() == pytest.approx([float(direct[short]), float(direct[long])], abs=1e-5)
    model.zero_grad(set_to_none=True)
    got.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_adr_switch_alone_is_refused(tmp_path, fast) -> None:
    with pytest.raises(ConfigError, match="adr_reward"):
        _trainer([*fast, ADR[1]], tmp_path / "x")
    with pytest.raises(ConfigError, match="even"):
        _trainer([*fast, ADR[0], "rollout.group_size=3"], tmp_path / "y")


def test_reference_refresh_mixes_the_reference_into_the_policy(tmp_path, fast) -> None:
    trainer = _trainer([*fast, "algo.regularizers=[{name: kl, coef: 0.1}]"], tmp_path / "run")
    learner = trainer.learner
    learner.start()
    ref0 = [p.detach().clone() for p in learner.ref_model.parameters()]
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(1.0)  # the policy moved by +1 everywhere
    learner.refresh_reference(0.25)  # ref <- 0.25 pi + 0.75 ref = ref0 + 0.25
    assert all(torch.allclose(r, r0 + 0.25) for r, r0 in zip(learner.ref_model.parameters(), ref0))
    learner.refresh_reference(1.0)
    assert all(torch.equal(r, p) for r, p in zip(learner.ref_model.parameters(), learner.model.parameters()))
    bare = _trainer(list(fast), tmp_path / "bare").learner
    bare.start()
    with pytest.raises(ConfigError, match="ref_logprobs"):
        bare.refresh_reference(1.0)
