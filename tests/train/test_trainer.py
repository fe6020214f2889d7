"""End to end on a tiny model: metrics, checkpoints, report, exact resume, micro-batch invariance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr.train.config import load_config
from rlvr.train.learner import OldLogprobSource, old_logprob_source
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

VOLATILE = ("time/", "throughput/")


def _stable(records):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def test_run_writes_metrics_checkpoints_and_report(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "train.steps=3", "eval.report=true"])
    summary = Trainer(cfg, quiet=True).run()
    run = Path(cfg.output_dir)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    step = records[1]
    for key in (
        "reward/mean",
        "accuracy",
        "entropy/mean",
        "entropy/p10",
        "entropy/p90",
        "response_length/mean",
        "clip_frac",
        "train/grad_norm",
        "time/step_s",
        "throughput/tokens_per_s",
    ):
        assert key in step, key
    assert "eval/pass@2" in records[0] and "eval/pass@2" in records[-1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert (run / "report.md").is_file() and (run / "curves.png").stat().st_size > 1000
    assert (run / "final_model" / "config.json").is_file()
    assert set(summary) == {"before", "after"}


def test_resume_continues_exactly(tmp_path, fast_overrides, informative):
    """Interrupted at step 2 and resumed: the same gradients, metrics and weights as a straight run.

    With a reward that varies within groups, so the updates (and AdamW's moments) are not zero:
    a resume that loses the optimizer state changes the step-3 update.
    """
    from rlvr.train.checkpoint import require_checkpoint

    base = [o for o in fast_overrides if not o.startswith("output_dir=")]
    extra = [
        *informative.overrides, "algo.regularizers=[{name: kl, coef: 0.01}]", "train.mini_batch_size=8", "train.ppo_epochs=2"
    ]  # fmt: skip
    straight = Trainer(load_config(None, [*base, *extra, "train.steps=4", f"output_dir={tmp_path / 'a'}"]), quiet=True)
    grads_a = informative.capture(straight)
    straight.run()

    first = Trainer(load_config(None, [*base, *extra, "train.steps=2", f"output_dir={tmp_path / 'b'}"]), quiet=True)
    first.run()
    resumed_cfg = load_config(None, [*base, *extra, "train.steps=4", f"output_dir={tmp_path / 'b'}"])
    restored = Trainer(resumed_cfg, quiet=True)
    restored._restore(require_checkpoint(tmp_path / "b" / "checkpoints")[1])
    _assert_same_optimizer_state(first.learner.optimizer, restored.learner.optimizer)
    second = Trainer(resumed_cfg, quiet=True)
    grads_b = informative.capture(second)
    second.run(resume=True)

    a = _stable(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    b = _stable(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    informative.assert_learning(a)
    assert a == b
    assert len(grads_a) == 16 and len(grads_b) == 8  # 2 epochs x 2 mini-batches per step
    informative.assert_same(grads_a[8:], grads_b, rtol=0.0)
    pa = torch.load(tmp_path / "a/checkpoints/step_000004/state.pt", weights_only=False)["model"]
    pb = torch.load(tmp_path / "b/checkpoints/step_000004/state.pt", weights_only=False)["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def _assert_same_optimizer_state(expected: torch.optim.Optimizer, got: torch.optim.Optimizer) -> None:
    """Same per-parameter state (AdamW: step, exp_avg, exp_avg_sq), non-empty, and hyper-parameters."""
    a, b = expected.state_dict(), got.state_dict()
    assert a["state"] and a["state"].keys() == b["state"].keys()
    for index, slots in a["state"].items():
        assert slots.keys() == b["state"][index].keys()
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name])), (index, name)
    assert any(bool(slots["exp_avg"].any()) for slots in a["state"].values())
    assert a["param_groups"] == b["param_groups"]


def test_resume_without_checkpoint_is_a_clear_error(fast_overrides):
    from rlvr.errors import RLVRError

    cfg = load_config(None, [*fast_overrides, "train.steps=1"])
    with pytest.raises(RLVRError, match="no readable checkpoint"):
        Trainer(cfg, quiet=True).run(resume=True)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # token-mean, one mini-batch (the on-policy path that reuses the update forward's log-probs)
        ["algo.agg_mode=seq-mean-token-mean", "train.mini_batch_size=8", "algo.regularizers=[{name: kl, coef: 0.1}]"],
    ],
    ids=["token-mean", "seq-mean-mini8-kl"],
)
def test_micro_batching_does_not_change_the_update(extra, tmp_path, fast, informative):
    """Gradient accumulation with mini-batch normalisers gives one big batch's gradients and weights.

    Gradients are compared, not only AdamW's parameters (AdamW hides a constant gradient factor),
    on a reward that varies within groups (so they are not zero).
    """
    runs = {}
    for micro in (16, 3):  # 3: micro-batches of 3, 3, 3, 3, 3, 1 rows (or 3, 3, 2 per mini-batch of 8)
        trainer, records, grads = _trainer_after_steps(
            [*fast, *informative.overrides, *extra, f"train.micro_batch_size={micro}", f"output_dir={tmp_path / str(micro)}"],
            informative,
            steps=1,
        )
        informative.assert_learning(records)
        runs[micro] = (records[0], grads, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    (one, grads_one, params_one), (acc, grads_acc, params_acc) = runs[16], runs[3]
    informative.assert_same(grads_one, grads_acc, rtol=1e-5)
    assert acc["train/grad_norm"] == pytest.approx(one["train/grad_norm"], rel=1e-5)  # pre-clip
    # AdamW's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8) a float-noise change of g
    # moves the weight by up to lr, so the weights are compared where the gradient is well above eps
    for key, grad in grads_one[0].items():
        clear = grad.abs() > 1e-6
        assert torch.allclose(params_one[key][clear], params_acc[key][clear], atol=1e-6), key


def _trainer_after_steps(overrides, informative, steps=2):
    """A trainer after its warm start and ``steps`` RL steps (no evaluation), its records and gradients."""
    cfg = load_config(None, [*overrides, "eval.every=1000"])
    trainer = Trainer(cfg, quiet=True)
    grads = informative.capture(trainer)
    trainer._warm_start()
    trainer.learner.start()
    records = [trainer.train_step() for _ in range(steps)]
    return trainer, records, grads


def test_on_policy_update_reuses_its_logprobs_exactly(tmp_path, fast, monkeypatch, informative):
    """One update per rollout: skipping the no-grad old forward changes nothing but the forward count.

    Compared on gradients of a reward that varies within groups: old log-probs off by a constant
    scale every token's ratio, which AdamW's parameters would not show.
    """
    import rlvr.train.learner as learner_module

    calls = {"n": 0}
    real_forward = learner_module.policy_forward

    def counting_forward(*args, **kwargs):
        calls["n"] += 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(learner_module, "policy_forward", counting_forward)
    results = {}
    for mode in ("auto", "always"):
        calls["n"] = 0
        overrides = [
            *fast, *informative.overrides, "train.mini_batch_size=null", f"train.old_forward={mode}", f"output_dir={tmp_path / mode}"
        ]  # fmt: skip
        trainer, records, grads = _trainer_after_steps(overrides, informative)
        source = old_logprob_source(trainer.cfg.train, trainer.pipeline, 16, rows_may_change=False)
        assert (source is OldLogprobSource.UPDATE_FORWARD) == (mode == "auto")
        informative.assert_learning(records)
        results[mode] = (calls["n"], trainer.model.state_dict(), records, grads)
    assert results["auto"][0] == 2 and results["always"][0] == 4  # micro_batch 64 >= 16 rows: one forward each
    informative.assert_same(results["always"][3], results["auto"][3], rtol=1e-5)
    for key, value in results["always"][1].items():
        assert torch.allclose(results["auto"][1][key], value, atol=1e-6), key
    for fast_record, slow_record in zip(results["auto"][2], results["always"][2]):
        for key in ("entropy/p50", "entropy/p90", "train/loss", "train/pg_loss", "train/grad_norm", "reward/mean", "clip_frac"):
            assert fast_record[key] == pytest.approx(slow_record[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize(
    "extra",
    [
        ["train.mini_batch_size=8"],
        ["train.ppo_epochs=2"],
        ["algo.policy_loss=clip_cov"],
        ["algo.advantage=canon"],
        ["algo.reward_shaping=[sar]"],
        ["rollout.aepo.enabled=true"],
        ["algo.regularizers=[siren]"],
    ],
)
def test_old_forward_runs_whenever_something_reads_it_before_the_update(extra, fast_overrides):
    cfg = load_config(None, [*fast_overrides, "train.mini_batch_size=null", *extra])
    trainer = Trainer(cfg, quiet=True)
    source = old_logprob_source(trainer.cfg.train, trainer.pipeline, 16, rows_may_change=trainer.aepo is not None)
    assert source is OldLogprobSource.ROLLOUT_FORWARD


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_metrics_are_json_lines(fast_overrides):
    """One strict-JSON object per line (no NaN/Infinity), one per step (0 = the warm-start eval)."""
    cfg = load_config(None, [*fast_overrides, "train.steps=2"])
    Trainer(cfg, quiet=True).run()
    lines = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=_no_constant) for line in lines]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(isinstance(v, (int, float, str, type(None))) for r in records for v in r.values())
    assert "eval/accuracy_greedy" in records[0] and {"reward/mean", "train/grad_norm", "train/loss"} <= records[1].keys()


def test_metrics_writer_keeps_lines_strict_json(tmp_path):
    """NaN -> null, +-inf -> +-1e308, 0-d tensors -> numbers: every line stays parseable by strict JSON readers."""
    from rlvr.train.logging import MetricsWriter

    writer = MetricsWriter(tmp_path / "m.jsonl")
    writer.write({"step": 1, "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "t": torch.tensor(0.5)})
    writer.write({"step": 2, "x": 3})
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=_no_constant) for line in lines] == [
        {"step": 1, "nan": None, "inf": 1e308, "ninf": -1e308, "t": 0.5},
        {"step": 2, "x": 3},
    ]


def test_local_hf_model_path_trains_on_another_task(tmp_path, fast_overrides):
    """`rlvr train model=PATH task=...`: any local causal LM directory, no warm start by default."""
    from rlvr.models.tiny import char_tokenizer, tiny_qwen2

    tok = char_tokenizer()
    model_dir = tmp_path / "local_model"
    tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).save_pretrained(
        model_dir
    )
    tok.save_pretrained(model_dir)
    cfg = load_config(
        None, [*fast_overrides, f"model={model_dir}", "task=arithmetic", "train.steps=1", "warmstart.steps=null"]
    )
    trainer = Trainer(cfg, quiet=True)
    assert trainer._warmstart_steps() == 0
    trainer.run()
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    assert records[-1]["step"] == 1 and "reward/mean" in records[-1]


def test_missing_model_path_names_the_field(fast_overrides, tmp_path):
    from rlvr.errors import ConfigError

    cfg = load_config(None, [*fast_overrides, f"model={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="model.path"):
        Trainer(cfg, quiet=True)


@pytest.mark.parametrize("preset", ["siren", "canon", "gspo", "grpo_kl", "dr_grpo", "dapo"])
def test_every_preset_trains(preset, fast_overrides):
    """Each packaged method recipe runs through the real trainer with finite losses."""
    import math

    cfg = load_config(preset, [*fast_overrides, "train.steps=2", "train.mini_batch_size=8"])
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    last = records[-1]
    assert last["train/updates"] == 2
    assert math.isfinite(last["train/loss"])
    if preset == "siren":
        state = trainer.pipeline.regularizers[0].state_dict()
        assert state["anchor"] is not None and "siren/selected_entropy" in last
        saved = torch.load(Path(cfg.output_dir) / "checkpoints/step_000002/state.pt", weights_only=False)
        assert saved["pipeline"][2]["anchor"] == state["anchor"]
