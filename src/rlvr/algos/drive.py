"""DRIVE: two-stage rollout-budget curriculum with a hard-focus set (controller ``drive``), arXiv 2511.06307.

**Partly inferred.** No code was released (model cards tencent/DRIVE-SFT, tencent/DRIVE-RL only);
sourced from the abstract and the model card: after SFT, RL runs in two stages with test-case
rewards. **Stage 1 (entropy expansion)**: a large, uniformly distributed problem set, GRPO with 8
rollouts per prompt and a **shorter response window** than the SFT's (24k vs 32k tokens), to expand
entropy and reduce repetition and truncation. **Stage 2 (Pre-GRPO, hard-focus curriculum)**: a
small set of challenging problems, **64 rollouts per prompt**, under a curriculum that keeps the
hardest instances throughout training. Our reconstruction [INFERENCE]:

* Stage 1 = steps ``0 .. switch_step - 1``: the task's problems as configured (``rollout.group_size``
  responses each, ``rollout.prompts_per_step`` prompts), at most
  ``max(1, floor(stage1_length * rollout.max_new_tokens))`` new tokens (``stage1_length = 0.75`` =
  24k / 32k). Stage 2 samples the full ``rollout.max_new_tokens``.
* The hard set, fixed at the switch from the per-prompt history (each visit's accuracy, the group's
  pass rate; :class:`rlvr.train.history.PromptHistory`): the prompts whose mean stage-1 pass rate is
  ``<= hard_max_pass_rate``, hardest first (ties in first-seen order), at most ``hard_set_size``
  (at least ``min_hard``, the lowest-rated, when fewer qualify).
* Stage 2 draws ``stage2_group_size`` responses per prompt for ``rows / stage2_group_size``
  prompts, where ``rows = prompts_per_step * group_size`` stays that of stage 1 (the update's batch
  shape is unchanged; the paper's stage-2 batch was not found). Prompts come from the hard set in
  **passes**, each a shuffled order of the current set (seeded by the run's seed and the pass
  number); when a pass is used up, the prompts whose latest pass rate is ``> drop_pass_rate`` are
  dropped (the hardest ``min_hard`` always stay) and a new pass starts. A set smaller than a step's
  prompts repeats within the step.
* DRIVE's difficulty-aware SFT (hard prompts duplicated) is the warm start's business and is not
  part of this controller.

**The trainer provides**: before each step's rollout it asks :meth:`Drive.rollout_plan` for the
stage's group size, response window and (stage 2) the prompt ids, given the run's prompt history
(``series(field)``, ``last(id, field)``), and serves those prompts from the history's stored
problems. It is refused with DAPO dynamic sampling and AEPO (which draw their own rows).

Metrics: ``drive/stage`` (1 or 2), ``drive/hard_set`` (prompts in the hard set), ``drive/passes``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import controller
from rlvr.algos.shaping import check_positive
from rlvr.errors import ConfigError, RLVRError


class PassRates(Protocol):
    """What DRIVE reads from the run's per-prompt history (rlvr.train.history.PromptHistory)."""

    def series(self, field: Any = "accuracy") -> dict[str, list[float]]: ...

    def last(self, prompt_id: str, field: Any = "accuracy") -> float | None: ...


@dataclass(frozen=True)
class StagePlan:
    """One step's rollout: ``group_size`` responses of at most ``max_new_tokens`` tokens for
    ``prompts`` prompts; ``prompt_ids`` are those prompts (stage 2), None to draw them from the task."""

    stage: int
    group_size: int
    max_new_tokens: int
    prompts: int
    prompt_ids: tuple[str, ...] | None = None


def hard_set(rates: dict[str, list[float]], max_pass_rate: float, size: int, min_keep: int) -> list[str]:
    """Prompts with mean pass rate ``<= max_pass_rate``, hardest first (stable), capped at ``size``, at least ``min_keep``."""
    means = {pid: sum(v) / len(v) for pid, v in rates.items() if len(v)}
    ranked = sorted(means, key=lambda pid: means[pid])  # stable: ties keep the first-seen order
    chosen = [pid for pid in ranked if means[pid] <= max_pass_rate]
    if len(chosen) < min_keep:
        chosen = ranked[:min_keep]
    return chosen[:size]


def prune(prompt_ids: Sequence[str], latest: dict[str, float | None], drop_above: float, min_keep: int) -> list[str]:
    """Drop prompts whose latest pass rate is ``> drop_above``; the ``min_keep`` hardest always stay (order kept)."""
    rate = {pid: (latest.get(pid) if latest.get(pid) is not None else 0.0) for pid in prompt_ids}
    kept = [pid for pid in prompt_ids if rate[pid] <= drop_above]
    if len(kept) < min_keep:
        hardest = set(sorted(prompt_ids, key=lambda pid: rate[pid])[:min_keep])
        kept = [pid for pid in prompt_ids if pid in hardest]
    return kept


