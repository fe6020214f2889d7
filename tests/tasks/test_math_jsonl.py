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


# ---------------------------------------------------------------------------------------------- data sources


def test_local_dataset_directory_with_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "my_set"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"problem": f"{i}+1?", "answer": str(i + 1)} for i in range(6)]),
        "test": datasets.Dataset.from_list([{"problem": "2*3?", "answer": "6"}, {"problem": "2*4?", "answer": "8"}]),
    }).save_to_disk(str(saved))
    task = MathJsonlTask(path=str(saved), heldout_split="test")
    heldout = task.heldout_problems(10)
    assert [(p.id, p.answer) for p in heldout] == [("my_set:test:0", "6"), ("my_set:test:1", "8")]
    assert heldout[0].meta["split"] == "test" and heldout[0].prompt.startswith("2*3?\n")
    train = task.train_problems(6, random.Random(0))
    assert sorted(p.id for p in train) == [f"my_set:train:{i}" for i in range(6)]  # split defaults to train
    assert task.score(heldout[1], "\\boxed{8}") == 1.0 and task.score(heldout[1], "\\boxed{6}") == 0.0
    only_test = MathJsonlTask(path=str(saved), split="test", heldout_fraction=0.0)
    assert sorted(p.answer for p in only_test.train_problems(2, random.Random(0))) == ["6", "8"]
    with pytest.raises(ConfigError, match=r"task\.split: 'dev' is not a split of .*; splits: train, test"):
        MathJsonlTask(path=str(saved), split="dev")
    with pytest.raises(ConfigError, match="held-out rows .* are training rows too"):
        MathJsonlTask(path=str(saved), split="test", heldout_split="test")

    single = tmp_path / "single"
    datasets.Dataset.from_list([{"question": "1+1?", "answer": "2"}]).save_to_disk(str(single))
    problem = MathJsonlTask(path=str(single), heldout_fraction=1.0).heldout_problems(1)[0]
    assert (problem.id, problem.answer, problem.prompt.split("\n")[0]) == ("single:0", "2", "1+1?")  # question guessed
    with pytest.raises(ConfigError, match=r"task\.split: .* single dataset"):
        MathJsonlTask(path=str(single), split="train")
    with pytest.raises(ConfigError, match=r"task\.split: .* single file"):
        MathJsonlTask(path=write_jsonl(tmp_path / "f.jsonl", [{"problem": "a", "answer": "1"}]), split="train")


def test_folder_of_data_files_is_read_with_load_dataset(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "files"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"problem": "1+2?", "answer": "3"}, {"problem": "2+2?", "answer": "4"}])
    write_jsonl(folder / "test.jsonl", [{"problem": "5+5?", "answer": "10"}])
    task = MathJsonlTask(path=str(folder), heldout_split="test")
    assert [(p.id, p.answer) for p in task.heldout_problems(5)] == [("files:test:0", "10")]
    assert sorted(p.answer for p in task.train_problems(2, random.Random(0))) == ["3", "4"]


def test_csv_file_keeps_answers_as_text(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text('question,answer\n"How many, exactly?",042\n2+2?,4\n', encoding="utf-8")
    task = MathJsonlTask(path=str(path), heldout_fraction=1.0)
    problems = task.heldout_problems(5)
    assert [(p.id, p.answer) for p in problems] == [("set:0", "042"), ("set:1", "4")]
    assert problems[0].prompt.startswith("How many, exactly?\n")
    missing = tmp_path / "bad.csv"
    missing.write_text("question,answer\nq1,1\nq2,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no plain answer in field 'answer' of .*bad\.csv' line 3"):
        MathJsonlTask(path=str(missing))


def test_hub_names_only_with_the_prefix_and_never_in_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple] = []

    def fake_load_dataset(name, config=None, **kwargs):  # the network is never touched
        calls.append((name, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = MathJsonlTask(path="hf:org/toy:main", heldout_fraction=1.0)
    problem = task.heldout_problems(1)[0]
    assert calls == [("org/toy", "main")]
    assert (problem.id, problem.answer) == ("toy:train:0", "2")  # #### guessed as the gsm8k format

    def offline(name, config=None, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"cannot load 'org/toy' from the Hugging Face hub \(ConnectionError: no network\)"):
        MathJsonlTask(path="hf:org/toy")
    with pytest.raises(ConfigError, match=r"is not a file or a directory; .* hf:<owner>/<name>"):
        MathJsonlTask(path="org/toy")  # a bare name is a missing local path, not a download


def test_chat_messages_records_and_system_prompt(tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "An earlier turn"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is \\boxed{4}."},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}, {"messages": chat[3:]}])
    task = MathJsonlTask(path=path, heldout_fraction=1.0, solution_field="messages")
    first, second = task.heldout_problems(2)
    assert first.prompt == DEFAULT_PROMPT_TEMPLATE.replace("{question}", "What is 2+2?")  # the last user message
    assert (first.answer, first.solution) == ("4", "It is \\boxed{4}.")  # boxed in the last assistant message
    assert first.meta["system"] == "You are terse." and "system" not in second.meta
    assert task.score(first, first.solution) == 1.0
    forced = MathJsonlTask(path=path, heldout_fraction=1.0, system_prompt="Think first.").heldout_problems(2)
    assert [p.meta["system"] for p in forced] == ["Think first.", "Think first."]  # the knob wins over the row

    # TRL's conversational prompt / completion records
    trl = write_jsonl(tmp_path / "trl.jsonl", [{
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "3*3?"}]}],
        "completion": [{"role": "assistant", "content": "so \\boxed{9}"}],
    }])
    p = MathJsonlTask(path=trl, heldout_fraction=1.0).heldout_problems(1)[0]
    assert (p.prompt.split("\n")[0], p.answer) == ("3*3?", "9")

    no_user = write_jsonl(tmp_path / "nouser.jsonl", [{"messages": chat}, {"messages": chat[4:]}])
    with pytest.raises(ConfigError, match=r"task\.question_field: the messages in field 'messages' of .* line 2 have no user message"):
        MathJsonlTask(path=no_user)


