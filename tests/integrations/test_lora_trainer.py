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


def test_lora_run_resume_and_export(tmp_path, fast):
    from rlvr.models.loading import load_model_and_tokenizer
    from rlvr.models.lora import is_peft_model
    from rlvr.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(load_config(None, [*fast, *LORA, f"output_dir={run}"]), quiet=True)
    trainer.run()
    assert is_peft_model(trainer.model) and trainer.ref_model is None  # no second model copy
    steps = [r for r in _records(run) if "reward/mean" in r]
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
    Trainer(load_config(None, [*fast, *LORA, f"output_dir={resumed}"]), quiet=True).run(resume=True)
    a, b = _records(run)[-1], _records(resumed)[-1]
    assert a["reward/mean"] == b["reward/mean"] and a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-7)