@controller.register("drive")
class Drive:
    """DRIVE two-stage RL (arXiv 2511.06307, curriculum inferred): a shorter window first, then a pruned hard set with many rollouts.

    Knobs: ``switch_step`` (100), ``stage1_length`` (0.75 of rollout.max_new_tokens), ``stage2_group_size``
    (64), ``hard_max_pass_rate`` (0.5), ``hard_set_size`` (256), ``drop_pass_rate`` (0.75), ``min_hard`` (1).
    The trainer serves its plan (module docstring).
    """

    name = "drive"

    def __init__(
        self,
        *,
        switch_step: int = 100,
        stage1_length: float = 0.75,
        stage2_group_size: int = 64,
        hard_max_pass_rate: float = 0.5,
        hard_set_size: int = 256,
        drop_pass_rate: float = 0.75,
        min_hard: int = 1,
    ) -> None:
        who = f"controller '{self.name}'"
        check_positive(who, stage2_group_size=stage2_group_size, hard_set_size=hard_set_size, min_hard=min_hard)
        if switch_step < 1:
            raise ConfigError(
                f"{who}: switch_step must be >= 1 (stage 2's hard set comes from stage-1 pass rates), got {switch_step}"
            )
        if not 0.0 < stage1_length <= 1.0:
            raise ConfigError(f"{who}: stage1_length must be in (0, 1], got {stage1_length}")
        for knob, value in (("hard_max_pass_rate", hard_max_pass_rate), ("drop_pass_rate", drop_pass_rate)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{who}: {knob} must be in [0, 1], got {value}")
        self.switch_step = int(switch_step)
        self.stage1_length = float(stage1_length)
        self.stage2_group_size = int(stage2_group_size)
        self.hard_max_pass_rate = float(hard_max_pass_rate)
        self.hard_set_size = int(hard_set_size)
        self.drop_pass_rate = float(drop_pass_rate)
        self.min_hard = int(min_hard)
        self.group_size = self.prompts_per_step = self.max_new_tokens = 0
        self.seed = 0
        self.hard: list[str] = []
        self.queue: list[str] = []
        self.passes = 0
        self.stage = 1

    def configure(self, *, group_size: int, prompts_per_step: int, max_new_tokens: int, seed: int) -> None:
        """The run's rollout shape (stage 1); stage 2 keeps its rows, so ``stage2_group_size`` must divide them."""
        rows = group_size * prompts_per_step
        if rows % self.stage2_group_size:
            raise ConfigError(
                f"controller '{self.name}': stage2_group_size ({self.stage2_group_size}) must divide the step's rows "
                f"(rollout.prompts_per_step x rollout.group_size = {rows}): stage 2 keeps the batch shape"
            )
        self.group_size, self.prompts_per_step = group_size, prompts_per_step
        self.max_new_tokens, self.seed = max_new_tokens, seed

    def rollout_plan(self, step: int, history: PassRates) -> StagePlan:
        """The plan of step ``step`` (0-based); at the switch the hard set is built from ``history``."""
        if not self.group_size:
            raise RLVRError(f"controller '{self.name}': configure() was not called (the trainer does)")
        if step < self.switch_step:
            self.stage = 1
            window = max(1, math.floor(self.stage1_length * self.max_new_tokens))
            return StagePlan(1, self.group_size, window, self.prompts_per_step)
        if self.stage == 1:
            self.stage = 2
            self.hard = hard_set(history.series("accuracy"), self.hard_max_pass_rate, self.hard_set_size, self.min_hard)
            if not self.hard:
                raise RLVRError(f"controller '{self.name}': no stage-1 pass rates to build the hard set at step {step}")
            self.queue, self.passes = [], 0
        prompts = self.group_size * self.prompts_per_step // self.stage2_group_size
        chosen: list[str] = []
        while len(chosen) < prompts:
            if not self.queue:
                self._new_pass(history)
            chosen.append(self.queue.pop(0))
        return StagePlan(2, self.stage2_group_size, self.max_new_tokens, prompts, tuple(chosen))

    def _new_pass(self, history: PassRates) -> None:
        if self.passes:
            latest = {pid: history.last(pid, "accuracy") for pid in self.hard}
            self.hard = prune(self.hard, latest, self.drop_pass_rate, self.min_hard)
        self.passes += 1
        self.queue = list(self.hard)
        random.Random(f"drive:{self.seed}:{self.passes}").shuffle(self.queue)

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        return {
            f"{self.name}/stage": float(self.stage),
            f"{self.name}/hard_set": float(len(self.hard)),
            f"{self.name}/passes": float(self.passes),
        }

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "hard": list(self.hard), "queue": list(self.queue), "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state.get("stage", 1))
        self.hard = [str(p) for p in state.get("hard", [])]
        self.queue = [str(p) for p in state.get("queue", [])]
        self.passes = int(state.get("passes", 0))
