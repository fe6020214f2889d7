"""The reasoning_gym task wrapper (skipped when reasoning-gym is not installed)."""

from __future__ import annotations

import builtins
import random

import pytest

from rlvr.errors import ConfigError
from rlvr.tasks.base import is_heldout

pytest.importorskip("reasoning_gym")

from rlvr.tasks.gym import ReasoningGymTask, extract_answer  # noqa: E402


@pytest.fixture(scope="module")
def chain_sum() -> ReasoningGymTask:
    return ReasoningGymTask(dataset="chain_sum", size=5000)


def test_score_and_solution(chain_sum: ReasoningGymTask) -> None:
    for p in chain_sum.train_problems(20, random.Random(0)):
        assert p.id.startswith("reasoning_gym:chain_sum:") and "\\boxed{}" in p.prompt
        assert chain_sum.score(p, p.solution) == 1.0
        assert chain_sum.score(p, f"I think \\boxed{{{p.answer}}}") == 1.0
        assert chain_sum.score(p, f"\\boxed{{{int(p.answer) + 1}}}") == 0.0
        assert chain_sum.score(p, p.answer) == 0.0  # not boxed
        assert not is_heldout(p.id)


def test_heldout_deterministic_and_disjoint(chain_sum: ReasoningGymTask) -> None:
    heldout = chain_sum.heldout_problems(50)
    assert len(heldout) == 50 and all(is_heldout(p.id) for p in heldout)
    assert [p.id for p in heldout] == [p.id for p in ReasoningGymTask(dataset="chain_sum", size=5000).heldout_problems(50)]
    train = chain_sum.train_problems(500, random.Random(1))
    assert not {p.id for p in train} & {p.id for p in heldout}


def test_partial_credit_is_binarised() -> None:
    task = ReasoningGymTask(dataset="countdown", size=100, extract="raw")
    p = task.train_problems(1, random.Random(0))[0]
    entry = task.dataset[p.meta["index"]]
    assert 0.0 < task.dataset.score_answer(answer="1+1", entry=entry) < 1.0  # reasoning-gym's partial credit
    assert task.score(p, "1+1") == 0.0
    assert task.score(p, p.solution) == 1.0


def test_extractors() -> None:
    assert extract_answer("x <answer> 5 </answer> y <answer>6</answer>", "answer_tag") == "6"
    assert extract_answer("7\nrest", "first_line") == "7"
    assert extract_answer(" 8 ", "raw") == "8"
    assert extract_answer("none", "boxed") is None


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown reasoning-gym dataset 'nope'.*chain_sum"):
        ReasoningGymTask(dataset="nope")
    with pytest.raises(ConfigError, match="task.config"):
        ReasoningGymTask(dataset="chain_sum", config={"bogus": 1})
    with pytest.raises(ConfigError, match="extract"):
        ReasoningGymTask(extract="xml")


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "reasoning_gym" or name.startswith("reasoning_gym."):
            raise ImportError("No module named 'reasoning_gym'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda name: fake_import(name))
    with pytest.raises(ConfigError, match="pip install reasoning-gym"):
        ReasoningGymTask()


def test_math_extract_modes_and_matching_prompts() -> None:
    hashed = ReasoningGymTask(dataset="chain_sum", size=200, extract="hash")
    p = hashed.train_problems(1, random.Random(0))[0]
    assert p.prompt.endswith("\nWrite your final answer on the last line after ####.") and p.solution == f"#### {p.answer}"
    assert hashed.score(p, p.solution) == 1.0 and hashed.score(p, f"\\boxed{{{p.answer}}}") == 0.0
    tagged = ReasoningGymTask(dataset="chain_sum", size=200, extract="answer_tag").train_problems(1, random.Random(0))[0]
    assert tagged.prompt.endswith("between <answer> and </answer>.")  # was the \boxed{} instruction
    regex = ReasoningGymTask(dataset="chain_sum", size=200, extract="regex", answer_regex=r"ANS=(-?\d+)", prompt_template="{question} ANS=")
    q = regex.train_problems(1, random.Random(0))[0]
    assert regex.score(q, f"ANS=0 then ANS={q.answer}") == 1.0 and regex.score(q, f"ANS={int(q.answer) + 1}") == 0.0
    with pytest.raises(ConfigError, match="with extract 'regex' give a prompt_template"):
        ReasoningGymTask(dataset="chain_sum", extract="regex", answer_regex="(x)")
    with pytest.raises(ConfigError, match="answer_regex is only read with answer extraction 'regex'"):
        ReasoningGymTask(dataset="chain_sum", answer_regex="(x)")
