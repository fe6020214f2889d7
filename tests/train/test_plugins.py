"""Plug-ins (``plugins=[pkg.module]`` and ``rlvr.plugins`` entry points): user tasks and methods without a launcher."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rlvr.algos import advantage
from rlvr.cli import main
from rlvr.errors import ConfigError
from rlvr.tasks.base import tasks
from rlvr.train.config import load_config, load_resume_config
from rlvr.train.logging import read_metrics

PLUGIN = """
from rlvr.algos import AlgoContext, advantage
from rlvr.algos.grpo import grpo
from rlvr.tasks.base import tasks
from rlvr.tasks.countdown import CountdownTask

CALLS = []

@tasks.register("{prefix}_task")
class PluginTask(CountdownTask):
    name = "{prefix}_task"

    def score(self, problem, response):
        return float(len(response) % 2 == 0)

@advantage.register("{prefix}_adv", requires=("rewards", "group_ids"))
def plugin_adv(ctx: AlgoContext, *, scale: float = 1.0):
    CALLS.append(scale)
    return scale * grpo(ctx)

def length(completions, **kwargs):
    return [len(c) / 8 for c in completions]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plug-in module ``rlvr_test_plugin`` on sys.path; its registrations and module are removed afterwards."""
    name = "rlvr_test_plugin"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(prefix="plugin")))
    monkeypatch.syspath_prepend(str(tmp_path))

    def forget() -> None:
        """As a new process would: the module is not imported and its names are not registered."""
        sys.modules.pop(name, None)
        tasks.unregister("plugin_task")
        advantage.unregister("plugin_adv")

    yield name, forget
    forget()


def test_a_plugin_task_and_advantage_are_used_by_name_from_the_cli(plugin, fast_overrides, capsys):
    name, _ = plugin
    args = ["train", *fast_overrides, "train.steps=2", "task=plugin_task", "algo.advantage=plugin_adv", "algo.advantage.scale=2"]
    assert main(args) == 2  # without the plug-in the names are unknown
    assert "unknown task 'plugin_task'" in capsys.readouterr().out
    assert main([*args, f"plugins=[{name}]"]) == 0
    assert sys.modules[name].CALLS == [2.0, 2.0]  # the plug-in's advantage ran at each of the two steps
    records = read_metrics(Path(fast_overrides[-1].split("=", 1)[1]) / "metrics.jsonl")
    assert [r["step"] for r in records if "reward/mean" in r] == [1, 2]


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "rlvr_test_broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"plugins: cannot import plugin 'rlvr_test_broken_plugin': RuntimeError: plugin bug"):
        load_config(None, ["plugins=[rlvr_test_broken_plugin]"])
    with pytest.raises(ConfigError, match=r"cannot import plugin 'rlvr_test_no_such_plugin': ModuleNotFoundError"):
        load_config(None, ["plugins=rlvr_test_no_such_plugin"])
    with pytest.raises(ConfigError, match=r"'a/b.py' is not a module name"):
        load_config(None, ["plugins=[a/b.py]"])
    sys.modules.pop("rlvr_test_broken_plugin", None)


def _fake_distribution(root, entry_point: str, module: str, source: str) -> None:
    """An installed-looking distribution ``rlvr-test-ep`` (a dist-info with entry_points.txt) under ``root``."""
    dist = root / "rlvr_test_ep-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlvr-test-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[rlvr.plugins]\nfake = {entry_point}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_entry_point_plugins_load_without_being_named(tmp_path, monkeypatch):
    module = "rlvr_test_ep_plugin"
    _fake_distribution(
        tmp_path,
        f"{module}:register",
        module,
        """
        from rlvr.tasks.base import tasks
        from rlvr.tasks.countdown import CountdownTask

        def register():
            tasks.register("ep_task")(CountdownTask)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        monkeypatch.setenv("RLVR_NO_PLUGIN_AUTOLOAD", "1")
        with pytest.raises(ConfigError, match="unknown task 'ep_task'"):
            load_config(None, ["task=ep_task"])
        monkeypatch.delenv("RLVR_NO_PLUGIN_AUTOLOAD")
        assert load_config(None, ["task=ep_task"]).task.name == "ep_task"
    finally:
        tasks.unregister("ep_task")
        sys.modules.pop(module, None)


def test_a_failing_entry_point_is_named_with_its_distribution(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "rlvr_test_ep_broken", "rlvr_test_ep_broken", "raise ImportError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = r"entry point 'fake = rlvr_test_ep_broken' of distribution 'rlvr-test-ep' \(group rlvr.plugins\) failed: ImportError"
    with pytest.raises(ConfigError, match=message):
        load_config(None, [])
    sys.modules.pop("rlvr_test_ep_broken", None)


def test_resume_imports_plugins_only_when_the_command_line_names_them_again(plugin, fast_overrides, capsys):
    """A run directory's config.yaml may come from someone else: the code it names is not imported on its own."""
    name, forget = plugin
    out_dir = fast_overrides[-1]
    code = [f"plugins=[{name}]", f"reward.funcs=[{name}:length]"]
    assert main(["train", *fast_overrides, "train.steps=2", "task=plugin_task", *code]) == 0
    forget()
    capsys.readouterr()

    assert main(["train", "--resume", out_dir, "train.steps=3"]) == 2
    message = capsys.readouterr().out
    assert "names Python code to import" in message and f"plugins: {name}" in message
    assert f"reward.funcs: {name}:length" in message and f"plugins=[{name}]" in message
    assert name not in sys.modules  # refused before anything was imported
    with pytest.raises(ConfigError, match=f"reward.funcs: {name}:length"):  # confirming only the plug-in is not enough
        load_resume_config(None, [out_dir, code[0]])
    assert name not in sys.modules

    assert main(["train", "--resume", out_dir, "train.steps=3", *code]) == 0
    records = read_metrics(Path(out_dir.split("=", 1)[1]) / "metrics.jsonl")
    assert [r["step"] for r in records if "reward/func_length" in r] == [1, 2, 3]
