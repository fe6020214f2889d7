"""examples/entropy_study.py end to end on a tiny config: two methods, report files and table rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "entropy_study.py"

TINY = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=1",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=64",
    "warmstart.steps=2",
    "warmstart.batch_size=16",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "eval.num_problems=4",
    "eval.samples=2",
    "eval.pass_k=[1,2]",
    "eval.every=2",
    "train.checkpoint_every=2",
]


def _load_script():
    spec = importlib.util.spec_from_file_location("entropy_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_entropy_study_writes_report(tmp_path, monkeypatch):
    study = _load_script()
    # Each Trainer renders its own per-run report at the end (several matplotlib figures, seconds on a
    # loaded CPU); it is not what this test checks, so skip it to keep the test fast.
    import rlvr.eval.report

    monkeypatch.setattr(rlvr.eval.report, "write_run_report", lambda run_dir: Path(run_dir) / "report.md")
    # A 1-layer d=32 model gains nothing from intra-op threads, and on a shared 2-core machine they contend.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_and_check(study, tmp_path / "study")
    finally:
        torch.set_num_threads(threads)


def _run_and_check(study, out: Path) -> None:
    md = study.main(["--out", str(out), "--steps", "2", "--seeds", "0", "--quiet",
                     "--methods", "grpo", "siren", "--", *TINY])

    assert md == out / "entropy_study.md" and md.is_file()
    for name in ("entropy", "accuracy", "passk", "response_length", "curves"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"({name}.png)" in md.read_text()

    # one shared warm start, then each method starts from its weights without warm-starting again
    assert (out / "warmstart" / "final_model" / "config.json").is_file()
    for method in ("grpo", "siren"):
        records = [json.loads(line) for line in (out / method / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1, 2]
        assert "entropy/mean" in records[1] and "eval/pass@2" in records[-1]
        cfg = (out / method / "seed0" / "config.yaml").read_text()
        assert "final_model" in cfg
    # same weights and seed -> the same held-out greedy accuracy after the warm start
    step0 = [json.loads((out / m / "seed0" / "metrics.jsonl").read_text().splitlines()[0]) for m in ("grpo", "siren")]
    assert step0[0]["eval/accuracy_greedy"] == step0[1]["eval/accuracy_greedy"]

    # the results table: one row per method, in the order asked for
    text = md.read_text()
    table = text.split("## Results", 1)[1].split("## Observations", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| **")]
    assert [r.split("|")[1].strip() for r in rows] == ["**grpo**", "**siren**"]
    assert "pass@2 warm → final" in table

    numbers = json.loads((out / "study.json").read_text())
    assert set(numbers) == {"grpo", "siren"}
    assert "siren/anchor" in numbers["siren"]["mean"]


def test_unknown_override_fails_before_training(tmp_path):
    study = _load_script()
    from rlvr.errors import ConfigError

    with pytest.raises(ConfigError):
        study.main(["--out", str(tmp_path / "bad"), "--steps", "1", "--", "train.stpes=3"])
    assert not (tmp_path / "bad" / "warmstart").exists()
