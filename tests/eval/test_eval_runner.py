"""``rlvr eval`` end to end on a tiny saved model: summaries, resume, data resolution, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.errors import ConfigError
from rlvr.eval import runner
from rlvr.eval.runner import SHARED_SETS, evaluate_model, resolve_data
from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.rollout.hf import HFRollout

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "math"
FAST = dict(max_new_tokens=6, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    tokenizer = char_tokenizer()
    model = tiny_qwen2(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    path = tmp_path_factory.mktemp("tiny") / "final_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def count_generate(monkeypatch):
    """Counts generate calls and the prompts they sampled."""
    calls: list[int] = []
    real = HFRollout.generate

    def counting(self, model, prompts, **kwargs):
        calls.append(len(prompts))
        return real(self, model, prompts, **kwargs)

    monkeypatch.setattr(HFRollout, "generate", counting)
    return calls


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_jsonl_end_to_end_with_known_answers(model_dir, tmp_path, monkeypatch) -> None:
    """Responses are replaced by known texts so every metric has a hand-computed value; the real
    path (generate, math-verify in its helper processes, entropy forward, files) runs unchanged."""
    data = write_jsonl(tmp_path / "toy.jsonl", [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "1+2?", "answer": "3"},
        {"problem": "4/2?", "answer": "2"},
    ])
    real = HFRollout.generate

    def fixed(self, model, prompts, **kwargs):
        batch = real(self, model, prompts, **kwargs)
        batch.responses = ["so \\boxed{2}" if j % 2 == 0 else "no idea" for j in range(len(batch.responses))]
        return batch

    monkeypatch.setattr(HFRollout, "generate", fixed)
    out = tmp_path / "out"
    summary = evaluate_model(model_dir, data, out, n=4, batch_prompts=2, **FAST)
    m = summary["metrics"]
    assert summary["data"]["question_field"] == "problem" and summary["data"]["answer_format"] == "plain"
    assert m["num_prompts"] == 3 and m["num_responses"] == 12
    assert m["accuracy"] == pytest.approx(1 / 3) and m["avg@4"] == pytest.approx(1 / 3)  # 2/4, 0/4, 2/4
    assert m["pass@2"] == pytest.approx(2 * (1 - 1 / 6) / 3)  # 1 - C(2,2)/C(4,2) on two prompts
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(2 / 3)  # "2" wins everywhere; right for two prompts
    assert m["answers/distinct_mean"] == 1 and m["answers/none_frac"] == 0.5
    assert m["length/mean"] > 0 and m["entropy/mean"] > 0 and 0 < m["distinct_1"] <= 1
    assert m["accuracy_per_1k_tokens"] == pytest.approx(1000 * 4 / m["tokens/total"])
    rows = results(out)
    assert [r["id"] for r in rows] == ["toy:0", "toy:1", "toy:2"]
    assert rows[1]["correct"] == [False] * 4 and rows[0]["answers"] == ["2", None, "2", None]
    assert len(rows[0]["entropy"]) == 4 and len(rows[0]["lengths"]) == 4
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"]["pass@4"] == pytest.approx(2 / 3) and saved["complete"]
    assert "maj@4" in (out / "summary.md").read_text()


def test_countdown_resume_skips_finished_prompts(model_dir, tmp_path, count_generate) -> None:
    out = tmp_path / "cd"
    first = evaluate_model(model_dir, "task:countdown", out, n=2, limit=4, batch_prompts=2, **FAST)
    assert sum(count_generate) == 4 and first["metrics"]["num_prompts"] == 4
    assert first["data"]["kind"] == "task" and first["task"] == "countdown"
    assert set(first["metrics"]) >= {"pass@1", "pass@2", "maj@2", "entropy/mean", "distinct_2", "length/p90"}

    # interrupted run: one finished prompt and a torn line
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:25])
    count_generate.clear()
    resumed = evaluate_model(model_dir, "task:countdown", out, n=2, limit=4, batch_prompts=2, **FAST)
    assert sum(count_generate) == 3  # only the three unfinished prompts
    assert resumed["metrics"]["num_prompts"] == 4 and resumed["last_invocation"]["prompts_generated"] == 3
    assert len(results(out)) == 4 and len({r["id"] for r in results(out)}) == 4

    count_generate.clear()
    again = evaluate_model(model_dir, "task:countdown", out, n=2, limit=4, batch_prompts=2, **FAST)
    assert count_generate == [] and again["metrics"]["num_prompts"] == 4  # nothing left: no model load either

    with pytest.raises(ConfigError, match="n=2"):
        evaluate_model(model_dir, "task:countdown", out, n=3, limit=4, **FAST)
    evaluate_model(model_dir, "task:countdown", out, n=3, limit=2, overwrite=True, **FAST)
    assert len(results(out)) == 2 and len(results(out)[0]["responses"]) == 3


def test_default_out_dir_of_a_run_model(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "final_model").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    assert runner.default_out_dir(run / "final_model", "math500") == (run / "eval" / "math500").resolve()
    assert runner.default_out_dir(tmp_path / "m", "gsm8k") == Path("eval_results") / "m" / "gsm8k"


def test_field_guessing_parquet_and_gsm8k_format(tmp_path) -> None:
    import pandas as pd

    path = tmp_path / "qa.parquet"
    pd.DataFrame({"question": ["How many?"], "answer": ["It is 3+4.\n#### 7"]}).to_parquet(path)
    data = resolve_data(str(path))
    assert (data.info["question_field"], data.info["answer_field"], data.info["answer_format"]) == ("question", "answer", "gsm8k")
    assert data.problems[0].answer == "7" and data.problems[0].id == "qa:0"
    assert data.extract("thus \\boxed{ 7 }") == "7"
    explicit = resolve_data(str(path), answer_format="plain")
    assert explicit.problems[0].answer.endswith("#### 7")


def test_local_hf_dataset_directory(tmp_path) -> None:
    import datasets

    saved = tmp_path / "my_set"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"problem": "a", "answer": "1"}]),
        "test": datasets.Dataset.from_list([{"problem": "b", "answer": "2"}, {"problem": "c", "answer": "3"}]),
    }).save_to_disk(str(saved))
    data = resolve_data(str(saved))
    assert [p.answer for p in data.problems] == ["2", "3"] and data.info["kind"] == "hf_local"
    assert [p.id for p in data.problems] == ["my_set:test:0", "my_set:test:1"] and data.info["split"] == "test"
    assert data.name == "my_set"  # read in place: no converted copy
    assert [p.answer for p in resolve_data(str(saved), split="train").problems] == ["1"]
    with pytest.raises(ConfigError, match=r"--split: 'dev' is not a split"):
        resolve_data(str(saved), split="dev")


def test_unknown_data_is_an_error_that_mentions_the_hub(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"read only when written hf:<owner>/<name>"):
        resolve_data("HuggingFaceH4/MATH-500")  # not a local path: an error, never a download
    with pytest.raises(ConfigError, match="task-arg"):
        resolve_data(str(tmp_path / "nope.jsonl"), task_knobs={"x": 1})


def test_data_dir_env_var(tmp_path, monkeypatch) -> None:
    write_jsonl(tmp_path / "aime24.jsonl", [{"problem": "p", "answer": "042", "id": 1}])
    monkeypatch.setenv(runner.DATA_DIR_ENV, str(tmp_path))
    data = resolve_data("aime24")
    assert data.info["path"] == str(tmp_path / "aime24.jsonl") and data.problems[0].answer == "042"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/math not present")
def test_shared_set_names_resolve_with_their_field_mapping(monkeypatch) -> None:
    monkeypatch.delenv(runner.DATA_DIR_ENV, raising=False)
    expected_fields = {"gsm8k": "question", "olympiadbench": "question", "math500": "problem"}
    for name in SHARED_SETS:
        data = resolve_data(name, limit=2)
        assert len(data.problems) == 2 and all(p.answer for p in data.problems), name
        assert data.info["kind"] == "shared" and Path(data.info["path"]).name == f"{name}.jsonl"
        if name in expected_fields:
            assert data.info["question_field"] == expected_fields[name]
    assert resolve_data("gsm8k", limit=1).problems[0].answer == "18"
    assert resolve_data("amc23", limit=1).problems[0].answer == "27"
    assert "boxed" not in resolve_data("minerva_math", limit=1).problems[0].answer
    olympiad = resolve_data("olympiadbench", limit=1).problems[0].answer  # a list in the file
    assert olympiad and not olympiad.startswith("[")


def test_cli_eval(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["eval", model_dir, "--data", "task:countdown", "--limit", "2", "-n", "2", "--k", "1,2",
                 "--max-new-tokens", "4", "--out", str(out), "--quiet", "--task-arg", "num_count=3"])
    assert code == 0, capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["metrics"]["num_prompts"] == 2
    assert main(["eval", model_dir, "--data", "nowhere/at_all", "--out", str(tmp_path / "x")]) == 2
    assert "hub" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_chat_records_system_prompt_and_answer_extract(model_dir, tmp_path, monkeypatch) -> None:
    """A chat-messages file evaluated with --answer-extract hash and --system-prompt: the system text
    reaches format_prompts, the scorer and the voting read the #### answer."""
    import rlvr.rollout.hf as hf

    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "so\n#### 2"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "#### 4"}]},
    ])
    formatted: list[str] = []
    real_format = hf.format_prompts

    def recording(tokenizer, prompts, chat_template):
        texts = real_format(tokenizer, prompts, chat_template)
        formatted.extend(texts)
        return texts

    real = HFRollout.generate

    def fixed(self, model, prompts, **kwargs):
        batch = real(self, model, prompts, **kwargs)
        batch.responses = ["x\n#### 2", "\\boxed{2}"] * (len(batch.responses) // 2)
        return batch

    monkeypatch.setattr(hf, "format_prompts", recording)
    monkeypatch.setattr(HFRollout, "generate", fixed)
    summary = evaluate_model(model_dir, data, tmp_path / "out", n=2, answer_extract="hash", system_prompt="Be brief.", **FAST)
    assert summary["data"]["answer_field"] == "messages" and summary["data"]["answer_format"] == "gsm8k"
    assert summary["data"]["answer_extract"] == "hash"
    assert formatted[0] == "<bos>Be brief.\n\n1+1?\nPlease reason step by step, and write your final answer on the last line after ####."
    rows = results(tmp_path / "out")
    assert rows[0]["correct"] == [True, False] and rows[1]["correct"] == [False, False]  # \\boxed{2} is not read
    assert rows[0]["answers"] == ["2", None] and rows[0]["system"] == "Be brief."
    with pytest.raises(ConfigError, match="made with answer_extract=.hash., not .last_number."):
        evaluate_model(model_dir, data, tmp_path / "out", n=2, answer_extract="last_number", system_prompt="Be brief.", **FAST)


def test_answer_flags_for_gym_task_and_hub_data(tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    path = write_jsonl(tmp_path / "n.jsonl", [{"problem": "p", "answer": "5"}])
    data = resolve_data(path, answer_extract="regex", answer_regex=r"= (\d+)", prompt_template="{question} Write = N.")
    assert data.problems[0].prompt == "p Write = N." and data.extract("a = 4, so = 5") == "5"
    assert data.task.score(data.problems[0], "a = 4, so = 5") == 1.0
    with pytest.raises(ConfigError, match="--system-prompt applies to math data"):
        resolve_data("task:countdown", system_prompt="x")
    with pytest.raises(ConfigError, match="--answer-extract and --answer-regex apply to math and gym"):
        resolve_data("task:countdown", answer_extract="hash")
    if __import__("importlib").util.find_spec("reasoning_gym") is not None:
        gym = resolve_data("gym:chain_sum", answer_extract="hash", limit=2)
        assert gym.task.extract == "hash" and gym.problems[0].prompt.endswith("on the last line after ####.")
        assert gym.extract("so\n#### 12") == "12"

    def fake_load_dataset(name, config=None, **kwargs):
        assert (name, config) == ("org/toy", None)
        return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"question": "q", "answer": "3"}])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = resolve_data("hf:org/toy")
    assert hub.info["kind"] == "hub" and hub.name == "toy" and [p.id for p in hub.problems] == ["toy:test:0"]


