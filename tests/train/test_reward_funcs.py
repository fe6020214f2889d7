"""Plain Python reward functions (``reward.funcs``, TRL's ``reward_funcs``): combination, protection, CLI runs."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
import threading

import pytest

from rlvr.cli import main
from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem
from rlvr.tasks.reward_funcs import RewardFunc, RewardScorer, batch_columns
from rlvr.tasks.scoring import ScorerPool
from rlvr.train.config import RunConfig, load_config, locked_changes
from rlvr.train.logging import read_metrics

P1 = Problem(id="p1", prompt="2+2=", answer="4", meta={"index": 0})
P2 = Problem(id="p2", prompt="3+3=", answer="6", solution="6", meta={"index": 1, "source": "s", "answer": "shadow"})
PROBLEMS = [P1, P1, P2, P2]
RESPONSES = ["4", "5", "6", "66"]


def exact(problem: Problem, response: str) -> float:
    return float(response == problem.answer)


@pytest.fixture
def module(tmp_path, monkeypatch):
    """``write(name, source)``: a module in tmp_path on sys.path, dropped from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_weights_combine_as_documented():
    """r = verifier_weight * v + sum_k w_k f_k, None adding nothing (TRL's nansum); hand-computed."""
    f_len = RewardFunc("f_len", lambda completions, **kw: [len(c) for c in completions], 2.0)
    f_sparse = RewardFunc("f_sparse", lambda completions, **kw: [None, 0.5, None, 3.0], -1.0)
    scorer = RewardScorer(exact, [f_len, f_sparse], verifier_weight=0.5, pool=ScorerPool())
    scored = scorer(PROBLEMS, RESPONSES, timeout_s=5.0)
    # v = [1, 0, 1, 0], f_len = [1, 1, 1, 2], f_sparse = [-, .5, -, 3]
    assert scored.rewards == pytest.approx([0.5 + 2.0, 2.0 - 0.5, 0.5 + 2.0, 4.0 - 3.0])
    assert scored.verified == [True, False, True, False]  # accuracy: the verifier's score >= 1
    assert not scored.failures
    assert scorer.pop_metrics() == pytest.approx(
        {"reward/verifier": 0.5, "reward/func_f_len": 1.25, "reward/func_f_sparse": 1.75, "reward/func_f_sparse_missing": 2}
    )
    assert scorer.pop_metrics() == {}  # reset after each pop


def test_without_funcs_the_verifier_alone_scores_as_before():
    scorer = RewardScorer(exact, pool=ScorerPool())
    scored = scorer(PROBLEMS, RESPONSES, timeout_s=5.0)
    assert scored.rewards == [1.0, 0.0, 1.0, 0.0] and scored.verified == [True, False, True, False]
    assert scorer.pop_metrics() == {}  # no per-source metrics: reward/failures_* say it all


def test_failures_score_zero_and_count_per_function():
    """Raising, NaN, non-number and wrong-length outputs are 0 and counted; other sources still score."""

    def crash(completions, **kw):
        raise RuntimeError("reward bug")

    funcs = [
        RewardFunc("crash", crash),
        RewardFunc("odd", lambda completions, **kw: [1.0, float("nan"), "x", 2.0]),
        RewardFunc("short", lambda completions, **kw: [1.0]),
    ]
    scorer = RewardScorer(exact, funcs, pool=ScorerPool())
    with pytest.warns(UserWarning) as caught:
        scored = scorer(PROBLEMS, RESPONSES, timeout_s=5.0)
    assert scored.rewards == pytest.approx([1.0 + 1.0, 0.0, 1.0, 2.0])
    assert not scored.failures  # the verifier scored every row
    metrics = scorer.pop_metrics()
    assert metrics["reward/func_crash_failures_error"] == 4 and metrics["reward/func_crash"] == 0.0
    assert metrics["reward/func_odd_failures_non_finite"] == 1 and metrics["reward/func_odd_failures_non_number"] == 1
    assert metrics["reward/func_odd"] == pytest.approx(0.75)  # (1 + 0 + 0 + 2) / 4
    assert metrics["reward/func_short_failures_error"] == 4
    assert any("expected a list of 4 rewards" in str(w.message) for w in caught)


