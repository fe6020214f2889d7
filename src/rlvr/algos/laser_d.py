"""LASER-D: dynamic, difficulty-aware target lengths for the LASER reward (stage: reward), arXiv 2505.15612.

Code: hkust-nlp/Laser ``length_penalty.compute_length_reward_larse_d`` / ``_choose_target_length``,
``count_length_distribution.count_accuracy_bands_metrics`` and ``ray_trainer.fit`` (monitor).

**Reward.** Each prompt's difficulty bucket comes from its group accuracy ``k/n`` in the current
batch: ``high`` if ``k/n >= 2/3`` (easy), ``medium`` if ``1/3 <= k/n < 2/3``, else ``low``. A
correct response with ``L <= L_T(bucket)`` gets ``+alpha`` (``mode="reward"``; ``penalty`` /
``hybrid`` as in :mod:`rlvr.algos.laser`).

**Targets.** From a set of rollouts, prompts are bucketed (monitor convention: ``k/n <= 1/3`` low,
``<= 2/3`` medium, else high; note the different boundaries, as in the code). For each bucket and
threshold ``l`` in ``range(lower_bound, upper_bound + interval, interval)``,
``cov(l)`` = fraction of *all* that bucket's responses (correct or not) with ``L <= l``. The
bucket's target is the smallest ``l`` with ``floor(cov(l) * n_lower) >= expected_n_correct``,
``n_lower = floor(2n/3)`` (high), ``floor(n/3)`` (medium), 1 (low) (``round_method="ceil"``: ceil
and no flooring of the product). No qualifying ``l`` (or an empty bucket): the maximum response
length (= no length pressure).

**Deviation (documented on purpose).** The official trainer rolls out a fixed *monitor set* (500
training prompts, same ``n``) before training and then every ``monitor_freq = 20`` steps after
the update. Our trainer has no monitor-set rollout hook, so the coverage statistics are computed
from **the training batch's own responses**: in ``prepare(ctx)`` (once per step, after the
shapers ran) on the steps with ``step % monitor_freq == 0``. Consequences: the statistics come from
``prompts_per_step`` prompts instead of 500 (noisier), and new targets take effect from the next
step's reward (one step later than the official timing). Before any statistics exist (the first
call), the targets are computed from the current batch itself (the analogue of the official
pre-training monitor run) unless ``target_length`` is set, in which case every bucket uses it
(the official fallback when no monitor metrics exist). ``monitor_freq = 0`` never refreshes.
The targets are saved by ``state_dict`` so they survive a checkpoint.

Scale knobs default relative to ``L = max_response_length``: ``upper_bound = L``,
``lower_bound = L // 4``, ``interval = L // 16``, which are the paper's 16384 / 4096 / 1024.
``n_rollout=None`` uses the largest group size of the batch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_count, group_sum
from rlvr.algos.laser import LASER_MODES, LaserMode, laser_term
from rlvr.algos.registry import reward
from rlvr.algos.shaping import (
    RewardShaper,
    check_choice,
    check_positive,
    correct_mask,
    float_rewards,
    fraction,
    group_ids_of,
    max_length,
    mean_of,
)
from rlvr.errors import ConfigError

BUCKETS = ("low", "medium", "high")
RoundMethod = Literal["floor", "ceil"]
ROUND_METHODS: tuple[str, ...] = get_args(RoundMethod)


def reward_buckets(correct: Tensor, group_ids: Tensor) -> list[str]:
    """Per-response bucket of the reward rule: high ``k/n >= 2/3``, medium ``>= 1/3``, else low."""
    k = group_sum(correct.to(torch.float64), group_ids).round().long().tolist()
    n = group_count(group_ids).round().long().tolist()
    return ["high" if 3 * ki >= 2 * ni else "medium" if 3 * ki >= ni else "low" for ki, ni in zip(k, n)]


def monitor_buckets(correct: Tensor, group_ids: Tensor) -> list[str]:
    """Per-response bucket of the monitor statistics: low ``k/n <= 1/3``, medium ``<= 2/3``, else high."""
    k = group_sum(correct.to(torch.float64), group_ids).round().long().tolist()
    n = group_count(group_ids).round().long().tolist()
    return ["low" if 3 * ki <= ni else "medium" if 3 * ki <= 2 * ni else "high" for ki, ni in zip(k, n)]


def lower_n(bucket: str, n_rollout: int, round_method: RoundMethod) -> int:
    """``n_lower``: floor/ceil of ``2n/3`` (high), of ``n/3`` (medium), 1 (low)."""
    check_choice("reward 'laser_d'", "round_method", round_method, ROUND_METHODS)
    if bucket == "low":
        return 1
    num = 2 * n_rollout if bucket == "high" else n_rollout
    return num // 3 if round_method == "floor" else -(-num // 3)


def choose_targets(
    lengths: list[int],
    buckets: list[str],
    thresholds: list[int],
    n_rollout: int,
    max_response_length: int,
    expected_n_correct: int = 1,
    round_method: RoundMethod = "floor",
) -> dict[str, int]:
    """Target length per bucket from the coverage of its responses' lengths (see the module docstring).

    Exact integer arithmetic: with ``c`` of the bucket's ``N`` responses at most ``l`` long,
    ``floor(c/N * n_lower) = (c * n_lower) // N`` (floor) and ``c/N * n_lower >= e`` iff
    ``c * n_lower >= e * N`` (ceil).
    """
    targets: dict[str, int] = {}
    for bucket in BUCKETS:
        own = [length for length, b in zip(lengths, buckets) if b == bucket]
        target = max_response_length
        need = lower_n(bucket, n_rollout, round_method)
        for threshold in sorted(thresholds) if own else []:
            covered = sum(1 for length in own if length <= threshold)
            if round_method == "floor":
                ok = (covered * need) // len(own) >= expected_n_correct
            else:
                ok = covered * need >= expected_n_correct * len(own)
            if ok:
                target = min(target, threshold)
                break
        targets[bucket] = target
    return targets


@reward.register("laser_d", requires=("rewards", "correct", "group_ids"))
class LaserD(RewardShaper):
    """LASER-D (arXiv 2505.15612): ``+alpha`` for correct responses within their bucket's target.

    Knobs: ``alpha`` (0.5), ``mode`` (reward | penalty | hybrid), ``monitor_freq`` (20; 0 = never
    refresh), ``lower_bound`` / ``upper_bound`` / ``interval`` (None = L//4, L, L//16 of the
    max response length L), ``expected_n_correct`` (1), ``n_rollout`` (None = largest group),
    ``round_method`` (floor | ceil), ``target_length`` (None = bootstrap the first targets from the
    first batch; else the initial target of every bucket). State: the bucket targets and the step
    they were computed at. See the module docstring for the monitor-set deviation.
    """

    name = "laser_d"

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        mode: LaserMode = "reward",
        monitor_freq: int = 20,
        lower_bound: int | None = None,
        upper_bound: int | None = None,
        interval: int | None = None,
        expected_n_correct: int = 1,
        n_rollout: int | None = None,
        round_method: RoundMethod = "floor",
        target_length: int | None = None,
    ) -> None:
        super().__init__()
        check_choice(self.who(), "mode", mode, LASER_MODES)
        check_choice(self.who(), "round_method", round_method, ROUND_METHODS)
        check_positive(
            self.who(),
            lower_bound=lower_bound,
            upper_bound=upper_bound,
            interval=interval,
            n_rollout=n_rollout,
            target_length=target_length,
        )
        if monitor_freq < 0:
            raise ConfigError(f"{self.who()}: monitor_freq must be >= 0, got {monitor_freq}")
        self.alpha = float(alpha)
        self.mode = mode
        self.monitor_freq = int(monitor_freq)
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.interval = interval
        self.expected_n_correct = int(expected_n_correct)
        self.n_rollout = n_rollout
        self.round_method = round_method
        self.target_length = target_length
        self.targets: dict[str, int] | None = None
        self.monitor_step: int | None = None

    # -- targets ----------------------------------------------------------------------------------

    def thresholds(self, ctx: AlgoContext) -> list[int]:
        top = max_length(ctx)
        upper = self.upper_bound if self.upper_bound is not None else top
        lower = self.lower_bound if self.lower_bound is not None else max(1, top // 4)
        step = self.interval if self.interval is not None else max(1, top // 16)
        return list(range(int(lower), int(upper) + int(step), int(step)))

    def monitor(self, ctx: AlgoContext) -> dict[str, int]:
        """Bucket targets from this batch's lengths and group accuracies (the monitor statistics)."""
        correct = correct_mask(ctx, self.who())
        group_ids = group_ids_of(ctx, self.who())
        n_rollout = self.n_rollout or int(group_count(group_ids).max().item())
        return choose_targets(
            [int(v) for v in ctx.lengths.tolist()],
            monitor_buckets(correct, group_ids),
            self.thresholds(ctx),
            n_rollout,
            max_length(ctx),
            self.expected_n_correct,
            self.round_method,
        )

    def _refresh(self, ctx: AlgoContext) -> None:
        self.targets = self.monitor(ctx)
        self.monitor_step = int(ctx.step)

    def _ensure_targets(self, ctx: AlgoContext) -> dict[str, int]:
        if self.targets is None:
            if self.target_length is not None:
                self.targets = {bucket: int(self.target_length) for bucket in BUCKETS}
            else:
                self._refresh(ctx)
        assert self.targets is not None
        return self.targets

    # -- reward -----------------------------------------------------------------------------------

    def response_targets(self, ctx: AlgoContext) -> tuple[Tensor, list[str]]:
        """Per-response target ``L_T(bucket_i)`` (float64) and the reward buckets."""
        targets = self._ensure_targets(ctx)
        buckets = reward_buckets(correct_mask(ctx, self.who()), group_ids_of(ctx, self.who()))
        return torch.tensor([float(targets[b]) for b in buckets], dtype=torch.float64, device=ctx.response_mask.device), buckets

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        target, _ = self.response_targets(ctx)
        term = laser_term(ctx.lengths, correct_mask(ctx, self.who()), target, self.alpha, self.mode)
        metrics = {
            "frac_rewarded": fraction(term > 0),
            "frac_penalised": fraction(term < 0),
            "mean_term": mean_of(term),
            "mean_target": mean_of(target),
        }
        return rewards + term.to(rewards.dtype), metrics

    # -- per-step hook and state ------------------------------------------------------------------

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Shaping metrics of this step, after refreshing the targets on monitor steps."""
        metrics = super().prepare(ctx)
        due = self.monitor_freq > 0 and ctx.step % self.monitor_freq == 0
        refreshed = (self.targets is None or due) and self.monitor_step != ctx.step
        if refreshed:
            self._refresh(ctx)
        metrics[f"{self.name}/monitored"] = float(refreshed)
        for bucket, value in (self.targets or {}).items():
            metrics[f"{self.name}/target_{bucket}"] = float(value)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"targets": dict(self.targets) if self.targets is not None else None, "monitor_step": self.monitor_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        targets = state.get("targets")
        self.targets = {str(k): int(v) for k, v in targets.items()} if targets is not None else None
        step = state.get("monitor_step")
        self.monitor_step = int(step) if step is not None else None
