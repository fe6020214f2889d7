"""Entropy set-point PID controller: hand-computed updates, binding, clamping and state."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, controller, regularizer
from rlvr.errors import ConfigError


class _Pipeline:
    def __init__(self, regs):
        self.regularizers = regs


def test_pid_updates_by_hand_and_drives_a_function_regularizer():
    reg = regularizer.build("entropy_bonus", {"coef": 0.5})
    pid = controller.build(
        "entropy_pid", {"target": 1.0, "coef_init": 0.01, "kp": 0.1, "ki": 0.01, "kd": 0.05, "coef_max": 1.0}
    ).fn
    pid.bind(_Pipeline([reg]))
    assert reg.fn.keywords["coef"] == 0.01  # bind sets coef_init
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # step 1: H = (0.4 + 0.2)/2 = 0.3, e = 0.7, I = 0.7, no derivative
    #   c = 0.01 + 0.1*0.7 + 0.01*0.7 = 0.087
    out = pid.prepare(AlgoContext(response_mask=mask, old_entropy=torch.tensor([[0.4, 0.2, 9.0]])))
    assert out["entropy_pid/entropy"] == pytest.approx(0.3)
    assert pid.coef == pytest.approx(0.087) and reg.fn.keywords["coef"] == pytest.approx(0.087)
    # step 2: H = 1.5, e = -0.5, I = 0.2, de = -1.2
    #   c = 0.01 - 0.05 + 0.002 - 0.06 = -0.098 -> clamped to coef_min 0
    pid.prepare(AlgoContext(response_mask=mask, old_entropy=torch.tensor([[1.5, 1.5, 0.0]])))
    assert pid.coef == 0.0 and reg.fn.keywords["coef"] == 0.0
    ctx = AlgoContext(response_mask=mask, entropy=torch.tensor([[1.0, 1.0, 0.0]]))
    assert reg(ctx).loss.item() == 0.0


def test_pid_drives_a_class_regularizer_and_restores_state():
    siren = regularizer.build("siren", {})
    pid = controller.build("entropy_pid", {"target": 2.0, "regularizer": "siren", "kp": 0.01, "ki": 0.0}).fn
    pid.bind(_Pipeline([siren]))
    pid.prepare(AlgoContext(response_mask=torch.ones(1, 2), old_entropy=torch.ones(1, 2)))
    # e = 1.0 -> c = 0.001 + 0.01 = 0.011
    assert siren.fn.coef == pytest.approx(0.011)
    state = pid.state_dict()
    fresh = controller.build("entropy_pid", {"target": 2.0, "regularizer": "siren"}).fn
    fresh.bind(_Pipeline([siren]))
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and siren.fn.coef == pytest.approx(0.011)


def test_pid_needs_its_regularizer_in_the_pipeline():
    pid = controller.build("entropy_pid", {"target": 1.0}).fn
    with pytest.raises(ConfigError, match="not in algo.regularizers"):
        pid.bind(_Pipeline([]))