def test_field_guessing_matches_rlvr_eval(tmp_path: Path) -> None:
    from rlvr.eval import runner
    from rlvr.tasks.math import guess_fields

    record = {"question": "How many?", "answer": "It is 3+4.\n#### 7"}
    assert guess_fields(record, where="x") == {"question_field": "question", "answer_field": "answer", "answer_format": "gsm8k"}
    assert guess_fields({"problem": "p", "solution": "s"}, where="x")["answer_format"] == "boxed"
    assert guess_fields(record, answer_format="plain", where="x")["answer_format"] == "plain"
    with pytest.raises(ConfigError, match=r"task\.path: no answer field in x \(fields: question\); set task\.answer_field"):
        guess_fields({"question": "q"}, where="x")
    assert not hasattr(runner, "_guess_fields")  # rlvr eval uses this one function too
    task = MathJsonlTask(path=write_jsonl(tmp_path / "g.jsonl", [record]), heldout_fraction=1.0)
    assert task.heldout_problems(1)[0].answer == "7"


# ---------------------------------------------------------------------------------------------- answer extraction


def test_answer_extract_modes_and_their_prompts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"problem": "How many?", "answer": "1234"}])

    def task(**knobs) -> MathJsonlTask:
        return MathJsonlTask(path=path, heldout_fraction=1.0, **knobs)

    boxed = task()
    p = boxed.heldout_problems(1)[0]
    assert p.prompt == "How many?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert boxed.score(p, "\\boxed{1234}") == 1.0 and boxed.score(p, "#### 1234") == 0.0

    hashed = task(answer_extract="hash")
    q = hashed.heldout_problems(1)[0]
    assert q.prompt.endswith("write your final answer on the last line after ####.")
    assert hashed.score(q, "work\n#### 1,234") == 1.0 and hashed.score(q, "\\boxed{1234}") == 0.0
    assert hashed.score(q, "#### 1235") == 0.0

    number = task(answer_extract="last_number")
    r = number.heldout_problems(1)[0]
    assert r.prompt.endswith("end your response with the final answer as a number.")
    assert number.score(r, "12 apples, 3 boxes: 1,234.") == 1.0 and number.score(r, "1234 or 7") == 0.0

    regex = task(answer_extract="regex", answer_regex=r"Answer:\s*(\S+)", prompt_template="{question} End with 'Answer: N'.")
    s = regex.heldout_problems(1)[0]
    assert s.prompt == "How many? End with 'Answer: N'."
    assert regex.score(s, "Answer: 7 ... Answer: 1234") == 1.0 and regex.score(s, "Answer: 7") == 0.0
    assert regex.score(s, "1234") == 0.0
    assert task(prompt_template="{question}").heldout_problems(1)[0].prompt == "How many?"  # a given template wins

    with pytest.raises(ConfigError, match="with answer_extract 'regex' give a prompt_template"):
        task(answer_extract="regex", answer_regex="(x)")
    with pytest.raises(ConfigError, match=r"task\.answer_regex: answer extraction 'regex' needs a pattern"):
        task(answer_extract="regex", prompt_template="{question}")
    with pytest.raises(ConfigError, match=r"task\.answer_regex is only read with answer extraction 'regex'"):
        task(answer_regex="(x)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        task(answer_extract="regex", answer_regex="(", prompt_template="{question}")
    with pytest.raises(ConfigError, match=r"task\.answer_extract must be one of boxed, hash, last_number, regex"):
        task(answer_extract="last")


def test_system_prompt_goes_through_the_chat_template() -> None:
    from rlvr.models.tiny import char_tokenizer
    from rlvr.rollout.hf import format_prompts
    from rlvr.tasks.base import Problem

    tok = char_tokenizer()
    with_system = Problem(id="a", prompt="1+1?", answer="2", meta={"system": "Be brief."})
    plain = Problem(id="b", prompt="2+2?", answer="4")
    assert format_prompts(tok, [with_system, plain, "3+3?"], "off") == ["<bos>Be brief.\n\n1+1?", "<bos>2+2?", "<bos>3+3?"]
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert format_prompts(tok, [with_system, plain, "3+3?"], "on") == [
        "[system]Be brief.[user]1+1?[assistant]", "[user]2+2?[assistant]", "[user]3+3?[assistant]"
    ]
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert format_prompts(tok, [plain], "on") == ["2+2?"]
    with pytest.raises(ConfigError, match="rejects a system message .*System role not supported"):
        format_prompts(tok, [with_system], "on")
