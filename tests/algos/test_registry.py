"""Registry behaviour: register/get, errors, knob checking, built components."""

from __future__ import annotations

import re
import typing
from typing import Any, Callable, Literal, get_args

import pytest
import torch

from rlvr.algos import REGISTRIES, AlgoContext, Component, Registry, advantage, policy_loss, regularizer
from rlvr.errors import ConfigError, UnknownNameError
from rlvr.registry import builtin_catalog, knob_specs, validate_knobs
from rlvr.tasks.base import tasks


@pytest.fixture()
def reg() -> Registry:
    return Registry("widget")


def test_register_get_and_names(reg: Registry) -> None:
    @reg.register("double", requires=("rewards",))
    def double(ctx: Any, *, factor: float = 2.0) -> float:
        """Doubles."""
        return ctx * factor

    assert reg.get("double") is double
    assert reg.names() == ["double"]
    assert "double" in reg and "triple" not in reg
    entry = reg.entry("double")
    assert entry.requires == frozenset({"rewards"})
    assert entry.doc == "Doubles."
    assert entry.knob_defaults() == {"factor": 2.0}
    assert reg.build("double", {"factor": 3.0})(2) == 6.0
    reg.unregister("double")
    assert reg.names() == []


def test_unknown_name_lists_valid(reg: Registry) -> None:
    reg.register("beta")(lambda ctx: 0)
    reg.register("alpha")(lambda ctx: 1)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'gamma'; valid names: alpha, beta") as info:
        reg.get("gamma")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
    assert str(info.value).startswith("unknown widget")  # no KeyError quoting
    with pytest.raises(UnknownNameError, match="valid names: .*grpo"):
        advantage.get("grpoo")


def test_duplicate_registration(reg: Registry) -> None:
    def first(ctx: Any) -> int:
        return 1

    def second(ctx: Any) -> int:
        return 2

    reg.register("x")(first)
    reg.register("x")(first)  # same object again: allowed (module re-import)
    with pytest.raises(ConfigError, match="already registered.*override=True"):
        reg.register("x")(second)
    reg.register("x", override=True)(second)
    assert reg.build("x")(None) == 2


def test_build_checks_knobs(reg: Registry) -> None:
    @reg.register("needs")
    def needs(ctx: Any, *, alpha: float, beta: int = 1) -> float:
        return alpha + beta

    with pytest.raises(ConfigError, match=r"widget 'needs' has no knob 'gama'; valid knobs: alpha, beta"):
        reg.build("needs", {"alpha": 1.0, "gama": 2})
    with pytest.raises(ConfigError, match=r"widget 'needs' needs knob 'alpha'"):
        reg.build("needs", {"beta": 2})
    with pytest.raises(ConfigError, match=r"^algo.loss: "):
        reg.build("needs", {}, where="algo.loss")
    comp = reg.build("needs", {"alpha": 0.5})
    assert isinstance(comp, Component)
    assert (comp.name, comp.stage, comp.knobs) == ("needs", "widget", {"alpha": 0.5})
    assert comp(None) == 1.5
    assert comp.state_dict() == {} and comp.prepare(None) == {}
    comp.load_state_dict({"ignored": 1})  # no-op for plain functions


def test_builtin_knob_errors_name_the_knob() -> None:
    match = r"has no knob 'clip'; valid knobs: clip_high, clip_low, clip_ratio_c"
    with pytest.raises(ConfigError, match=match):
        policy_loss.build("ppo_clip", {"clip": 0.2})
    assert policy_loss.entry("gspo").knob_defaults() == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert regularizer.entry("kl").knob_defaults() == {"coef": 0.001, "estimator": "k3"}


def test_class_component_state_passthrough(reg: Registry) -> None:
    @reg.register("counter")
    class Counter:
        def __init__(self, *, start: int = 0) -> None:
            self.count = start

        def __call__(self, ctx: Any) -> int:
            self.count += 1
            return self.count

        def state_dict(self) -> dict[str, Any]:
            return {"count": self.count}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.count = state["count"]

        def prepare(self, ctx: Any) -> dict[str, float]:
            return {"prepared": float(ctx)}

    with pytest.raises(ConfigError, match="valid knobs: start"):
        reg.build("counter", {"begin": 1})
    comp = reg.build("counter", {"start": 5})
    assert comp(None) == 6
    assert comp.state_dict() == {"count": 6}
    fresh = reg.build("counter")
    fresh.load_state_dict(comp.state_dict())
    assert fresh(None) == 7
    assert fresh.prepare(3) == {"prepared": 3.0}


