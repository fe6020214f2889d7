"""Logging backends, completions, progress lines, the truncation warning, gradient checkpointing, and
a CLI run whose stderr holds no FutureWarning, no echoed source line and each warning once."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console

from rlvr.errors import ConfigError, RLVRError
from rlvr.train.config import load_config
from rlvr.train.logging import RunLogger, TruncationMonitor, read_metrics

TABLE_COLUMNS = ["step", "prompt", "response", "reward", "length", "truncated"]


def _numeric(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


# ------------------------------------------------------------------ config


def test_logging_config_keeps_jsonl_and_rejects_unknown_backends():
    cfg = load_config(None, ["logging.backends=[tensorboard, tensorboard]"])
    assert cfg.logging.backends == ["jsonl", "tensorboard"]
    assert load_config().logging.backends == ["jsonl"]
    with pytest.raises(ConfigError, match="logging.backends.0"):
        load_config(None, ["logging.backends=[mlflow]"])


def test_a_backend_that_is_not_installed_fails_at_once(tmp_path, monkeypatch):
    import rlvr.train.logging as logging_module

    monkeypatch.setattr(logging_module, "_importable", lambda name: False)
    cfg = load_config(None, ["logging.backends=[wandb]"])
    with pytest.raises(RLVRError, match=r"logging.backends lists wandb, which is not installed: pip install 'rlvr\[logging\]'"):
        RunLogger(tmp_path, cfg)


# ------------------------------------------------------------------ backends


def test_tensorboard_receives_the_records_of_metrics_jsonl(fast_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlvr.train.trainer import Trainer

    cfg = load_config(None, [*fast_overrides, "train.steps=3", "logging.backends=[tensorboard]", "logging.completions_every=2"])
    Trainer(cfg, quiet=True).run()
    run = Path(cfg.output_dir)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in _numeric(record).items():
            expected.setdefault(key, {})[record["step"]] = value
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, by_step in expected.items():
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged.keys() == by_step.keys(), key
        for step, value in by_step.items():  # event files store float32
            assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-30), (key, step)
    # completions: step 2 only (every 2 of 3 steps), one row per sample, also as a TensorBoard text table
    completions = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert len(completions) == 4 * 4 and {c["step"] for c in completions} == {2}
    assert list(completions[0]) == TABLE_COLUMNS
    assert all(c["length"] <= 8 and c["reward"] in (0.0, 1.0) for c in completions)
    assert [e.step for e in events.Tensors("completions/text_summary")] == [2]
    text = events.Tensors("completions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| step | prompt | response | reward | length | truncated |")
    assert len(text.splitlines()) == 2 + 16


def test_wandb_offline_receives_the_records_of_metrics_jsonl(fast_overrides, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    from rlvr.train.trainer import Trainer

    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    logged: list[tuple[int, dict]] = []
    original = Run.log

    def spy(self, data, *args, **kwargs):
        logged.append((kwargs["step"], dict(data)))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", spy)
    cfg = load_config(None, [*fast_overrides, "train.steps=2", "logging.backends=[wandb]", "logging.completions_every=1"])
    Trainer(cfg, quiet=True).run()
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    scalars = [(step, data) for step, data in logged if "completions" not in data]
    assert [(r["step"], _numeric(r)) for r in records] == scalars
    tables = [(step, data["completions"]) for step, data in logged if "completions" in data]
    assert [step for step, _ in tables] == [1, 2]
    assert all(isinstance(t, wandb.Table) and t.columns == TABLE_COLUMNS and len(t.data) == 16 for _, t in tables)
    offline = list((tmp_path / "wandb_home" / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    saved = [json.loads(p.read_text()) for p in offline[0].glob("files/media/table/completions_*.table.json")]
    assert len(saved) == 2 and all(t["columns"] == TABLE_COLUMNS and len(t["data"]) == 16 for t in saved)


# ------------------------------------------------------------------ progress lines


def _step_record(step: int) -> dict:
    return {"step": step, "reward/mean": 0.25, "accuracy": 0.5, "entropy/mean": 1.125, "time/step_s": 2.5}


def test_progress_lines_every_n_steps_when_stdout_is_not_a_terminal(tmp_path):
    cfg = load_config(None, ["train.steps=25", "logging.progress_every=10"])
    out = io.StringIO()
    logger = RunLogger(tmp_path, cfg, Console(file=out, force_terminal=False, width=200))
    logger.write({"step": 0, "eval/accuracy_greedy": 0.0})
    for step in range(1, 26):
        logger.write({**_step_record(step), **({"eval/accuracy_greedy": 0.375} if step == 20 else {})})
    assert out.getvalue().splitlines() == [
        "step 10/25  reward 0.250  acc 0.500  H 1.125  2.50 s/step",
        "step 20/25  reward 0.250  acc 0.500  H 1.125  2.50 s/step  eval acc 0.375",
        "step 25/25  reward 0.250  acc 0.500  H 1.125  2.50 s/step",
    ]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(26))

    terminal = io.StringIO()  # on a terminal the live progress bar shows it instead
    logger = RunLogger(tmp_path / "t", cfg, Console(file=terminal, force_terminal=True))
    for step in range(1, 26):
        logger.write(_step_record(step))
    assert terminal.getvalue() == ""


# ------------------------------------------------------------------ truncation warning


def test_truncation_monitor_warns_once_after_three_consecutive_steps():
    monitor = TruncationMonitor(max_new_tokens=16)
    fracs = [0.95, 1.0, 0.5, 0.9, 0.92, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0]
    shown = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, frac in enumerate(fracs):
            before = len(caught)
            monitor.update(frac)
            if len(caught) > before:
                shown.append(i)
    assert shown == [5]  # the third step in a row at >= 90% (0.9, 0.92, 1.0); never again
    assert str(caught[0].message).startswith("100% of the responses were cut at rollout.max_new_tokens=16 (90% or more for 3")
    assert "Raise rollout.max_new_tokens" in str(caught[0].message)


# ------------------------------------------------------------------ transformers' cache keyword, checkpointing


def test_cache_keyword_follows_the_forward_signature():
    from rlvr.models.tiny import char_tokenizer, tiny_qwen2
    from rlvr.ops.logprobs import cache_keyword

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(New()) == "cache"
    import inspect

    body = tiny_qwen2(char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).model
    expected = "cache" if "cache" in inspect.signature(type(body).forward).parameters else "past_key_values"
    assert cache_keyword(body) == expected


def _tiny(checkpointing: bool, path: str | None = None):
    from rlvr.models.build import build_model_and_tokenizer

    overrides = ["model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
                 "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64",
                 f"model.gradient_checkpointing={str(checkpointing).lower()}"]  # fmt: skip
    if path:
        overrides.append(f"model.path={path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated transformers call
        return build_model_and_tokenizer(load_config(None, overrides).model, seed=0)


def _shared_prompt_batch(group_size: int = 3):
    """``6 / group_size`` groups; rows of a group share a prompt (group 0's left-padded); ragged responses."""
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, 90, (6 // group_size, 5), generator=gen).repeat_interleave(group_size, dim=0)
    responses = torch.randint(5, 90, (6, 4), generator=gen)
    input_ids = torch.cat([prompts, responses], dim=1)
    mask = torch.ones_like(input_ids)
    mask[0:3, 0] = 0  # group 0's prompt is left-padded
    mask[1, -1] = 0  # a shorter response
    return input_ids, mask


def _loss_and_grads(model, input_ids, mask):
    from rlvr.ops.logprobs import output_head_weight, response_hidden_states

    from rlvr.ops.logprobs import chunked_logprobs_entropy

    model.zero_grad(set_to_none=True)
    hidden = response_hidden_states(model, input_ids, mask, 5)
    valid = mask[:, 5:].bool()
    logp, ent = chunked_logprobs_entropy(hidden[valid], output_head_weight(model), input_ids[:, 5:][valid], chunk_size=3)
    weights = torch.linspace(-1, 1, logp.numel())
    loss = (weights * logp).sum() + 0.1 * ent.sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids, mask = _shared_prompt_batch()
    plain, _ = _tiny(False)
    checkpointed, _ = _tiny(True)
    assert checkpointed.model.gradient_checkpointing and checkpointed.training
    loss_a, grads_a = _loss_and_grads(plain, input_ids, mask)  # the shared-prompt forward
    loss_b, grads_b = _loss_and_grads(checkpointed, input_ids, mask)  # per row, layers recomputed
    assert loss_a == pytest.approx(float(loss_b), abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_recomputes_layers_of_a_loaded_model(tmp_path):
    """``from_pretrained`` returns a model in eval mode, where transformers does not checkpoint."""
    model, tokenizer = _tiny(False)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for checkpointing, calls_per_layer in ((False, 1), (True, 2)):
        loaded, _ = _tiny(checkpointing, path=str(tmp_path))
        calls: list[int] = []
        for i, layer in enumerate(loaded.model.layers):
            # a pre-hook: the recompute stops inside the MLP once it has what the backward needs
            layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
        _loss_and_grads(loaded, *_shared_prompt_batch(group_size=1))  # no shared prompt: one forward per layer
        assert sorted(calls) == [0] * calls_per_layer + [1] * calls_per_layer, checkpointing


# ------------------------------------------------------------------ quiet CLI


def test_warnings_are_shown_as_one_line_each_once(capsys):
    import logging

    from rlvr import log

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            log.install()
            log.install()  # idempotent: one handler
            for _ in range(3):
                warnings.warn("an outside warning seen three times", UserWarning)
                logging.getLogger("rlvr.tasks.math").warning("a child logger's warning %d", 1)
            TruncationMonitor(4, patience=1).update(1.0)
        err = capsys.readouterr().err.splitlines()
        assert re.fullmatch(r"warning: UserWarning: an outside warning seen three times \(test_logging.py:\d+\)", err[0])
        assert err[1:] == [
            "warning: a child logger's warning 1",
            "warning: 100% of the responses were cut at rollout.max_new_tokens=4 (90% or more for 1 steps in a row): "
            "they never reach an answer, so the reward stays near 0. Raise rollout.max_new_tokens (e.g. "
            "rollout.max_new_tokens=1024 for math reasoning)",
        ]
    finally:
        for handler in [h for h in log.logger.handlers if isinstance(h, log._StderrHandler)]:
            log.logger.removeHandler(handler)


def test_cli_train_stderr_has_no_future_warning_no_source_line_and_each_warning_once(fast, tmp_path):
    """``rollout.max_new_tokens=2`` truncates every response, so the truncation warning must show: once."""
    args = [*fast, "train.steps=4", "rollout.max_new_tokens=2", f"output_dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "train", *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "FutureWarning" not in err and "DeprecationWarning" not in err
    assert "UserWarning" not in err and "warnings.warn(" not in err  # no Python-style display, no echoed source
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("warning: ") for line in lines), err
    assert len(lines) == len(set(lines)), err
    assert sum("cut at rollout.max_new_tokens=2" in line for line in lines) == 1, err
