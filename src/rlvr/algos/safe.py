"""SAFE: entropy-gated KL penalty with a PID- and phase-driven threshold (stage: regularizer), without the critic.

Official code: ryyzn9/SAFE ``safe/controllers/entropy_aware.py`` (``EntropyAwarePredictiveController``),
``safe/controllers/pid.py`` (``PIDController``, ``PhaseDetector``), ``safe/trainers/safe.py``
(``SAFETrainer.train_step``), ``safe/trainers/base.py`` (rollout entropy and KL), ``safe/config.py``
(``SAFEConfig`` defaults). No arXiv id is given in the repository. The released method is RLHF PPO
with a Double Soft-Min critic; only the KL controller is ported here (rlvr has no critic).

Once per step, from the rollout batch (``prepare``), with ``r`` the batch mean reward:

* **PID on the reward velocity** (``PIDController.update``): the first call only sets the EMA and
  returns ``u = 0``; afterwards ``r_ema <- 0.95 r_ema + 0.05 r``, ``e = (r_ema_new - r_ema_old) - 0.001``,
  ``I = clip(I + e, -1, 1)``, ``u = kp e + ki I + kd (e - e_prev)`` (``e_prev`` starts at 0).
* **Phase** (``PhaseDetector``, on the reward history, windows of 50): fewer than 50 rewards:
  warm-up (x1.5); else with ``recent`` = the last 50 and ``old`` = the 50 before (``recent`` itself
  while there are fewer than 100): climbing if ``mean(recent) > mean(old) + 0.01`` (x1.2), converged if
  ``std(recent) < 0.02`` (population) and ``mean(recent) > 0.7`` (x1.0), else plateau (x0.8).
* **Threshold** ``tau = clip((base_threshold + u) * phase, 0.1, 0.6)``.
* **KL trackers**: ``KL_s <- 0.9 KL_s + 0.1 KL``, ``KL_l <- 0.99 KL_l + 0.01 KL`` (``KL_l`` is logged
  only), with ``KL`` the rollout policy's token-mean KL estimate to the reference.
* **Entropy gate** ``w = max(0.5, entropy_floor / (H + 0.1))``, ``H`` the rollout entropy
  (mean over responses of the per-response token mean, as ``base.py``).

Per micro-batch, the penalty (official ``0.1 (KL_s - tau)^2 w`` when ``KL_s > tau``, else 0)::

    KL_s(theta) = 0.9 * KL_s_before + 0.1 * KL(theta)       KL(theta): token mean of the estimate over the micro-batch
    P = coef * max(0, KL_s(theta) - tau)^2 * w * f          f = ctx.micro_batch_fraction

**Deviations, each deliberate.** (1) The released trainer passes ``kl.item()``, so its penalty is a
Python float with no gradient; here ``KL(theta)`` keeps its gradient (the methods' evident intent).
At the start of the update ``KL(theta)`` is the rollout KL, so ``KL_s(theta)`` equals the tracker's
value after this step's update. (2) The official controller is called once per PPO epoch (its
trackers and PID move twice per batch with the default 2 epochs); here once per step. (3) The
penalty is non-linear in the batch KL, so it is computed per micro-batch and weighted by the
micro-batch's share of rows (as SIREN's anchor penalty); the official trainer has no micro-batches.
(4) ``estimator`` picks the KL estimate (official ``"k1"``: ``log pi - log pi_ref``; see
:func:`rlvr.algos.kl.kl_estimate`). The official loss's ``- c_H H`` entropy term is the separate
``entropy_bonus`` regularizer (``entropy_coef = 0.01`` in ``S3KLQConfig``), and its preview-KL step
scaling (``max_preview_kl``) is defined but never called in ``SAFETrainer``, so neither is here.

Defaults are ``SAFEConfig``'s. Metrics: ``safe/threshold``, ``safe/kl_short``, ``safe/kl_long``,
``safe/entropy_factor``, ``safe/pid``, ``safe/phase`` (0 warm-up, 1 climbing, 2 plateau,
3 converged), ``safe/penalty``, ``safe/active``. State (checkpointed): trackers, PID, reward history.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.kl import KL_KINDS, KlKind, kl_estimate
from rlvr.algos.registry import regularizer
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError

PHASES = ("WARMUP", "CLIMBING", "PLATEAU", "CONVERGED")
PHASE_MULTIPLIER = {"WARMUP": 1.5, "CLIMBING": 1.2, "PLATEAU": 0.8, "CONVERGED": 1.0}


class SafePID:
    """The reward-velocity PID of ``safe/controllers/pid.py`` (first call: sets the EMA, returns 0)."""

    def __init__(self, kp: float, ki: float, kd: float, ema: float, target_velocity: float, integral_max: float) -> None:
        self.kp, self.ki, self.kd = kp, ki, kd
        self.ema, self.target_velocity, self.integral_max = ema, target_velocity, integral_max
        self.integral = 0.0
        self.prev_error = 0.0
        self.reward_ema: float | None = None

    def update(self, reward: float) -> float:
        if self.reward_ema is None:
            self.reward_ema = reward
            return 0.0
        old = self.reward_ema
        self.reward_ema = self.ema * old + (1.0 - self.ema) * reward
        error = (self.reward_ema - old) - self.target_velocity
        self.integral = max(-self.integral_max, min(self.integral_max, self.integral + error))
        out = self.kp * error + self.ki * self.integral + self.kd * (error - self.prev_error)
        self.prev_error = error
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "prev_error": self.prev_error, "reward_ema": self.reward_ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.integral = float(state.get("integral", 0.0))
        self.prev_error = float(state.get("prev_error", 0.0))
        ema = state.get("reward_ema")
        self.reward_ema = None if ema is None else float(ema)


def detect_phase(history: list[float], window: int = 50) -> str:
    """``PhaseDetector.update``'s phase for a reward history (oldest first)."""
    if len(history) < window:
        return "WARMUP"
    recent = history[-window:]
    old = history[-2 * window : -window] if len(history) >= 2 * window else recent
    recent_mean = sum(recent) / len(recent)
    old_mean = sum(old) / len(old)
    std = math.sqrt(sum((x - recent_mean) ** 2 for x in recent) / len(recent))
    if recent_mean > old_mean + 0.01:
        return "CLIMBING"
    if std < 0.02 and recent_mean > 0.7:
        return "CONVERGED"
    return "PLATEAU"