def test_builtins_registered() -> None:
    stages = {"advantage", "policy_loss", "regularizer", "token_weight", "reward", "controller"}
    assert set(REGISTRIES) >= stages
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"} <= set(advantage.names())
    assert {"ppo_clip", "gspo", "cispo"} <= set(policy_loss.names())
    assert {"kl", "entropy_bonus"} <= set(regularizer.names())
    for name in ("ppo_clip", "gspo", "cispo"):
        assert policy_loss.entry(name).requires == frozenset({"logprobs", "old_logprobs", "advantages"})
    # a built advantage runs on a context
    ctx = AlgoContext(
        response_mask=torch.ones(2, 1), rewards=torch.tensor([1.0, 0.0]), group_ids=torch.zeros(2)
    )
    assert advantage.build("dr_grpo")(ctx).flatten().tolist() == [0.5, -0.5]


# --------------------------------------------------------------------------------------------------
# Enum-like knobs are Literal[...] so that a wrong value fails when the config loads

FREE_TEXT_KNOBS = {
    ("regularizer", "adr_switch", "long_token"),  # token text of the two reasoning modes
    ("regularizer", "adr_switch", "short_token"),
    ("reward", "adr_reward", "long_prompt"),  # instruction templates
    ("reward", "adr_reward", "short_prompt"),
    ("task", "subset", "base"),  # a registered task name, checked when the base is built
    ("task", "subset", "path"),
    ("advantage", "seed_grpo", "base"),  # registry names, checked when the base is built
    ("advantage", "ucas", "base"),
    ("advantage", "confucius_pshw", "base"),
    ("advantage", "prl", "delimiter"),  # any text that ends a reasoning step ("\n", "\n\n", "Step")
    ("advantage", "empg", "base"),
    ("advantage", "empg", "delimiter"),
    ("advantage", "ep_ppl", "base"),
    ("advantage", "copo", "base"),
    ("advantage", "hicra", "base"),
    ("advantage", "trapo", "base"),
    ("advantage", "progrpo", "base"),
    ("advantage", "spae", "base"),
    ("advantage", "spae", "delimiter"),
    ("policy_loss", "entropy_adv", "base"),
    ("controller", "entropy_pid", "regularizer"),
    ("reward", "budget_curriculum", "think_marker"),
    ("reward", "pear", "think_marker"),
    ("reward", "format_length", "pattern"),  # a regex
    ("task", "arithmetic", "ops"),  # any non-empty subset of the operator characters
    ("task", "countdown", "ops"),
    ("task", "math_jsonl", "path"),
    ("task", "math_jsonl", "split"),  # a dataset's own split names
    ("task", "math_jsonl", "heldout_path"),
    ("task", "math_jsonl", "heldout_split"),
    ("task", "math_jsonl", "question_field"),
    ("task", "math_jsonl", "answer_field"),
    ("task", "math_jsonl", "solution_field"),
    ("task", "math_jsonl", "system_prompt"),
    ("task", "math_jsonl", "prompt_template"),
    ("task", "math_jsonl", "answer_regex"),  # a regex
    ("task", "reasoning_gym", "dataset"),
    ("task", "reasoning_gym", "prompt_template"),
    ("task", "reasoning_gym", "answer_regex"),
}
"""Knobs that take free text; every other string knob must list its values in a ``Literal``."""


def _live_knobs() -> list[tuple[str, str, Any]]:
    """(stage, name, KnobSpec) of every built-in method and task (not the ones tests register)."""
    registries = {**REGISTRIES, "task": tasks}
    return [
        (stage, name, spec)
        for stage, reg in registries.items()
        for name in reg.names()
        if reg.entry(name).factory.__module__.startswith("rlvr.")
        for spec in reg.specs(name)
    ]