def test_cli_eval_answer_flags(model_dir, tmp_path, capsys) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", [{"problem": "1+1?", "answer": "2"}])
    out = tmp_path / "cli"
    code = main(["eval", model_dir, "--data", data, "-n", "1", "--max-new-tokens", "2", "--out", str(out), "--quiet",
                 "--answer-extract", "last_number", "--system-prompt", "Be brief."])
    assert code == 0, capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["answer_extract"] == "last_number" and summary["settings"]["system_prompt"] == "Be brief."
    assert results(out)[0]["prompt"].endswith("end your response with the final answer as a number.")


def test_base_results_support_and_answer_entropy(model_dir, tmp_path, monkeypatch, capsys) -> None:
    """--base-results: support shrinkage/expansion against a base eval's samples and the two models'
    answer-level entropies, on fixed responses with hand-computed values."""
    data = write_jsonl(tmp_path / "toy.jsonl", [
        {"problem": "1+1?", "answer": "2"},
        {"problem": "1+2?", "answer": "3"},
        {"problem": "4/2?", "answer": "2"},
    ])
    real = HFRollout.generate
    texts: dict[str, list[str]] = {
        "base": ["\\boxed{2}", "\\boxed{3}", "no idea", "no idea"],  # answers 2, 3, -, - on every prompt
        "model": ["\\boxed{2}"] * 4,
    }
    which = {"now": "base"}

    def fixed(self, model, prompts, **kwargs):
        batch = real(self, model, prompts, **kwargs)
        batch.responses = [texts[which["now"]][j % 4] for j in range(len(batch.responses))]
        return batch

    monkeypatch.setattr(HFRollout, "generate", fixed)
    base = evaluate_model(model_dir, data, tmp_path / "base", n=4, **FAST)
    assert base["metrics"]["answers/entropy"] == pytest.approx(math.log(4))  # 2, 3 and two singletons
    with pytest.raises(ConfigError, match="no results.jsonl"):
        evaluate_model(model_dir, data, tmp_path / "bad", n=4, base_results=tmp_path / "nowhere", **FAST)
    assert not (tmp_path / "bad").exists()

    which["now"] = "model"
    summary = evaluate_model(model_dir, data, tmp_path / "rl", n=4, base_results=tmp_path / "base", **FAST)
    m = summary["metrics"]
    assert m["answers/entropy"] == 0.0 and m["support/prompts"] == 3
    # correct answers: base {2}, {3}, {2}; model {2}, {}, {2}
    assert (m["support/answer/base"], m["support/answer/model"]) == (3, 2)
    assert (m["support/answer/preserved"], m["support/answer/shrunk"], m["support/answer/expanded"]) == (2, 1, 0)
    assert m["support/answer/preservation"] == pytest.approx(2 / 3)
    assert (m["support/prompts_both"], m["support/prompts_base_only"], m["support/prompts_model_only"]) == (2, 1, 0)
    assert summary["base"]["n"] == 4 and summary["base"]["metrics"]["accuracy"] == pytest.approx(3 / 12)
    assert summary["base"]["model_metrics"]["accuracy"] == pytest.approx(8 / 12)
    page = (tmp_path / "rl" / "summary.md").read_text()
    assert "Against the base model" in page and "| answers/entropy | 1.386 | 0 |" in page
    assert json.loads((tmp_path / "rl" / "summary.json").read_text())["base"]["metrics"]["num_prompts"] == 3

    code = main(["eval", model_dir, "--data", data, "-n", "4", "--max-new-tokens", "6", "--out", str(tmp_path / "rl"),
                 "--quiet", "--base-results", str(tmp_path / "base" / "results.jsonl")])
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert code == 0, out
    assert "vs base (3 prompts): correct answers preserved 2/3, shrunk 1, expanded 0" in out
    assert "answer entropy 1.386 -> 0.000" in out

    from rich.console import Console

    console = Console(record=True, width=200)
    fewer = evaluate_model(model_dir, data, tmp_path / "n2", n=2, base_results=tmp_path / "base", console=console, **FAST)
    assert "4 base samples per prompt against 2" in console.export_text()
    # pass@2 of both, over the smaller sample count: base 1 - C(3,2)/C(4,2) = 1/2 on each prompt; model 1 on two
    assert fewer["base"]["metrics"]["pass@2"] == pytest.approx(0.5)
    assert fewer["base"]["model_metrics"]["pass@2"] == pytest.approx(2 / 3)
    assert "| pass@2 | 0.5 | 0.6667 |" in (tmp_path / "n2" / "summary.md").read_text()
