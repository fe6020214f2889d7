"""LoRA in the native Trainer: adapter-disabled reference, adapter checkpoints, exact resume, merged export.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("peft")

from rlvr.train.config import load_config  # noqa: E402

LORA = [
    "eval.num_problems=4",
    "train.steps=4",
    "train.lr=1e-2",
    "model.lora.r=4",
    "algo.regularizers=[{name: kl, coef: 0.1}, {name: entropy_bonus, coef: 0.05}]",
]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lora_run_resume_and_export(tmp_path, fast, informative):
    """On a reward that varies within groups, so the adapters (and AdamW's moments) really move."""
    from rlvr.models.loading import load_model_and_tokenizer
    from rlvr.models.lora import is_peft_model
    from rlvr.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(load_config(None, [*fast, *informative.overrides, *LORA, f"output_dir={run}"]), quiet=True)
    grads = informative.capture(trainer)
    trainer.run()
    assert is_peft_model(trainer.model) and trainer.learner.ref_model is None  # no second model copy
    assert grads and all(all("lora_" in name for name in g) for g in grads)  # only the adapters train
    steps = [r for r in _records(run) if "reward/mean" in r]
    informative.assert_learning(steps)
    assert steps[0]["kl/k1_mean"] == pytest.approx(0.0, abs=1e-6)  # policy == adapter-disabled reference
    assert any(abs(r["kl/k1_mean"]) > 1e-5 for r in steps[1:])  # the adapters moved the policy
    state = torch.load(run / "checkpoints" / "step_000004" / "state.pt", weights_only=False)
    assert state["model"]["kind"] == "lora" and all("lora_" in k for k in state["model"]["adapter"])
    final = run / "final_model"
    assert (final / "adapter" / "adapter_config.json").is_file()
    merged, _ = load_model_and_tokenizer(str(final))
    assert not is_peft_model(merged)

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for ckpt in sorted((resumed / "checkpoints").glob("step_*"))[1:]:
        shutil.rmtree(ckpt)  # keep step 2 only
    second = Trainer(load_config(None, [*fast, *informative.overrides, *LORA, f"output_dir={resumed}"]), quiet=True)
    resumed_grads = informative.capture(second)
    second.run(resume=True)
    volatile = ("time/", "throughput/")
    a, b = ([{k: v for k, v in r.items() if not k.startswith(volatile)} for r in _records(d)] for d in (run, resumed))
    assert a == b
    informative.assert_same(grads[len(grads) // 2 :], resumed_grads, rtol=0.0)  # steps 3-4
    sa, sb = (torch.load(d / "checkpoints/step_000004/state.pt", weights_only=False)["model"] for d in (run, resumed))
    sa, sb = sa["adapter"], sb["adapter"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_logged_grad_norm_is_the_adapters_gradient_norm(tmp_path, fast, informative):
    """``train/grad_norm`` is the norm of the gradients the optimizer applies (no clipping here)."""
    from rlvr.train.config import load_config
    from rlvr.train.trainer import Trainer

    overrides = [*fast, *informative.overrides, *LORA, "train.grad_clip=1e9", f"output_dir={tmp_path / 'run'}"]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, quiet=True)
    grads = informative.capture(trainer)
    trainer._warm_start()
    trainer._apply_lora()
    trainer.learner.start()
    record = trainer.train_step()
    applied = sum(float(g.double().pow(2).sum()) for g in grads[0].values()) ** 0.5
    assert applied > 0.05
    assert record["train/grad_norm"] == pytest.approx(applied, rel=1e-5)
