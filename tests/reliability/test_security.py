"""Opening someone else's run never runs their code: checkpoints, model directories, resume, answers."""

from __future__ import annotations

import builtins
import json
import shutil
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from rlvr.cli import main
from rlvr.errors import ConfigError, RLVRError
from rlvr.train.checkpoint import (
    STATE_FILE,
    UnsafeCheckpointError,
    load_latest_checkpoint,
    load_state_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from rlvr.train.config import load_config
from rlvr.train.trainer import Trainer

METHODS = [
    "train.steps=2",
    "algo.reward_shaping=[hapo, laser_d]",
    "algo.policy_loss={name: entropy_adv, base: clip_cov}",
    "algo.regularizers=[siren, entropy_bonus]",
    "algo.controllers=[{name: entropy_pid, target: 0.5}]",
]


class _WritesFile:
    """Unpickling this object opens (creates) ``path``: what a hostile ``state.pt`` could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _hostile_state(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 4, "model": {}, "pipeline": [], "payload": _WritesFile(marker)}, path)


def _squash(text: str) -> str:
    """``text`` without whitespace (rich wraps long paths across lines)."""
    return "".join(text.split())


@pytest.fixture
def run(fast, tmp_path):
    """A 2-step run with every stateful method kind (SIREN anchor, PID, HAPO, LASER-D, Clip-Cov RNG)."""
    overrides = [*fast, *METHODS, f"output_dir={tmp_path / 'run'}"]
    Trainer(load_config(None, overrides), quiet=True).run()
    return tmp_path / "run", overrides


# ---------------------------------------------------------------------------------------------- save side


def test_to_plain_converts_containers_and_numpy_and_refuses_objects():
    od = OrderedDict(w=torch.ones(2))
    od._metadata = {"": {"version": 1}}
    plain = to_plain({"c": Counter(a=2), "n": np.float64(0.5), "i": np.int64(3), "a": np.arange(3), "od": od, "t": (1, [2])})
    assert type(plain["c"]) is dict and plain["c"] == {"a": 2}
    assert type(plain["n"]) is float and plain["n"] == 0.5
    assert type(plain["i"]) is int and plain["i"] == 3
    assert torch.equal(plain["a"], torch.tensor([0, 1, 2]))
    assert type(plain["od"]) is OrderedDict and plain["od"]._metadata == {"": {"version": 1}}
    assert plain["t"] == (1, [2])
    with pytest.raises(RLVRError, match=r"state\['x'\]\[1\]: a .*_WritesFile cannot be stored"):
        to_plain({"x": [0, _WritesFile(Path("never"))]})


def test_save_refuses_state_that_would_not_load_safely(tmp_path):
    with pytest.raises(RLVRError, match=r"state\['pipeline'\]\[0\]\['obj'\]"):
        save_checkpoint(tmp_path, 1, {"step": 1, "pipeline": [{"obj": object()}]}, keep=2)
    assert not list(tmp_path.glob("step_*")) and not list(tmp_path.glob(".tmp-*"))


def test_numpy_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    np.random.seed(123)
    np.random.standard_normal()  # leaves a cached gaussian in the state
    save_checkpoint(tmp_path, 1, {"step": 1, "rng": rng_state()}, keep=1)
    expected = (np.random.random(), np.random.standard_normal())
    state = torch.load(tmp_path / "step_000001" / STATE_FILE, weights_only=True)
    np.random.seed(0)
    set_rng_state(state["rng"])
    assert (np.random.random(), np.random.standard_normal()) == expected


def test_trainer_checkpoint_has_nothing_beyond_the_builtin_allowlist(run):
    run_dir, _ = run
    file = run_dir / "checkpoints" / "step_000002" / STATE_FILE
    assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == []
    state = torch.load(file, weights_only=True)
    names = ["advantage", "entropy_adv", "hapo", "laser_d", "siren", "entropy_bonus", "entropy_pid"]
    pipeline = dict(zip(names, state["pipeline"]))
    assert isinstance(pipeline["siren"]["anchor"], float)
    assert isinstance(pipeline["entropy_pid"]["prev_error"], float)
    assert pipeline["entropy_adv"]["base"]["generator"].dtype == torch.uint8
    assert set(pipeline["laser_d"]["targets"]) == {"low", "medium", "high"}
    assert state["rng"]["numpy"]["key"].shape == (624,)


# ---------------------------------------------------------------------------------------------- load side


def test_resume_refuses_a_checkpoint_that_would_run_code(run, tmp_path, capsys):
    run_dir, overrides = run
    # the payload is live: a plain unpickling creates the file
    probe_marker = tmp_path / "probe_ran"
    _hostile_state(tmp_path / "probe.pt", probe_marker)
    torch.load(tmp_path / "probe.pt", weights_only=False)["payload"].close()
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    hostile = run_dir / "checkpoints" / "step_000004" / STATE_FILE
    _hostile_state(hostile, marker)
    cfg = load_config(None, [*overrides[:-1], "train.steps=6", overrides[-1]])
    with pytest.raises(UnsafeCheckpointError, match="refusing to load checkpoint") as info:
        Trainer(cfg, quiet=True).run(resume=True)
    assert str(hostile) in str(info.value) and "io.open" in str(info.value)  # what the pickle would call
    # refused, not skipped in favour of the intact step-2 checkpoint
    with pytest.raises(UnsafeCheckpointError):
        load_latest_checkpoint(run_dir / "checkpoints")

    capsys.readouterr()
    assert main(["train", "--resume", "--quiet", *overrides[:-1], "train.steps=6", overrides[-1]]) == 2
    out = _squash(capsys.readouterr().out)
    assert "refusingtoloadcheckpoint" in out and _squash(str(hostile)) in out
    assert not marker.exists()


def _legacy_copy(state: dict) -> dict:
    """``state`` as rlvr wrote it before the plain-state rule: NumPy's RNG state as a tuple with an array."""
    np.random.seed(7)
    legacy = dict(state)
    legacy["rng"] = {**state["rng"], "numpy": np.random.get_state()}
    return legacy


def test_old_checkpoint_is_refused_then_converted_on_request_and_resumes(run, capsys):
    run_dir, overrides = run
    file = run_dir / "checkpoints" / "step_000002" / STATE_FILE
    torch.save(_legacy_copy(load_state_file(file)), file)
    old_bytes = file.read_bytes()
    with pytest.raises(UnsafeCheckpointError, match="older rlvr version") as info:
        load_latest_checkpoint(run_dir / "checkpoints")
    assert f"rlvr checkpoint convert {file} --trust" in str(info.value)

    assert main(["checkpoint", "convert", str(run_dir)]) == 2
    assert "--trust" in capsys.readouterr().out and file.read_bytes() == old_bytes

    assert main(["checkpoint", "convert", str(run_dir), "--trust"]) == 0
    assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == []
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(0)
    set_rng_state(load_state_file(file)["rng"])
    assert np.random.random() == expected
    assert main(["checkpoint", "convert", str(file), "--trust"]) == 0  # already safe: left alone
    assert "converted 0 checkpoint" in capsys.readouterr().out

    cfg = load_config(None, [*overrides[:-1], "train.steps=3", overrides[-1]])
    trainer = Trainer(cfg, quiet=True)
    trainer.run(resume=True)
    assert trainer.step == 3


def test_resume_imports_nothing_named_in_the_checkpoint(run, tmp_path, monkeypatch):
    """The checkpoint's saved config is only compared with the user's, never used to import or build."""
    run_dir, overrides = run
    marker = tmp_path / "imported"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rlvr_test_hostile_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(plugins))
    file = run_dir / "checkpoints" / "step_000002" / STATE_FILE
    state = load_state_file(file)
    state["config"]["plugins"] = ["rlvr_test_hostile_plugin"]
    state["config"]["imports"] = {"reward_fn": "rlvr_test_hostile_plugin:score"}
    torch.save(state, file)
    cfg = load_config(None, [*overrides[:-1], "train.steps=3", overrides[-1]])
    trainer = Trainer(cfg, quiet=True)
    trainer.run(resume=True)
    assert trainer.step == 3

    state["config"]["algo"]["advantage"] = {"name": "rlvr_test_hostile_plugin", "kwargs": {}}
    state["config"]["task"] = {"name": "rlvr_test_hostile_plugin", "kwargs": {}}
    torch.save(state, file)
    shutil.rmtree(run_dir / "checkpoints" / "step_000003")
    with pytest.raises(ConfigError, match="algo.advantage"):  # a different method is a mismatch, not an import
        Trainer(cfg, quiet=True).run(resume=True)
    assert not marker.exists() and "rlvr_test_hostile_plugin" not in sys.modules


