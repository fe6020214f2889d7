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
