"""Entropy set-point controller (stage: controller): a PID loop on the rollout entropy that drives
the coefficient of any entropy regularizer.

Every step, before the update, the controller reads the mean token entropy of the rollout batch
(``ctx.old_entropy``, full vocabulary, T-scaled) and moves the coefficient ``c`` of the bound
regularizer toward the entropy target ``H*``:

    e_t = H* - H_t
    I_t = clip(I_{t-1} + e_t, -i_max, i_max)
    c_t = clip(c_0 + kp * e_t + ki * I_t + kd * (e_t - e_{t-1}), c_min, c_max)

so entropy below target raises the bonus and entropy above target lowers it (to 0 at most with
the default ``c_min``). The first step has no derivative term. This generalises the bang-bang
adaptive coefficient of Skywork-OR1 / TRL (``c += delta`` if ``H <= H*`` else ``c -= delta``) and
SIREN's ``naive_entropy_reg_adaptive`` (an integral-only loop) to a full PID; it is rlvr's own
controller, not a published method, and the gains must be tuned per setting.

The regularizer is found by name (``regularizer`` knob) when the trainer binds the pipeline; its
coefficient is its ``coef`` attribute (class methods such as ``siren``) or its bound ``coef`` knob
(function methods such as ``entropy_bonus``).
"""

from __future__ import annotations

import functools
from typing import Any

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import controller
from rlvr.errors import ConfigError


@controller.register("entropy_pid", requires=("old_entropy",))
class EntropyPID:
    """PID controller holding the rollout entropy near ``target`` via a regularizer's coefficient."""

    def __init__(
        self,
        *,
        target: float,
        regularizer: str = "entropy_bonus",
        coef_init: float = 0.001,
        kp: float = 0.01,
        ki: float = 0.001,
        kd: float = 0.0,
        coef_min: float = 0.0,
        coef_max: float = 0.1,
        integral_max: float = 100.0,
    ) -> None:
        if coef_min > coef_max:
            raise ConfigError(f"controller 'entropy_pid': coef_min={coef_min} exceeds coef_max={coef_max}")
        self.target = target
        self.regularizer = regularizer
        self.coef_init = coef_init
        self.kp, self.ki, self.kd = kp, ki, kd
        self.coef_min, self.coef_max = coef_min, coef_max
        self.integral_max = integral_max
        self.integral = 0.0
        self.prev_error: float | None = None
        self.coef = coef_init
        self._target_fn: Any = None

    def bind(self, pipeline: Any) -> None:
        """Find the regularizer to drive and set its coefficient to ``coef_init``."""
        matches = [c for c in pipeline.regularizers if c.name == self.regularizer]
        if not matches:
            names = ", ".join(c.name for c in pipeline.regularizers) or "(none)"
            raise ConfigError(
                f"controller 'entropy_pid' drives regularizer '{self.regularizer}', which is not in "
                f"algo.regularizers (configured: {names}); add it or set the controller's regularizer knob"
            )
        self._target_fn = matches[0].fn
        self._set_coef(self.coef)

    def _set_coef(self, value: float) -> None:
        fn = self._target_fn
        if isinstance(fn, functools.partial):
            fn.keywords["coef"] = value
        elif hasattr(fn, "coef"):
            fn.coef = value
        else:
            raise ConfigError(f"regularizer '{self.regularizer}' has no 'coef' for entropy_pid to drive")

    def step(self, entropy: float) -> float:
        """One PID update from the measured mean entropy; returns the new coefficient."""
        error = self.target - entropy
        self.integral = max(-self.integral_max, min(self.integral_max, self.integral + error))
        derivative = 0.0 if self.prev_error is None else error - self.prev_error
        self.prev_error = error
        raw = self.coef_init + self.kp * error + self.ki * self.integral + self.kd * derivative
        self.coef = max(self.coef_min, min(self.coef_max, raw))
        return self.coef

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        ctx.require("old_entropy", who="controller 'entropy_pid'")
        assert ctx.old_entropy is not None
        entropy = float(masked_mean(ctx.old_entropy, ctx.response_mask))
        coef = self.step(entropy)
        if self._target_fn is not None:
            self._set_coef(coef)
        return {"entropy_pid/entropy": entropy, "entropy_pid/error": self.target - entropy, "entropy_pid/coef": coef}

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "prev_error": self.prev_error, "coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.integral = float(state.get("integral", 0.0))
        self.prev_error = state.get("prev_error")
        self.coef = float(state.get("coef", self.coef_init))
        if self._target_fn is not None:
            self._set_coef(self.coef)
