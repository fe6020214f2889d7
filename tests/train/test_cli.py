"""The command line: config show, methods, bad input exits 2 with the key named."""

from __future__ import annotations

import yaml

from rlvr.cli import main


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "train.steps=3", "algo.advantage=canon"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["train"]["steps"] == 3
    assert data["algo"]["advantage"]["name"] == "canon"


def test_config_show_with_preset(capsys):
    assert main(["config", "show", "-c", "siren"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["algo"]["regularizers"][0]["name"] == "siren"
    assert data["algo"]["agg_mode"] == "seq-mean-token-sum-norm"


def test_bad_key_exits_2_before_any_work(capsys, tmp_path):
    code = main(["train", "train.stpes=3", f"output_dir={tmp_path / 'never'}"])
    out = capsys.readouterr().out
    assert code == 2
    assert "train.stpes" in out and "train.steps" in out
    assert not (tmp_path / "never").exists()


def test_methods_lists_every_stage(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "canon", "ppo_clip", "gspo", "cispo", "siren", "kl", "entropy_bonus"):
        assert name in out


def test_report_on_missing_run_dir_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "run directory" in capsys.readouterr().out


def test_docs_methods_table_is_current():
    """docs/methods.md lists every registered method with its knobs; regenerate with `rlvr methods --markdown`."""
    from pathlib import Path

    from rlvr.cli import methods_markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
    assert path.read_text() == methods_markdown(), "run: rlvr methods --markdown > docs/methods.md"


def test_flags_may_follow_overrides(capsys, tmp_path):
    code = main(["train", "train.lr=1e-4", "--quiet", "train.stpes=3", f"output_dir={tmp_path / 'never'}"])
    out = capsys.readouterr().out
    assert code == 2 and "train.stpes" in out  # the override after --quiet was read as an override


def test_install_hints_keep_their_brackets(capsys, fast_overrides):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        import pytest

        pytest.skip("vllm is installed here, so its install hint is not printed")
    assert main(["train", "--quiet", *fast_overrides, "rollout.backend=vllm"]) == 2
    assert "pip install 'rlvr[vllm]'" in capsys.readouterr().out


def test_without_a_warm_start_the_first_eval_is_labelled_before_rl(capsys, fast_overrides):
    assert main(["train", *fast_overrides, "warmstart.steps=0", "train.steps=1"]) == 0
    out = capsys.readouterr().out
    assert "before RL:" in out and "after warm start" not in out


def test_knob_errors_name_the_key_once(capsys, tmp_path):
    assert main(["config", "show", "task=math_jsonl", "task.kwargs.path=x.jsonl", "task.kwargs.bogus=1"]) == 2
    out = capsys.readouterr().out
    assert "task.kwargs: task 'math_jsonl' has no knob 'bogus'" in out and "task: task" not in out


def test_knob_values_are_checked_when_the_config_loads(capsys, tmp_path):
    assert main(["config", "show", "algo.policy_loss.clip_high=abc"]) == 2
    out = capsys.readouterr().out
    assert "algo.policy_loss.clip_high" in out and "'abc'" in out and "float" in out


def test_eval_task_arg_errors_name_the_flag():
    import pytest

    from rlvr.errors import ConfigError
    from rlvr.eval.runner import resolve_data

    with pytest.raises(ConfigError, match=r"^--task-arg: task 'countdown' has no knob 'bogus'"):
        resolve_data("task:countdown", task_knobs={"bogus": 1})
    with pytest.raises(ConfigError, match=r"^--task-arg num_count: expected a valid integer"):
        resolve_data("task:countdown", task_knobs={"num_count": "many"})


def test_config_errors_come_before_torch_is_imported():
    """`rlvr train` with a bad value fails in well under a second: no torch, no transformers."""
    import subprocess
    import sys

    code = (
        "import sys; from rlvr.cli import main; rc = main(['train', 'algo.advantage=canon', 'algo.advantage.mu=x']); "
        "assert rc == 2, rc; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "algo.advantage.mu" in proc.stdout


def test_catalog_is_current():
    """src/rlvr/catalog.json (what configs are checked against before torch loads) matches the registries."""
    from rlvr.registry import CATALOG_FILE, catalog_json

    assert CATALOG_FILE.read_text() == catalog_json(), "run: rlvr methods --catalog > src/rlvr/catalog.json"


def test_adapter_support_table_is_current():
    """docs/adapters.md (which methods run inside verl / TRL) matches the registries."""
    from pathlib import Path

    from rlvr.integrations.support import support_markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"
    assert path.read_text() == support_markdown(), "run: rlvr methods --support > docs/adapters.md"


def test_adapter_support_rules():
    from rlvr.algos import REGISTRIES
    from rlvr.integrations.support import runs_in

    def entry(stage, name):
        return REGISTRIES[stage].entry(name)

    assert runs_in("verl", "advantage", entry("advantage", "grpo")) == (True, "")
    assert runs_in("verl", "advantage", entry("advantage", "canon"))[1] == "needs old_entropy"
    assert runs_in("trl", "policy_loss", entry("policy_loss", "ppo_clip")) == (True, "")
    assert "prepare hook" in runs_in("trl", "policy_loss", entry("policy_loss", "clip_cov"))[1]
    assert not runs_in("verl", "regularizer", entry("regularizer", "siren"))[0]


def test_python_dash_m_rlvr_runs_the_cli():
    """``python -m rlvr`` (what ``torchrun -m rlvr train`` runs on every rank) is the CLI."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rlvr", "config", "show", "train.steps=3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["train"]["steps"] == 3
