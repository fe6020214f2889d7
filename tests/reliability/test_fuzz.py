"""Fuzzed configs and dataset files: every failure is a clear rlvr error, never a deep traceback."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlvr.errors import RLVRError
from rlvr.tasks import build_task
from rlvr.train.config import load_config

KNOWN_KEYS = [
    "seed",
    "output_dir",
    "model",
    "model.path",
    "model.dtype",
    "model.tiny.hidden_size",
    "model.tiny.num_heads",
    "task",
    "task.name",
    "task.kwargs",
    "task.kwargs.num_count",
    "warmstart.steps",
    "rollout.group_size",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.chat_template",
    "algo.advantage",
    "algo.advantage.mu",
    "algo.policy_loss",
    "algo.policy_loss.clip_high",
    "algo.agg_mode",
    "algo.regularizers",
    "algo.regularizers.0",
    "algo.regularizers.0.coef",
    "train.steps",
    "train.lr",
    "train.betas",
    "train.mini_batch_size",
    "eval.pass_k",
    "eval.samples",
]

yaml_scalars = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["null", "true", "false", "[]", "{}", "[1, 2]", "{a: 1}", "grpo", "siren", "[kl]", "- x", ":", "'"]),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=15))
overrides = st.lists(st.tuples(keys, yaml_scalars).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides)
@example(["function-=0"])  # once an IndexError inside the validation-error formatter
@example(["function-after[x]=1", "algo.policy_loss.clip_high=abc"])
def test_fuzzed_overrides_either_load_or_raise_a_config_error(items):
    try:
        load_config(None, items)
    except RLVRError as exc:
        assert str(exc).strip()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=6,
)
rows = st.one_of(
    st.fixed_dictionaries({"problem": json_values, "answer": json_values}),
    st.dictionaries(st.sampled_from(["problem", "answer", "other"]), json_values, max_size=3),
    json_values.map(lambda v: v),
)
lines = st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=30)), max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines)
def test_fuzzed_jsonl_datasets_load_or_raise_a_clear_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(content))
        try:
            task = build_task("math_jsonl", {"path": str(path), "question_field": "problem", "answer_field": "answer"})
            task = getattr(task, "fn", task)
            problems = task.train_problems(3, random.Random(0)) + task.heldout_problems(3)
        except RLVRError as exc:
            assert str(exc).strip()
            return
        for problem in problems:
            assert isinstance(problem.prompt, str) and problem.prompt.strip()
            assert isinstance(problem.answer, str)