# ---------------------------------------------------------------------------------------------- model dirs


def _model_dir_with_code(root: Path, part: str, marker: Path) -> Path:
    """A tiny local model whose ``part`` ("model" or "tokenizer") maps to ``evil_code.py`` via auto_map."""
    from rlvr.models.tiny import char_tokenizer, tiny_qwen2

    directory = root / part
    tokenizer = char_tokenizer()
    tiny_qwen2(tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "evil_code.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ValueError('model code ran')\n")
    if part == "model":
        config = json.loads((directory / "config.json").read_text())
        config.pop("architectures")
        config.update(model_type="rlvr_test_custom", auto_map={"AutoConfig": "evil_code.C", "AutoModelForCausalLM": "evil_code.M"})
        (directory / "config.json").write_text(json.dumps(config))
    else:  # a model type transformers does not know, so only the shipped tokenizer class could serve
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil_code.EvilTokenizer", None]})
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
        model_config = json.loads((directory / "config.json").read_text())
        model_config.update(model_type="rlvr_test_custom", auto_map={"AutoConfig": "evil_code.C"})
        (directory / "config.json").write_text(json.dumps(model_config))
    return directory


@pytest.fixture
def code_cache(tmp_path, monkeypatch):
    """transformers copies trusted model code here (not the user's cache); a terminal that answers "y"."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    prompts: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": prompts.append(prompt) or "y")
    return prompts


@pytest.mark.parametrize("part", ["model", "tokenizer"])
def test_code_in_a_model_dir_runs_only_when_trusted(part, tmp_path, code_cache, capsys):
    from rlvr.models.loading import load_model_and_tokenizer

    marker = tmp_path / "code_ran"
    directory = _model_dir_with_code(tmp_path, part, marker)
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        load_model_and_tokenizer(str(directory))
    eval_args = ["eval", str(directory), "--data", "task:countdown", "--limit", "1", "-n", "1", "--quiet"]
    assert main([*eval_args, "--out", str(tmp_path / "e1")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().out
    assert not marker.exists() and code_cache == []  # not run, and nobody was asked on the terminal

    assert main([*eval_args, "--out", str(tmp_path / "e2"), "--trust-remote-code"]) == 2
    assert "modelcoderan" in _squash(capsys.readouterr().out) and marker.exists()


# ---------------------------------------------------------------------------------------------- answers


def test_model_answers_are_parsed_never_executed(tmp_path):
    from rlvr.tasks.countdown import is_valid_answer, parse_expression
    from rlvr.tasks.math import verify_math

    marker = tmp_path / "answer_ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    assert parse_expression(code) is None and parse_expression(f"1+({code} or 1)") is None
    assert parse_expression("3*5+7") == ([3, 5, 7], 22)
    assert not is_valid_answer([3, 5, 7], 22, f"{code}\n")
    assert not verify_math(f"\\boxed{{{code}}}", "1", timeout_s=5.0)
    assert not verify_math(code, "1", timeout_s=5.0)
    assert not marker.exists()


def test_sharded_checkpoint_metadata_is_read_with_an_allowlist(tmp_path):
    """A multi-process checkpoint's DCP ``.metadata`` is a pickle: one that would run code is refused,
    the file it would create never appears; real DCP metadata loads."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from rlvr.models.tiny import char_tokenizer, tiny_qwen2
    from rlvr.train.checkpoint import UnsafeCheckpointError
    from rlvr.train.distributed import load_sharded, model_optimizer_state, read_sharded_metadata

    model = tiny_qwen2(char_tokenizer(), hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    good = tmp_path / "good"
    dcp.save(model_optimizer_state(model, None, None), storage_writer=dcp.FileSystemWriter(str(good)))
    assert read_sharded_metadata(good).state_dict_metadata  # DCP's own classes pass
    load_sharded(good, model_optimizer_state(model, None, None))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load checkpoint .*\.metadata.*not allowed"):
        load_sharded(bad, model_optimizer_state(model, None, None))
    assert not marker.exists()