def entropy_factor(entropy: float, floor: float) -> float:
    """The entropy gate ``max(0.5, floor / (H + 0.1))``: low entropy amplifies the penalty."""
    return max(0.5, floor / (entropy + 0.1))


@regularizer.register("safe_kl", requires=("logprobs", "ref_logprobs", "old_logprobs", "old_entropy", "rewards"))
class SafeKL:
    """SAFE (ryyzn9/SAFE): ``coef * max(0, KL_s - tau)^2 * max(0.5, 2 / (H + 0.1))`` with a PID/phase threshold ``tau``.

    Knobs (``SAFEConfig`` defaults): ``coef`` (0.1), ``base_threshold`` (0.3), ``threshold_min`` /
    ``threshold_max`` (0.1 / 0.6), ``entropy_floor`` (2.0), ``kl_decay`` (0.9), ``kp`` / ``ki`` /
    ``kd`` (0.3 / 0.01 / 0.05), ``reward_ema`` (0.95), ``target_velocity`` (0.001), ``integral_max``
    (1.0), ``phase_window`` (50), ``estimator`` (k1). The KL keeps its gradient (the released code's
    does not).
    """

    name = "safe_kl"

    def __init__(
        self,
        *,
        coef: float = 0.1,
        base_threshold: float = 0.3,
        threshold_min: float = 0.1,
        threshold_max: float = 0.6,
        entropy_floor: float = 2.0,
        kl_decay: float = 0.9,
        kp: float = 0.3,
        ki: float = 0.01,
        kd: float = 0.05,
        reward_ema: float = 0.95,
        target_velocity: float = 0.001,
        integral_max: float = 1.0,
        phase_window: int = 50,
        estimator: KlKind = "k1",
    ) -> None:
        who = f"regularizer '{self.name}'"
        check_positive(who, phase_window=phase_window)
        check_choice(who, "estimator", estimator, tuple(KL_KINDS))
        if threshold_min > threshold_max:
            raise ConfigError(f"{who}: threshold_min={threshold_min} exceeds threshold_max={threshold_max}")
        for key, value in (("kl_decay", kl_decay), ("reward_ema", reward_ema)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{who}: {key} must be in [0, 1], got {value}")
        self.coef = float(coef)
        self.base_threshold = float(base_threshold)
        self.threshold_min, self.threshold_max = float(threshold_min), float(threshold_max)
        self.entropy_floor = float(entropy_floor)
        self.kl_decay = float(kl_decay)
        self.phase_window = int(phase_window)
        self.estimator = estimator
        self.pid = SafePID(kp, ki, kd, reward_ema, target_velocity, integral_max)
        self.kl_short = 0.0
        self.kl_long = 0.0
        self.kl_before = 0.0
        self.history: list[float] = []
        self.phase = "WARMUP"
        self.threshold = self.threshold_max
        self.factor = 1.0
        self.pid_out = 0.0

    def batch_kl(self, ctx: AlgoContext, logprobs: torch.Tensor) -> torch.Tensor:
        """Token mean over the context's valid tokens of the KL estimate of ``logprobs`` to the reference."""
        assert ctx.ref_logprobs is not None
        valid = ctx.response_mask > 0
        lp = torch.where(valid, logprobs, torch.zeros_like(logprobs))
        ref = torch.where(valid, ctx.ref_logprobs.detach().to(lp.dtype), torch.zeros_like(lp))
        return masked_mean(kl_estimate(lp, ref, self.estimator), ctx.response_mask.to(lp.dtype))

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """One controller update from the rollout batch: trackers, PID, phase, threshold, entropy gate."""
        who = f"regularizer '{self.name}'"
        ctx.require("old_logprobs", "ref_logprobs", "old_entropy", "rewards", who=who)
        assert ctx.old_logprobs is not None and ctx.old_entropy is not None and ctx.rewards is not None
        mask = ctx.response_mask
        kl = float(self.batch_kl(ctx, ctx.old_logprobs.detach()))
        entropy_rows = masked_mean(torch.nan_to_num(ctx.old_entropy.detach()), mask, dim=-1)
        entropy = float(entropy_rows.mean()) if ctx.batch_size else 0.0
        reward = float(ctx.rewards.detach().double().mean()) if ctx.rewards.numel() else 0.0
        self.kl_before = self.kl_short
        self.kl_short = self.kl_decay * self.kl_short + (1.0 - self.kl_decay) * kl
        self.kl_long = 0.99 * self.kl_long + 0.01 * kl
        self.history = (self.history + [reward])[-2 * self.phase_window :]
        self.phase = detect_phase(self.history, self.phase_window)
        self.pid_out = self.pid.update(reward)
        raw = (self.base_threshold + self.pid_out) * PHASE_MULTIPLIER[self.phase]
        self.threshold = max(self.threshold_min, min(self.threshold_max, raw))
        self.factor = entropy_factor(entropy, self.entropy_floor)
        return {
            f"{self.name}/threshold": self.threshold,
            f"{self.name}/kl_short": self.kl_short,
            f"{self.name}/kl_long": self.kl_long,
            f"{self.name}/entropy_factor": self.factor,
            f"{self.name}/pid": self.pid_out,
            f"{self.name}/phase": float(PHASES.index(self.phase)),
            f"{self.name}/active": float(self.kl_short > self.threshold),
        }

    def __call__(self, ctx: AlgoContext) -> RegularizerOutput:
        ctx.require("logprobs", "ref_logprobs", who=f"regularizer '{self.name}'")
        assert ctx.logprobs is not None
        kl_short = self.kl_decay * self.kl_before + (1.0 - self.kl_decay) * self.batch_kl(ctx, ctx.logprobs)
        excess = torch.clamp(kl_short - self.threshold, min=0.0)
        loss = self.coef * excess.square() * self.factor * float(ctx.micro_batch_fraction)
        return RegularizerOutput(loss=loss, metrics={f"{self.name}/penalty": float(loss.detach())})

    def state_dict(self) -> dict[str, Any]:
        return {
            "kl_short": self.kl_short,
            "kl_long": self.kl_long,
            "kl_before": self.kl_before,
            "history": list(self.history),
            "phase": self.phase,
            "threshold": self.threshold,
            "factor": self.factor,
            "pid": self.pid.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_short = float(state.get("kl_short", 0.0))
        self.kl_long = float(state.get("kl_long", 0.0))
        self.kl_before = float(state.get("kl_before", 0.0))
        self.history = [float(x) for x in state.get("history", [])]
        self.phase = str(state.get("phase", "WARMUP"))
        self.threshold = float(state.get("threshold", self.threshold_max))
        self.factor = float(state.get("factor", 1.0))
        self.pid.load_state_dict(state.get("pid", {}))