def test_a_row_no_source_scores_is_a_failure_of_the_first_failing_source():
    """Without the verifier, correct = combined reward >= 1 (verified is None); unscored rows are failures."""

    def crash(completions, **kw):
        raise RuntimeError("reward bug")

    partial = RewardFunc("partial", lambda completions, **kw: [1.0, float("nan"), None, 2.0])
    scorer = RewardScorer(None, [RewardFunc("crash", crash), partial], pool=ScorerPool())
    with pytest.warns(UserWarning):
        scored = scorer(PROBLEMS, RESPONSES, timeout_s=5.0)
    assert scored.rewards == [1.0, 0.0, 0.0, 2.0] and scored.verified is None
    assert scored.failures == {"error": 2}
    nothing = RewardScorer(None, [RewardFunc("none", lambda completions, **kw: [None] * len(completions))])
    assert nothing(PROBLEMS, RESPONSES, timeout_s=5.0).failures == {"missing": 4}


def test_a_hanging_batch_call_times_out():
    release = threading.Event()

    def hang(completions, **kw):
        release.wait(30)
        return [1.0] * len(completions)

    ok = RewardFunc("ok", lambda completions, **kw: [0.25] * len(completions))
    scorer = RewardScorer(None, [RewardFunc("hang", hang), ok], func_timeout_s=0.2, pool=ScorerPool())
    try:
        scored = scorer(PROBLEMS, RESPONSES, timeout_s=5.0)
    finally:
        release.set()
    assert scored.rewards == [0.25] * 4 and not scored.failures
    assert scorer.pop_metrics()["reward/func_hang_failures_timeout"] == 4


def test_funcs_get_the_problem_fields_as_keyword_lists():
    seen: dict[str, dict] = {}

    def wide(**kwargs):
        seen["wide"] = kwargs
        return [0.0] * len(kwargs["completions"])

    def narrow(completions, answer):
        seen["narrow"] = {"completions": completions, "answer": answer}
        return [0.0] * len(completions)

    assert set(batch_columns(PROBLEMS, RESPONSES)) == {"prompts", "completions", "answer", "id", "solution", "index", "source"}
    RewardScorer(exact, [RewardFunc("wide", wide), RewardFunc("narrow", narrow)], pool=ScorerPool())(PROBLEMS, RESPONSES, 5.0)
    wide_kw = seen["wide"]
    assert wide_kw["prompts"] == ["2+2=", "2+2=", "3+3=", "3+3="] and wide_kw["completions"] == RESPONSES
    assert wide_kw["answer"] == ["4", "4", "6", "6"]  # the Problem's answer, not meta["answer"]
    assert wide_kw["id"] == ["p1", "p1", "p2", "p2"] and wide_kw["solution"] == [None, None, "6", "6"]
    assert wide_kw["index"] == [0, 0, 1, 1] and wide_kw["source"] == [None, None, "s", "s"]
    assert seen["narrow"] == {"completions": RESPONSES, "answer": ["4", "4", "6", "6"]}


def test_reward_funcs_are_checked_when_the_config_loads(module):
    module(
        "rlvr_test_rf_check",
        """
        class Scorer:
            def __call__(self, completions, **kwargs):
                return [1.0] * len(completions)
        instance = Scorer()
        CONSTANT = 3
        def no_completions(prompts):
            return []
        def ok(completions, **kwargs):
            return [1.0] * len(completions)
        """,
    )
    cases = {
        "rlvr_test_rf_missing:f": r"reward.funcs\[0\]: cannot import module 'rlvr_test_rf_missing'.*ModuleNotFoundError",
        "rlvr_test_rf_check:nope": r"reward.funcs\[0\]: module 'rlvr_test_rf_check' has no attribute 'nope'",
        "rlvr_test_rf_check:CONSTANT": r"reward.funcs\[0\]: 'rlvr_test_rf_check:CONSTANT' is a int, not a function",
        "rlvr_test_rf_check:Scorer": r"is a type, not a function or callable instance",
        "rlvr_test_rf_check:no_completions": r"takes neither 'completions' nor \*\*kwargs",
        "not a path": r"is not an import path",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"reward.funcs=[{path}]"])
    cfg = load_config(None, ["reward.funcs=[rlvr_test_rf_check:ok, rlvr_test_rf_check.instance]", "reward.weights=[1, 2]"])
    assert cfg.reward.funcs == ["rlvr_test_rf_check:ok", "rlvr_test_rf_check.instance"]
    with pytest.raises(ConfigError, match="reward.weights has 1 values for 2 reward.funcs"):
        load_config(None, ["reward.funcs=[rlvr_test_rf_check:ok, rlvr_test_rf_check.instance]", "reward.weights=[1]"])
    with pytest.raises(ConfigError, match="must be distinct"):
        load_config(None, ["reward.funcs=[rlvr_test_rf_check:ok, rlvr_test_rf_check.ok]"])
    with pytest.raises(ConfigError, match="reward.verifier=false leaves no reward"):
        load_config(None, ["reward.verifier=false"])


