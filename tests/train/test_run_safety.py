"""Run safety: resume keeps the run's own config, a run directory holds one run, interrupts checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlvr.cli import main
from rlvr.train.checkpoint import list_checkpoints, load_latest_checkpoint
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.run_dir import claimed_run_dir
from rlvr.train.trainer import Trainer
from rlvr.train.warmstart import WarmStart

VOLATILE = ("time/", "throughput/")


def _stable(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in read_metrics(path / "metrics.jsonl")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_latest_checkpoint(run / "checkpoints")[1]["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_with_the_runs_saved_config(tmp_path, fast, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "-c", "siren", *fast, "train.steps=2", f"output_dir={run}"]) == 0
    assert main(["train", "--resume", "--quiet", "train.steps=3", f"output_dir={run}"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [r["name"] for r in saved["algo"]["regularizers"]] == ["siren"]
    assert saved["algo"]["advantage"]["name"] == "dr_grpo" and saved["train"]["steps"] == 3
    assert saved["model"]["tiny"]["hidden_size"] == 32  # the FAST model, not the default one
    state = load_latest_checkpoint(run / "checkpoints")[1]
    assert state["step"] == 3 and state["config"]["algo"]["regularizers"][0]["name"] == "siren"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2, 3]


def test_resume_refuses_locked_overrides_unless_forced(tmp_path, fast, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", *fast, "train.steps=2", f"output_dir={run}"]) == 0
    capsys.readouterr()
    code = main(["train", "--resume", "--quiet", "train.steps=3", "algo.advantage=dr_grpo",
                 "rollout.group_size=2", f"output_dir={run}"])
    out = capsys.readouterr().out
    assert code == 2 and "algo.advantage" in out and "rollout.group_size" in out and "--force" in out
    assert load_latest_checkpoint(run / "checkpoints")[1]["step"] == 2  # nothing ran
    assert main(["train", "--resume", "--force", "--quiet", "train.steps=3", "algo.advantage=dr_grpo",
                 f"output_dir={run}"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["algo"]["advantage"]["name"] == "dr_grpo"


def test_trainer_resume_checks_the_checkpoints_config(fast_overrides):
    from rlvr.errors import ConfigError

    Trainer(load_config(None, [*fast_overrides, "train.steps=2"]), quiet=True).run()
    changed = load_config(None, [*fast_overrides, "train.steps=3", "train.ppo_epochs=2"])
    with pytest.raises(ConfigError, match="train.ppo_epochs"):
        Trainer(changed, quiet=True).run(resume=True)


def test_a_used_run_dir_is_refused_and_overwrite_clears_it(tmp_path, fast, capsys):
    run = tmp_path / "run"
    args = ["train", "--quiet", *fast, f"output_dir={run}"]
    assert main([*args, "train.steps=4"]) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    assert main([*args, "train.steps=2"]) == 2
    out = capsys.readouterr().out
    assert "already holds a run" in out and "--overwrite" in out and "--resume" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # untouched
    assert main([*args, "train.steps=2", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]  # old step_4 gone
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2]


def test_a_second_run_in_a_locked_dir_fails_at_once(tmp_path, fast_overrides):
    from rlvr.errors import RLVRError

    cfg = load_config(None, [*fast_overrides, "train.steps=1"])
    with claimed_run_dir(Path(cfg.output_dir), resume=False, overwrite=False):
        with pytest.raises(RLVRError, match="in use by another rlvr run"):
            Trainer(cfg, quiet=True).run()
    assert not (Path(cfg.output_dir) / "metrics.jsonl").exists()
    Trainer(cfg, quiet=True).run()  # the lock went with its holder


def _signal_at_step(trainer: Trainer, step: int, signum: int) -> None:
    """Deliver ``signum`` to this process in the middle of RL step ``step`` (1-based)."""
    original = trainer.train_step

    def step_then_signal():
        record = original()
        if trainer.step == step:
            os.kill(os.getpid(), signum)
        return record

    trainer.train_step = step_then_signal


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_checkpoints_and_resume_matches_an_uninterrupted_run(
    tmp_path, fast, informative, monkeypatch, capsys, signum, code
):
    base = [*fast, "task=test_checksum", "train.steps=4", "train.checkpoint_every=10", "eval.every=10"]
    Trainer(load_config(None, [*base, f"output_dir={tmp_path / 'a'}"]), quiet=True).run()
    informative.assert_learning(read_metrics(tmp_path / "a" / "metrics.jsonl"))

    build = Trainer.__init__

    def init_and_arm(self, *args, **kwargs):
        build(self, *args, **kwargs)
        _signal_at_step(self, 3, signum)

    monkeypatch.setattr(Trainer, "__init__", init_and_arm)
    assert main(["train", "--quiet", *base, f"output_dir={tmp_path / 'b'}"]) == code
    out = capsys.readouterr().out
    assert "Traceback" not in out and f"rlvr train --resume output_dir={tmp_path / 'b'}" in out
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_000003"]
    monkeypatch.setattr(Trainer, "__init__", build)
    assert main(["train", "--resume", "--quiet", f"output_dir={tmp_path / 'b'}"]) == 0
    assert _stable(tmp_path / "a") == _stable(tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")


def test_interrupted_warm_start_checkpoints_and_resumes_exactly(tmp_path, fast, informative, monkeypatch, capsys):
    base = [*fast, "task=test_checksum", "warmstart.steps=9", "warmstart.checkpoint_every=4", "train.steps=2"]
    Trainer(load_config(None, [*base, f"output_dir={tmp_path / 'a'}"]), quiet=True).run()
    informative.assert_learning(read_metrics(tmp_path / "a" / "metrics.jsonl"))

    original = WarmStart.train_step

    def step_then_signal(self):
        loss = original(self)
        if self.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(WarmStart, "train_step", step_then_signal)
    assert main(["train", "--quiet", *base, f"output_dir={tmp_path / 'b'}"]) == 143
    assert "in the warm start at step 6" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints", "warmstart")] == ["warmstart_000006"]
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
    monkeypatch.setattr(WarmStart, "train_step", original)
    assert main(["train", "--resume", "--quiet", f"output_dir={tmp_path / 'b'}"]) == 0
    assert list_checkpoints(tmp_path / "b" / "checkpoints", "warmstart") == []  # dropped once RL saved
    assert _stable(tmp_path / "a") == _stable(tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")


# --------------------------------------------------------------------------------------------------
# kill -9 at chosen points, in a child process; the resumed run must equal an uninterrupted one

VICTIM = Path(__file__).resolve().parents[1] / "victim.py"


@pytest.mark.parametrize("point, n", [("checkpoint_write", 4), ("warm_start", 7), ("eval", 4)])
def test_kill_9_at_a_chosen_point_then_resume_matches(tmp_path, fast, informative, point, n):
    base = [*fast, "task=test_checksum", "warmstart.steps=10", "warmstart.checkpoint_every=3", "train.steps=5",
            "eval.every=2", "train.checkpoint_every=2"]
    Trainer(load_config(None, [*base, f"output_dir={tmp_path / 'a'}"]), quiet=True).run()
    informative.assert_learning(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    victim = [sys.executable, str(VICTIM), "train", "--quiet", *base, f"output_dir={tmp_path / 'b'}"]
    env = {**os.environ, "RLVR_KILL_AT": point, "RLVR_KILL_STEP": str(n)}
    proc = subprocess.run(victim, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert main(["train", "--resume", "--quiet", f"output_dir={tmp_path / 'b'}"]) == 0
    assert _stable(tmp_path / "a") == _stable(tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp-*"))


def test_resume_does_not_take_trust_remote_code_from_a_saved_config(tmp_path):
    from rlvr.errors import ConfigError
    from rlvr.train.config import load_resume_config

    run = tmp_path / "shared_run"
    run.mkdir()
    (run / "config.yaml").write_text(f"output_dir: {run}\nmodel: {{path: {run / 'model'}, trust_remote_code: true}}\n")
    with pytest.raises(ConfigError, match=r"model.trust_remote_code.*confirm it on the command line"):
        load_resume_config(None, [f"output_dir={run}"])
    (run / "config.yaml").write_text(f"output_dir: {run}\nrollout: {{backend: vllm, vllm: {{trust_remote_code: true}}}}\n")
    with pytest.raises(ConfigError, match=r"rollout.vllm.trust_remote_code"):
        load_resume_config(None, [f"output_dir={run}"])
    cfg = load_resume_config(None, [f"output_dir={run}", "rollout.vllm.trust_remote_code=true"])
    assert cfg.rollout.vllm.trust_remote_code is True
