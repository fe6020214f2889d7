"""Per-prompt history (rlvr.train.history): visits by hand, the JSONL file, checkpoint and resume; 1-shot RLVR
end to end: a run's history -> `rlvr data select` -> a 1-shot run (task=subset) in the entropy-only mode."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlvr.cli import main
from rlvr.errors import ConfigError
from rlvr.tasks.base import tasks
from rlvr.tasks.countdown import countdown_problem
from rlvr.tasks.subset import SubsetTask, write_problem_file
from rlvr.train.config import load_config
from rlvr.train.history import PromptHistory, read_prompt_history
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

A, B = countdown_problem([1, 2], 3, "1+2"), countdown_problem([2, 2], 4, "2*2")
# a small problem space (13 training problems), so 4 steps of 4 prompts revisit some of them
POOL = ["task=test_checksum", "task.kwargs.num_count=2", "task.kwargs.max_number=3", "eval.every=100"]


def test_visits_by_hand(tmp_path) -> None:
    history = PromptHistory(tmp_path / "h.jsonl")
    # A drawn twice in the step (rows 0-1 and 4-5): one visit over its 4 responses
    visits = history.record(
        3, [A, A, B, B, A, A], torch.tensor([True, False, False, False, True, True]), torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0, 1.0])
    )
    assert [(v["prompt_id"], v["accuracy"], v["reward"], v["n"]) for v in visits] == [(A.id, 0.75, 0.875, 4), (B.id, 0.0, 0.125, 2)]
    history.record(5, [B, B], torch.tensor([True, True]), torch.tensor([1.0, 1.0]))
    assert history.series() == {A.id: [0.75], B.id: [0.0, 1.0]}
    assert history.series("reward") == {A.id: [0.875], B.id: [0.125, 1.0]}
    assert history.last(B.id) == 1.0 and history.last("nope") is None
    lines = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["step"], "problem" in r) for r in lines] == [(A.id, 3, True), (B.id, 3, True), (B.id, 5, False)]
    series, problems = read_prompt_history(tmp_path / "h.jsonl")
    assert series == history.series() and problems == {A.id: A, B.id: B}
    # state: plain containers only; a copy restores the same visits (and, with keep_problems, the Problems)
    keeper = PromptHistory(keep_problems=True)
    keeper.load_state_dict(history.state_dict())
    assert keeper.series() == history.series()
    keeper.record(6, [A], torch.tensor([False]), torch.tensor([0.0]))
    restored = PromptHistory(keep_problems=True)
    restored.load_state_dict(keeper.state_dict())
    assert restored.problem(A.id) == A and restored.series()[A.id] == [0.75, 0.0]
    history.truncate_file_after(4)
    assert [json.loads(line)["step"] for line in (tmp_path / "h.jsonl").read_text().splitlines()] == [3, 3]


def test_select_cli_by_hand(tmp_path, capsys) -> None:
    lines = [  # A: [0, 1] (std 0.5); B: [0.25, 0.25, 0.75] (std sqrt(2)/6 = 0.2357); C: [1] (std 0)
        (A, 1, 0.0), (B, 1, 0.25), (countdown_problem([1, 1], 1, "1*1"), 2, 1.0), (A, 2, 1.0), (B, 2, 0.25), (B, 3, 0.75)
    ]  # fmt: skip
    seen: set[str] = set()
    with open(tmp_path / "prompt_history.jsonl", "w") as fh:
        for problem, step, acc in lines:
            extra = {} if problem.id in seen else {"problem": problem.__dict__}
            seen.add(problem.id)
            fh.write(json.dumps({"prompt_id": problem.id, "step": step, "accuracy": acc, "reward": acc, "n": 4, **extra}) + "\n")
    assert main(["data", "select", str(tmp_path), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "0.5000" in out and f"{math.sqrt(2) / 6:.4f}" in out and "task=subset" in out
    selected = [json.loads(line) for line in (tmp_path / "selected_std_k2.jsonl").read_text().splitlines()]
    assert [r["id"] for r in selected] == [A.id, B.id] and selected[0]["meta"] == A.meta
    # lim over the first E = 1 visits: mean curve 5/12; s = 1 - (a - 5/12)^2 / (7/12)^2 -> B (0.25) first
    assert main(["data", "select", str(tmp_path), "--score", "lim", "--out", str(tmp_path / "lim.jsonl")]) == 0
    assert json.loads((tmp_path / "lim.jsonl").read_text())["id"] == B.id
    assert main(["data", "select", str(tmp_path / "missing")]) == 2


def test_subset_task_repeats_its_problems_and_scores_with_the_base(tmp_path) -> None:
    path = write_problem_file([A, B], tmp_path / "two.jsonl")
    task = tasks.build("subset", {"path": str(path)}).fn
    import random

    draws = task.train_problems(5, random.Random(0))
    assert sorted(p.id for p in draws[:2]) == sorted([A.id, B.id]) and sorted(p.id for p in draws[2:4]) == sorted([A.id, B.id])
    assert task.score(A, "2+1") == 1.0 and task.score(A, "1+1") == 0.0  # countdown's verifier on the stored meta
    assert task.heldout_problems(3) == tasks.build("countdown").fn.heldout_problems(3)
    with pytest.raises(ConfigError, match="not a file"):
        SubsetTask(path=str(tmp_path / "none.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl line 1"):
        SubsetTask(path=str(tmp_path / "bad.jsonl"))


def _run(overrides: list[str], run: Path, steps: int, resume: bool = False) -> Trainer:
    trainer = Trainer(load_config(None, [*overrides, f"train.steps={steps}", f"output_dir={run}"]), quiet=True)
    trainer.run(resume=resume)
    return trainer


def test_history_in_the_trainer_is_checkpointed_and_resumes(tmp_path, fast) -> None:
    base = [*fast, *POOL]
    straight = _run(base, tmp_path / "a", 4)
    file = tmp_path / "a" / "prompt_history.jsonl"
    records = read_metrics(file)
    metrics = {r["step"]: r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "accuracy" in r}
    for step in range(1, 5):  # the visits of a step cover its 16 rows; their n-weighted accuracy is the step's
        visits = [r for r in records if r["step"] == step]
        assert sum(r["n"] for r in visits) == 16
        assert sum(r["accuracy"] * r["n"] for r in visits) / 16 == pytest.approx(metrics[step]["accuracy"])
    assert any(len(v) > 1 for v in read_prompt_history(file)[0].values())  # some prompts were revisited
    state = torch.load(tmp_path / "a/checkpoints/step_000004/state.pt", weights_only=True)
    assert state["prompt_history"]["visits"] == straight.history.state_dict()["visits"]
    # stopped after step 2's checkpoint with step 3 already logged: the resume drops and replays it
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b/checkpoints/step_000004")
    _run(base, tmp_path / "b", 4, resume=True)
    assert (tmp_path / "b" / "prompt_history.jsonl").read_text() == file.read_text()


def test_one_shot_rlvr_end_to_end(tmp_path, fast, capsys) -> None:
    pool = tmp_path / "pool"
    _run([*fast, *POOL], pool, 4)
    series = {}
    for record in read_metrics(pool / "prompt_history.jsonl"):
        series.setdefault(record["prompt_id"], []).append(record["accuracy"])
    stds = {pid: float(np.std(values)) for pid, values in series.items()}  # population std, as the official numpy
    best = max(stds, key=stds.get)
    assert stds[best] > 0 and sum(s == stds[best] for s in stds.values()) == 1
    assert main(["data", "select", str(pool), "--k", "1", "--score", "std"]) == 0
    assert f"{stds[best]:.4f}  {best}" in capsys.readouterr().out
    selected = pool / "selected_std_k1.jsonl"
    assert [json.loads(line)["id"] for line in selected.read_text().splitlines()] == [best]
    # pi_1 repeated to the batch, from the pool run's weights, trained on the entropy bonus alone
    one_shot = [
        *fast, "eval.every=100", f"model={pool / 'final_model'}", "warmstart.steps=0",
        "task=subset", f"task.kwargs.path={selected}", "task.kwargs.base=test_checksum",
        "task.kwargs.base_kwargs={num_count: 2, max_number: 3}",
        "algo.policy_loss=none", "algo.regularizers=[{name: entropy_bonus, coef: 1.0}]",
    ]  # fmt: skip
    _run(one_shot, tmp_path / "one", 3)
    visits = read_metrics(tmp_path / "one" / "prompt_history.jsonl")
    assert [(r["prompt_id"], r["n"]) for r in visits] == [(best, 16)] * 3  # every drawn problem is pi_1
    records = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "train/grad_norm" in r]
    assert len(records) == 3 and all(r["train/pg_loss"] == 0.0 and r["train/grad_norm"] > 1e-3 for r in records)