def test_a_run_logs_each_function_and_survives_crashing_hanging_and_nan_ones(module, fast_overrides):
    """Through `rlvr train`: reward/mean = 1 * verifier + 0.5 * length + 3 * (0 for each failing function)."""
    name = module(
        "rlvr_test_rf_run",
        """
        import math, time
        def length(prompts, completions, answer, id, **kwargs):
            return [len(c) / 8 for c in completions]
        def crash(completions, **kwargs):
            raise RuntimeError("reward bug")
        def hang(completions, **kwargs):
            time.sleep(1.0)
            return [1.0] * len(completions)
        def nan(completions, **kwargs):
            return [math.nan] * len(completions)
        """,
    )
    funcs = ",".join(f"{name}:{f}" for f in ("length", "crash", "hang", "nan"))
    args = ["train", *fast_overrides, "train.steps=2", f"reward.funcs=[{funcs}]", "reward.weights=[0.5,3,3,3]", "reward.timeout_s=0.2"]
    assert main(args) == 0
    records = [r for r in read_metrics(Path(fast_overrides[-1].split("=", 1)[1]) / "metrics.jsonl") if "reward/mean" in r]
    assert len(records) == 2
    n = 4 * 4  # prompts_per_step x group_size
    for r in records:
        assert r["reward/func_length"] > 0
        assert r["reward/mean"] == pytest.approx(r["reward/verifier"] + 0.5 * r["reward/func_length"], abs=1e-6)
        assert r["reward/func_crash_failures_error"] == n
        assert r["reward/func_hang_failures_timeout"] == n
        assert r["reward/func_nan_failures_non_finite"] == n
        assert r["reward/failures"] == 0  # the verifier scored every response


@pytest.mark.parametrize("shards", [1, 2])
def test_accuracy_stays_the_verifiers_under_dynamic_sampling(module, fast_overrides, shards):
    """With reward = parity verifier v + 1, accuracy = mean(v >= 1) = reward/mean - 1, also on refilled
    batches and on shards sampled separately and merged."""
    name = module("rlvr_test_rf_one", "def one(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    args = ["train", *fast_overrides, "train.steps=2", "task=test_parity", f"reward.funcs=[{name}:one]", "rollout.dynamic_sampling=true"]
    args.append(f"rollout.shards={shards}")
    assert main(args) == 0
    records = [r for r in read_metrics(Path(fast_overrides[-1].split("=", 1)[1]) / "metrics.jsonl") if "reward/mean" in r]
    assert len(records) == 2
    for r in records:
        assert r["accuracy"] == pytest.approx(r["reward/mean"] - 1.0, abs=1e-6)
        assert 0 < r["accuracy"] < 1  # dynamic sampling keeps groups whose parity varies


def test_reward_settings_are_locked_on_resume_and_new_keys_keep_their_default():
    current = RunConfig().model_dump(mode="json")
    changed = {**current, "reward": {**current["reward"], "verifier_weight": 2.0}}
    assert locked_changes(current, changed) == ["reward.verifier_weight"]
    older = {k: v for k, v in current.items() if k not in ("reward", "plugins")}  # saved before these keys existed
    assert locked_changes(older, current) == []
