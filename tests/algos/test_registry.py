"""Registry behaviour: register/get, errors, knob checking, built components."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rlvr.algos import REGISTRIES, AlgoContext, Component, Registry, advantage, policy_loss, regularizer
from rlvr.errors import ConfigError, UnknownNameError


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
