"""Device and precision policy on the CPU (the CUDA path is tests/gpu), and learning-rate schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.train.config import load_config
from rlvr.train.device import Precision, resolve_device
from rlvr.train.learner import lr_at
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be shown")
def test_cuda_without_cuda_fails_when_the_config_loads(capsys):
    from rlvr.cli import main

    with pytest.raises(ConfigError, match=r"train.device=cuda: no CUDA device is available here"):
        load_config(None, ["train.device=cuda"])
    assert main(["config", "show", "train.device=cuda:1"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert resolve_device("auto") == torch.device("cpu")


def test_device_names_are_checked():
    with pytest.raises(ConfigError, match="train.device: 'gpu' is not a device"):
        load_config(None, ["train.device=gpu"])


def test_bf16_is_autocast_over_fp32_weights_with_fp32_logprobs(fast_overrides, informative):
    """model.dtype=bfloat16: matmuls in bf16, master weights / optimizer state / log-probs in fp32."""
    cfg = load_config(None, [*fast_overrides, *informative.overrides, "model.dtype=bfloat16", "train.steps=2",
                             "algo.regularizers=[{name: kl, coef: 0.01}]", "algo.token_weights=[forking_tokens]"])
    trainer = Trainer(cfg, quiet=True)
    assert trainer.precision == Precision(torch.device("cpu"), torch.bfloat16)
    seen: dict[str, set] = {"matmul": set(), "quantities": set()}
    layer = trainer.model.model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda m, args, out: seen["matmul"].add(out.dtype))
    forward = trainer.learner.forward

    def recording_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen["quantities"].update(v.dtype for v in out.values())
        return out

    trainer.learner.forward = recording_forward
    trainer.run()
    assert seen["matmul"] == {torch.bfloat16}  # rollouts, old/ref forward, update, warm start: all autocast
    assert seen["quantities"] == {torch.float32}  # log-probs, entropies from the chunked kernels
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = trainer.learner.optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    informative.assert_learning(records)
    assert records[1]["kl/k1_mean"] == pytest.approx(0.0, abs=1e-7)  # the reference runs the same way


def test_fp32_runs_no_autocast(fast_overrides):
    trainer = Trainer(load_config(None, [*fast_overrides, "train.steps=1"]), quiet=True)
    seen = set()
    trainer.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
    trainer.run()
    assert seen == {torch.float32}


def _train(**knobs):
    from rlvr.train.config import TrainConfig

    return TrainConfig(steps=10, lr=1.0, **knobs)


def test_learning_rate_schedules_by_hand():
    assert [lr_at(_train(), s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    warm = _train(warmup_steps=4)
    assert [lr_at(warm, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = _train(warmup_steps=2, lr_schedule="linear", min_lr_ratio=0.2)
    # after warmup: progress (s - 2) / 8, lr = 1 - 0.8 * progress
    assert [lr_at(linear, s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.6, 0.2])
    cosine = _train(lr_schedule="cosine")
    assert lr_at(cosine, 0) == pytest.approx(1.0)
    assert lr_at(cosine, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cosine, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cosine, 20) == pytest.approx(0.0, abs=1e-12)  # past train.steps: stays at the floor


def test_the_schedule_reaches_the_optimizer(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "train.steps=3", "train.lr_schedule=linear", "train.lr=0.001"])
    Trainer(cfg, quiet=True).run()
    lrs = [r["train/lr"] for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "train/lr" in r]
    assert lrs == pytest.approx([0.001, 0.001 * 2 / 3, 0.001 / 3])
