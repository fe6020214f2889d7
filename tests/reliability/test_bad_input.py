"""Bad input gets one clear error (or a counted skip), never a raw traceback or a huge allocation."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from rlvr.errors import ConfigError, RLVRError
from rlvr.eval import runner
from rlvr.eval.runner import evaluate_model
from rlvr.files import safe_load_unique
from rlvr.models.loading import load_model_and_tokenizer
from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.tasks.base import Problem, context_length, drop_unusable, prompt_issue, tasks
from rlvr.tasks.countdown import CountdownTask
from rlvr.tasks.math import load_math_problems
from rlvr.train.checkpoint import check_compatible, save_checkpoint
from rlvr.train.config import RunConfig, load_config, read_config_file
from rlvr.train.logging import MetricsWriter, read_metrics
from rlvr.train.trainer import Trainer

LONG = Problem(id="long", prompt="9" * 600, answer="1")  # 600 tokens for the char tokenizer: over the tiny model's 512


@tasks.register("test_long_heldout", override=True)
class LongHeldoutTask(CountdownTask):
    """Countdown whose held-out set holds a 600-token prompt (third)."""

    name = "test_long_heldout"

    def heldout_problems(self, n: int) -> list[Problem]:
        problems = super().heldout_problems(n - 1)
        return problems[:2] + [LONG] + problems[2:]


def tiny_state(hidden: int) -> tuple[dict, torch.nn.Module, RunConfig]:
    """A tiny model of width ``hidden``, its config, and a checkpoint-like state of both."""
    tokenizer = char_tokenizer()
    model = tiny_qwen2(tokenizer, hidden_size=hidden, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    cfg = load_config(None, [f"model.tiny.hidden_size={hidden}", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
                             "model.tiny.num_kv_heads=1", "model.tiny.intermediate_size=64"])
    return {"model": model.state_dict(), "config": cfg.model_dump(mode="json")}, model, cfg


# -------------------------------------------------------------------------------------------------
# Held-out prompts are length-checked like training prompts


def count_chars(text: str) -> int:
    return len(text)


def test_prompt_issue_reasons():
    assert prompt_issue(Problem("a", "12345", "1"), count_chars, 5) is None
    assert prompt_issue(Problem("a", "123456", "1"), count_chars, 5) == "long_prompt"
    assert prompt_issue(Problem("a", "123456", "1"), count_chars, None) is None
    assert prompt_issue(Problem("a", " \n", "1"), count_chars, 5) == "empty_prompt"
    assert prompt_issue("not a problem", count_chars, 5) == "wrong_type"


def test_drop_unusable_counts_and_names_the_first_ids():
    problems = [Problem(f"p{i}", "x" * i, "1") for i in range(8)]  # p0 empty, p6 and p7 longer than 5
    kept, skipped, note = drop_unusable(problems, count_chars, 5, "held-out")
    assert [p.id for p in kept] == ["p1", "p2", "p3", "p4", "p5"]
    assert skipped == {"empty_prompt": 1, "long_prompt": 2}
    assert note == "skipping 3 of 8 held-out problems (1 empty prompt, 2 longer than 5 tokens): p0, p6, p7"
    assert drop_unusable(problems[1:3], count_chars, 5, "held-out") == (problems[1:3], {}, None)


def test_context_length_from_config_dicts():
    assert context_length({"max_position_embeddings": 512, "n_positions": 1024}) == 512
    assert context_length({"n_positions": 1024}) == 1024
    assert context_length({"text_config": {"max_position_embeddings": 4096}}) == 4096
    assert context_length({"hidden_size": 8}) is None


def test_trainer_skips_a_heldout_prompt_longer_than_the_model_context(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "task=test_long_heldout", "eval.num_problems=6"])
    assert cfg.rollout.max_prompt_tokens > 600  # the model's 512-token context is the binding limit
    with pytest.warns(UserWarning, match=r"skipping 1 of 6 held-out problems \(1 longer than 512 tokens\): long"):
        trainer = Trainer(cfg, quiet=True)
    assert len(trainer.heldout) == 5 and LONG not in trainer.heldout
    stage = trainer.rollout  # training prompts: the same check and limit
    assert prompt_issue(LONG, stage.count_tokens, stage.max_prompt_tokens) == "long_prompt"


def test_trainer_heldout_all_too_long_is_a_clear_error(fast_overrides):
    cfg = load_config(None, [*fast_overrides, "task=test_long_heldout", "eval.num_problems=3", "rollout.max_prompt_tokens=4"])
    with pytest.warns(UserWarning), pytest.raises(RLVRError, match="every held-out problem.*rollout.max_prompt_tokens"):
        Trainer(cfg, quiet=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "final_model"
    tiny_state(32)[1].save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_rlvr_eval_skips_prompts_longer_than_the_model_context(model_dir, tmp_path):
    console = Console(file=io.StringIO(), width=200)
    summary = evaluate_model(
        model_dir, "task:test_long_heldout", tmp_path / "out", n=1, limit=4, max_new_tokens=2, progress=False, console=console
    )
    assert summary["metrics"]["num_prompts"] == 3 and summary["complete"]
    assert summary["data"]["skipped_prompts"] == {"long_prompt": 1}
    assert "long" not in {r["id"] for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert "skipping 1 of 4 evaluation problems (1 longer than 512 tokens): long" in console.file.getvalue()


# -------------------------------------------------------------------------------------------------
# Clear errors naming the file (and line) and the fix


def copy_model(model_dir: Path, target: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(model_dir, target)
    for name in drop:
        (target / name).unlink()
    return target


def test_model_directory_without_tokenizer_files(model_dir, tmp_path):
    bare = copy_model(model_dir, tmp_path / "bare", drop=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ConfigError, match=r"model.path: .*bare' has no tokenizer files .*tokenizer.json.*save_pretrained"):
        load_model_and_tokenizer(str(bare))


def test_truncated_safetensors_file_is_named(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 100)
    with pytest.raises(ConfigError, match=rf"model.safetensors' is truncated \({size - 100} bytes, its header describes {size}\)"):
        load_model_and_tokenizer(str(broken))
    os.truncate(weights, 5)
    with pytest.raises(ConfigError, match=r"model.safetensors' is truncated \(5 bytes"):
        load_model_and_tokenizer(str(broken))


def test_jsonl_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"}\n')
    problems = load_math_problems(str(path))
    assert [(p.prompt.split("\n")[0], p.answer) for p in problems] == [("1+1?", "2"), ("2+2?", "4")]
    assert runner._first_record(path) == {"problem": "1+1?", "answer": "2"}
    listed = tmp_path / "bom.json"
    listed.write_bytes(b'\xef\xbb\xbf[{"problem": "3+3?", "answer": "6"}]')
    assert [p.answer for p in load_math_problems(str(listed))] == ["6"]


def test_non_utf8_bytes_name_the_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\n\n{"problem": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=r"latin1.jsonl' line 3: byte 0xe9 at column 17 is not UTF-8 text; save the file as UTF-8"):
        load_math_problems(str(path))
    first = tmp_path / "first.jsonl"
    first.write_bytes(b'{"problem": "\x80", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="first.jsonl' line 1: byte 0x80 at column 14"):
        runner._first_record(first)  # rlvr eval guesses the fields from the first row
    listed = tmp_path / "latin1.json"
    listed.write_bytes(b'[\n{"problem": "a", "answer": "1"},\n{"problem": "\xff", "answer": "2"}\n]')
    with pytest.raises(ConfigError, match=r"latin1.json' line 3: byte 0xff at column 14"):
        load_math_problems(str(listed))


def test_invalid_json_list_names_the_line(tmp_path):
    listed = tmp_path / "bad.json"
    listed.write_text('[\n{"problem": "a", "answer": "1"},\n{"problem": "b" "answer": "2"}\n]', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.json' line 3 is not valid JSON"):
        load_math_problems(str(listed))


def test_yaml_duplicate_key_names_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 5\nalgo:\n  advantage: grpo\ntrain:\n  lr: 1.0e-5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.yaml' line 5: key 'train' is given twice in the same mapping \(first on line 1\)"):
        read_config_file(str(path))
    with pytest.raises(ConfigError, match=r"'flow' line 1: key 'a' is given twice"):
        safe_load_unique("x: {a: 1, b: 2, a: 3}", "flow")


def test_yaml_without_duplicates_loads_as_safe_load():
    text = "base: &b {lr: 1, steps: 2}\nrun:\n  <<: *b\n  steps: 3\nlist: [1, 2]\n"
    assert safe_load_unique(text, "x") == yaml.safe_load(text) == {
        "base": {"lr": 1, "steps": 2}, "run": {"lr": 1, "steps": 3}, "list": [1, 2]
    }
    with pytest.raises(yaml.YAMLError):
        safe_load_unique("a: [1, 2", "x")


def test_full_disk_while_writing_metrics(tmp_path):
    writer = MetricsWriter(Path("/dev/full"))  # every write to /dev/full fails with ENOSPC
    with pytest.raises(RLVRError, match=r"cannot write /dev/full: No space left on device; free space on that disk or choose another output_dir"):
        writer.write({"step": 1})


def test_read_only_output_directory(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # chmod does not stop root, who runs the tests
    with pytest.raises(RLVRError, match=r"cannot write .*run: Read-only file system; the file system is read-only; choose another output_dir"):
        MetricsWriter(tmp_path / "run" / "metrics.jsonl")


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {"step": 1}, keep=3)

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RLVRError, match=r"cannot write .*checkpoints.*: No space left on device; free space on that disk"):
        save_checkpoint(root, 2, {"step": 2}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]  # no partial directory left behind


def test_resume_with_a_different_model_size_names_the_checkpoint_and_keys():
    state, _, _ = tiny_state(32)
    _, model, cfg = tiny_state(64)
    with pytest.raises(RLVRError) as info:
        check_compatible(state, cfg, Path("run/checkpoints/step_000004"), model)
    message = str(info.value)
    assert message.startswith("checkpoint run/checkpoints/step_000004 does not fit the configured model:")
    assert "model.tiny.hidden_size: 32 in the checkpoint, 64 now" in message
    assert "'model.embed_tokens.weight' is [104, 32] in the checkpoint, [104, 64] in the model" in message
    assert message.endswith("Resume with the checkpoint's model settings (drop the overrides that change them), or start a new output_dir")


def test_compatible_checkpoint_passes_even_when_unrelated_settings_differ():
    state, _, _ = tiny_state(32)
    _, model, cfg = tiny_state(32)
    cfg.model.gradient_checkpointing = True
    check_compatible(state, cfg, Path("ckpt"), model)


def test_lora_checkpoint_with_another_rank_does_not_fit():
    from rlvr.models.lora import apply_lora, lora_checkpoint_state

    _, model, cfg = tiny_state(32)
    cfg.model.lora.r = 4
    saved = apply_lora(model, r=4, alpha=8)
    state = {"model": lora_checkpoint_state(saved, include_base=False), "config": cfg.model_dump(mode="json")}
    _, other, cfg = tiny_state(32)
    cfg.model.lora.r = 8
    with pytest.raises(
        RLVRError, match=r"lora_A.weight' is \[4, 32\] in the checkpoint, \[8, 32\] in the model.*differ: model.lora.r: 4 in the checkpoint, 8 now\. "
    ):
        check_compatible(state, cfg, Path("ckpt"), apply_lora(other, r=8, alpha=8))
    with pytest.raises(RLVRError, match="the checkpoint holds a LoRA adapter, the model has none"):
        check_compatible(state, cfg, Path("ckpt"), tiny_state(32)[1])


def test_metrics_file_torn_by_a_full_disk_still_resumes(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"step": 1, "loss": 0.5})
    writer.write({"step": 2, "loss": 0.25})
    with open(writer.path, "a") as fh:
        fh.write('{"step": 3, "lo')  # the write that hit ENOSPC (or kill -9)
    with pytest.warns(UserWarning, match=r"metrics.jsonl line 3 is incomplete"):
        assert read_metrics(writer.path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    with pytest.warns(UserWarning):
        writer.truncate_after_step(5)
    writer.write({"step": 3, "loss": 0.125})
    assert [r["step"] for r in read_metrics(writer.path)] == [1, 2, 3]
    writer.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RLVRError, match=r"metrics.jsonl line 2 is not JSON"):
        read_metrics(writer.path)