def _literal_values(annotation: str) -> set[Any]:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation text."""
    hint = eval(annotation, {"Literal": Literal, "None": None})  # noqa: S307 - our own catalog text
    values: set[Any] = set()
    for arg in get_args(hint) if typing.get_origin(hint) is not Literal else (hint,):
        if arg is type(None):
            values.add(None)
        else:
            assert typing.get_origin(arg) is Literal, annotation
            values.update(get_args(arg))
    return values


def test_string_knobs_are_literal_or_free_text() -> None:
    plain = {"str", "str | None", "Optional[str]"}
    untyped = sorted(
        (stage, name, spec.name) for stage, name, spec in _live_knobs() if spec.annotation in plain
    )
    assert [k for k in untyped if k not in FREE_TEXT_KNOBS] == [], "annotate enum-like knobs with Literal[...]"
    assert set(untyped) == FREE_TEXT_KNOBS, "stale entries in FREE_TEXT_KNOBS"
    literal = [(stage, name, spec) for stage, name, spec in _live_knobs() if "Literal[" in spec.annotation]
    assert len(literal) >= 25  # the aliases (GrpoScale, ...) are written out, not left as names
    catalog = builtin_catalog()["stages"]
    for stage, name, spec in literal:
        values = _literal_values(spec.annotation)
        assert spec.default in values, (stage, name, spec.name)
        assert len(values - {None}) >= 2, (stage, name, spec.name)
        if stage != "task":  # the catalog (checked before torch loads) holds the same resolvable text
            described = {"name": spec.name, "annotation": spec.annotation, "default": spec.default}
            assert described in catalog[stage][name]["knobs"]
        where = f"{stage}.{name}"
        assert validate_knobs(stage, name, [spec], {spec.name: spec.default}, where) == {spec.name: spec.default}
        with pytest.raises(ConfigError, match=rf"^{where}\.{spec.name}: expected "):
            validate_knobs(stage, name, [spec], {spec.name: "no-such-value"}, where)


Mode = Literal["a", "b"]


def test_literal_alias_names_are_written_out() -> None:
    def method(ctx: Any, *, mode: Mode = "a", maybe: Mode | None = None, text: str = "Mode") -> None:
        del ctx

    specs = {s.name: s.annotation for s in knob_specs(method)}
    assert specs == {"mode": "Literal['a', 'b']", "maybe": "Literal['a', 'b'] | None", "text": "str"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.advantage.scale=bogus"], r"algo\.advantage\.scale: expected 'group' or 'batch' \(got 'bogus'\)"),
        (
            ["task=reasoning_gym", "task.kwargs.extract=bogus"],
            r"task\.kwargs\.extract: expected 'boxed', 'answer_tag', 'first_line', 'raw', 'hash', 'last_number' or 'regex' \(got 'bogus'\)",
        ),
        (
            ["task=math_jsonl", "task.kwargs.path=x.jsonl", "task.kwargs.answer_format=gsm9k"],
            r"task\.kwargs\.answer_format: expected 'plain', 'boxed' or 'gsm8k' \(got 'gsm9k'\)",
        ),
        (
            ["algo.reward_shaping=[{name: hapo, kwargs: {variant: cosin}}]"],
            r"algo\.reward_shaping\[0\]\.variant: expected 'cosine' or 'linear' \(got 'cosin'\)",
        ),
        (
            ["algo.advantage=seed_grpo", "algo.advantage.estimator=entropy"],
            r"algo\.advantage\.estimator: expected 'cluster_mean' or 'shannon' \(got 'entropy'\)",
        ),
    ],
)
def test_config_rejects_unknown_knob_value(overrides: list[str], message: str) -> None:
    from rlvr.train.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_kl_kinds_match_their_literal() -> None:
    from rlvr.algos.kl import KL_KINDS, KlKind

    assert tuple(KL_KINDS) == get_args(KlKind)


def _helper_calls() -> list[tuple[str, Callable[[str], Any]]]:
    from rlvr.algos import budget_curriculum, drpo, format_length, laser, laser_d, seed_grpo, steer, ucas
    from rlvr.tasks import gym, math

    ones, mask = torch.ones(2), torch.ones(2, 2)
    return [
        ("fn", lambda v: seed_grpo.scale_factor(0.5, v)),
        ("missing", lambda v: seed_grpo.cluster_sizes(["1", None], v)),
        ("estimator", lambda v: seed_grpo.semantic_entropy([1, 1], v)),
        ("certainty_agg", lambda v: ucas.response_certainty(mask, mask, v)),
        ("logit_norm", lambda v: ucas.minmax_normalise(mask, mask, v)),
        ("kl_type", lambda v: drpo.kl_estimate(mask, mask, mask, v)),
        ("mode", lambda v: steer.steer_weights(mask, mask, mode=v, w_min=0.8, w_max=1.2)),
        ("schedule", lambda v: budget_curriculum.budget_at(0, 256.0, 0.7, 50, v)),
        ("match", lambda v: format_length.format_ok(["x"], re.compile("x"), v)),
        ("mode", lambda v: laser.laser_term(ones, ones, 1.0, 0.5, v)),
        ("round_method", lambda v: laser_d.lower_n("high", 8, v)),
        ("round_method", lambda v: laser_d.choose_targets([1], ["high"], [1], 8, 4, 1, v)),
        ("extract", lambda v: gym.extract_answer("x", v)),
        ("answer_format", lambda v: math.reference_answer("x", v)),
    ]


@pytest.mark.parametrize("index", range(14))
def test_helpers_reject_unknown_choice(index: int) -> None:
    """The pure helpers used to treat an unknown value as their else-branch (e.g. focal, linear)."""
    calls = _helper_calls()
    assert len(calls) == 14
    knob, call = calls[index]
    with pytest.raises(ConfigError, match=rf"{knob}.*'bogus'"):
        call("bogus")
