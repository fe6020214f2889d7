"""The math_jsonl task over the shared benchmark files and small synthetic files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlvr.errors import ConfigError
from rlvr.tasks import build_task
from rlvr.tasks.math import DEFAULT_PROMPT_TEMPLATE, MathJsonlTask

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/math"


def data_file(name: str) -> str:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"benchmark file {path} not found")
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_math500_task() -> None:
    task = MathJsonlTask(path=data_file("math500.jsonl"), solution_field="solution")
    heldout = task.heldout_problems(1000)
    train = task.train_problems(10_000, random.Random(0))
    assert 20 < len(heldout) < 90  # ~10 % of 500
    assert not {p.id for p in heldout} & {p.id for p in train}
    assert len({p.id for p in train}) == 500 - len(heldout)
    assert [p.id for p in heldout] == [p.id for p in MathJsonlTask(path=data_file("math500.jsonl")).heldout_problems(1000)]
    p = heldout[0]
    assert p.id.startswith("math500:") and p.prompt.endswith("put your final answer within \\boxed{}.")
    assert p.prompt == DEFAULT_PROMPT_TEMPLATE.replace("{question}", json.loads(Path(data_file("math500.jsonl")).read_text().splitlines()[int(p.id.split(":")[1])])["problem"])
    assert task.score(p, p.solution) == 1.0
    assert task.score(p, f"The answer is \\boxed{{{p.answer}}}.") == 1.0
    assert task.score(p, "The answer is \\boxed{\\frac{12345}{6789}}") == 0.0
    assert task.score(p, p.answer) == 0.0  # no \boxed{} -> 0
    assert task.score(p, "") == 0.0


def test_gsm8k_format() -> None:
    task = MathJsonlTask(path=data_file("gsm8k.jsonl"), question_field="question", answer_format="gsm8k", heldout_fraction=0.0)
    first = task.train_problems(1319, random.Random(0))
    by_id = {p.id: p for p in first}
    p = by_id["gsm8k:0"]
    assert p.answer == "18"
    assert task.score(p, "She makes $18 a day. \\boxed{18}") == 1.0
    assert task.score(p, "\\boxed{\\$18}") == 1.0
    assert task.score(p, "\\boxed{18.00}") == 1.0
    assert task.score(p, "\\boxed{19}") == 0.0
    assert task.heldout_problems(10) == []


def test_minerva_boxed_reference() -> None:
    task = MathJsonlTask(path=data_file("minerva_math.jsonl"), answer_field="solution", answer_format="boxed", heldout_fraction=1.0)
    problems = task.heldout_problems(5)
    assert len(problems) == 5
    for p in problems:
        assert task.score(p, f"\\boxed{{{p.answer}}}") == 1.0
    with pytest.raises(ConfigError, match="no training problems"):
        task.train_problems(1, random.Random(0))


def test_float_and_list_answers() -> None:
    amc = MathJsonlTask(path=data_file("amc23.jsonl"), heldout_fraction=1.0)
    p = amc.heldout_problems(1)[0]
    assert p.answer == "27"  # 27.0 in the file
    assert amc.score(p, "\\boxed{27}") == 1.0
    olympiad = MathJsonlTask(path=data_file("olympiadbench.jsonl"), question_field="question", answer_field="final_answer", heldout_fraction=1.0, limit=20)
    q = olympiad.heldout_problems(1)[0]
    assert q.answer == "2" and olympiad.score(q, "so \\boxed{2}") == 1.0


def test_missing_field_names_field_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}, {"problem": "3+3?", "result": "6"}])
    with pytest.raises(ConfigError, match=r"task\.answer_field: field 'answer' is missing in .*tiny\.jsonl' line 3; fields there: problem, result"):
        MathJsonlTask(path=path)
    with pytest.raises(ConfigError, match=r"task\.question_field: field 'question' is missing .* line 1"):
        MathJsonlTask(path=path, question_field="question")


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a", "answer": "1"}\n\n{not json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 3 is not valid JSON"):
        MathJsonlTask(path=str(bad))
    with pytest.raises(ConfigError, match="task.path"):
        MathJsonlTask(path=str(tmp_path / "missing.jsonl"))
    no_box = write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "a", "answer": "no box"}])
    with pytest.raises(ConfigError, match="no boxed answer in field 'answer' .* line 1"):
        MathJsonlTask(path=no_box, answer_format="boxed")
    with pytest.raises(ConfigError, match="answer_format"):
        MathJsonlTask(path=no_box, answer_format="latex")
    with pytest.raises(ConfigError, match="prompt_template"):
        MathJsonlTask(path=no_box, prompt_template="no placeholder")


def test_template_heldout_path_and_ids(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"q": f"{i}+1?", "a": str(i + 1)} for i in range(30)])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"q": f"{i}*2?", "a": str(2 * i)} for i in range(7)])
    task = build_task("math_jsonl", {"path": train, "heldout_path": evals, "question_field": "q", "answer_field": "a", "prompt_template": "Q: {question} A: {literal braces}"})
    assert [p.id for p in task.heldout_problems(100)] == [f"eval:{i}" for i in range(7)]
    assert task.heldout_problems(100)[3].prompt == "Q: 3*2? A: {literal braces}"
    drawn = task.train_problems(30, random.Random(0))
    assert sorted(p.id for p in drawn) == sorted(f"train:{i}" for i in range(30))  # no repeats while n fits
    assert len(task.train_problems(75, random.Random(0))) == 75
    assert task.score(task.heldout_problems(100)[3], "\\boxed{6}") == 1.0


def test_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "set.parquet"
    pd.DataFrame({"problem": ["1+1?", "2+3?"], "answer": ["2", "5"]}).to_parquet(path)
    task = MathJsonlTask(path=str(path), heldout_fraction=0.0)
    problems = task.train_problems(2, random.Random(0))
    assert sorted(p.id for p in problems) == ["set:0", "set:1"]
    p = next(p for p in problems if p.id == "set:1")
    assert task.score(p, "\\boxed{5}") == 1.0
