"""HAPO: History-Aware Policy Optimization length reward (stage: reward), arXiv 2505.11225.

Code: HCY123902/HAPO ``utils.compute_len_reward`` / ``compute_len_reward_linear`` and
``grpo_trainer.combined_reward_func`` / ``HistroyTracker``.

**State.** Per training prompt (keyed by the stable ``ctx.prompt_ids``), ``h_q`` = the minimum
length of any correct response seen so far (``update="min"``); unknown ("Null") until a first
correct response. ``update="mean"``: a running count-weighted mean of the correct lengths instead,
``h <- (k * mean_batch + n * h) / (n + k)`` with ``n`` the correct responses seen before and ``k``
those of this batch. rlvr keeps this mean exact (a float). The official history tensor is int64
(``utils.check_dataset_len_and_init_len_dict`` fills it with the integer ``MAX_LEN``, so
``torch.full`` infers ``torch.long``), so every official running-mean update is truncated to an
integer when written back; we read that as an artefact, not as part of the method.

**Cosine reward** (``variant="cosine"``, the default), with ``L`` the response length::

    r = 0                                    if h is Null
    r = cos(pi/2 * L / h)  if L < 2h,  -1 otherwise
    r = max(-0.7, r) if correct,  min(0, r) if wrong

**Linear reward** (``variant="linear"``, tolerance ``t = 0.1``): correct: ``1 - L/h`` if
``L < h``, 0 if ``h <= L < (1+t)h``, else ``max(-0.7, -(L - (1+t)h)/h)``; wrong: 0 if
``L < (1+t)h``, else ``max(-1, -(L - (1+t)h)/h)``.

Total: ``R = R_in + w_lr * r`` where ``R_in`` is ``ctx.rewards`` (HAPO's ``r_corr`` in {0, 1}; its
repetition penalty defaults to 0 and is not implemented). A history value ``h <= 0`` counts as Null,
as in the code.

**Timing.** Every response of the batch is scored with the history *before* this batch; then the
history is updated with the batch's correct lengths (inside ``__call__``, as the official reward
function does). ``state_dict()`` returns ``{"history": {prompt_id: h}, "counts": {prompt_id: n}}``
(plain str -> number dicts), so the history survives a checkpoint. The official tracker also
all-reduces the history with a min across data-parallel ranks; there is a single process here.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, check_choice, correct_mask, float_rewards, fraction, mean_of
from rlvr.errors import MissingInputError

HapoVariant = Literal["cosine", "linear"]
HapoUpdate = Literal["min", "mean"]
HAPO_VARIANTS: tuple[str, ...] = get_args(HapoVariant)
HAPO_UPDATES: tuple[str, ...] = get_args(HapoUpdate)
CORRECT_FLOOR = -0.7


def cosine_length_reward(length: float, history: float | None, correct: bool) -> float:
    """HAPO's cosine length reward ``r`` (before ``w_lr``)."""
    if history is None or history <= 0:
        return 0.0
    r = math.cos(math.pi / 2 * length / history) if length < 2 * history else -1.0
    return max(CORRECT_FLOOR, r) if correct else min(0.0, r)


def linear_length_reward(length: float, history: float | None, correct: bool, tolerance: float = 0.1) -> float:
    """HAPO's linear length reward ``r`` (before ``w_lr``)."""
    if history is None or history <= 0:
        return 0.0
    slack = (1.0 + tolerance) * history
    over = -(length - slack) / history
    if correct:
        if length < history:
            return 1.0 - length / history
        return 0.0 if length < slack else max(CORRECT_FLOOR, over)
    return 0.0 if length < slack else max(-1.0, over)


@reward.register("hapo", requires=("rewards", "correct", "prompt_ids"))
class Hapo(RewardShaper):
    """HAPO history-aware length reward ``R += w_lr * r(L, h_q)`` (arXiv 2505.11225).

    Knobs: ``variant`` (cosine | linear), ``w_lr`` (1.0), ``tolerance`` (0.1, linear only),
    ``update`` (min | mean). Metrics: ``history_size`` (prompts with a history), ``frac_with_history``
    (responses scored against a history), ``mean_term``, ``mean_history``.
    State: the per-prompt history (and counts for ``update="mean"``).
    """

    name = "hapo"

    def __init__(
        self,
        *,
        variant: HapoVariant = "cosine",
        w_lr: float = 1.0,
        tolerance: float = 0.1,
        update: HapoUpdate = "min",
    ) -> None:
        super().__init__()
        check_choice(self.who(), "variant", variant, HAPO_VARIANTS)
        check_choice(self.who(), "update", update, HAPO_UPDATES)
        self.variant = variant
        self.w_lr = float(w_lr)
        self.tolerance = float(tolerance)
        self.update = update
        self.history: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def length_reward(self, length: float, history: float | None, correct: bool) -> float:
        if self.variant == "cosine":
            return cosine_length_reward(length, history, correct)
        return linear_length_reward(length, history, correct, self.tolerance)

    def _prompt_ids(self, ctx: AlgoContext) -> list[str]:
        if ctx.prompt_ids is None or len(ctx.prompt_ids) != ctx.batch_size:
            raise MissingInputError(f"{self.who()} needs ctx.prompt_ids (one stable id per response)")
        return [str(pid) for pid in ctx.prompt_ids]

    def update_history(self, prompt_ids: list[str], lengths: list[float], correct: list[bool]) -> None:
        """Fold this batch's correct lengths into the per-prompt history."""
        found: dict[str, list[float]] = {}
        for pid, length, ok in zip(prompt_ids, lengths, correct):
            if ok:
                found.setdefault(pid, []).append(length)
        for pid, values in found.items():
            old = self.history.get(pid)
            if self.update == "min":
                self.history[pid] = min(values) if old is None else min(old, min(values))
            else:
                seen = self.counts.get(pid, 0)
                batch_mean = sum(values) / len(values)
                self.history[pid] = batch_mean if old is None or seen <= 0 else (
                    len(values) * batch_mean + seen * old
                ) / (seen + len(values))
                self.counts[pid] = seen + len(values)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        correct = correct_mask(ctx, self.who()).tolist()
        prompt_ids = self._prompt_ids(ctx)
        lengths = [float(v) for v in ctx.lengths.tolist()]
        known = [self.history.get(pid) for pid in prompt_ids]
        terms = torch.tensor(
            [self.w_lr * self.length_reward(L, h, ok) for L, h, ok in zip(lengths, known, correct)],
            dtype=torch.float64,
        )
        with_history = torch.tensor([h is not None and h > 0 for h in known], dtype=torch.bool)
        self.update_history(prompt_ids, lengths, correct)
        batch_history = [self.history[pid] for pid in dict.fromkeys(prompt_ids) if pid in self.history]
        metrics = {
            "history_size": float(len(self.history)),
            "frac_with_history": fraction(with_history),
            "mean_term": mean_of(terms),
            "mean_history": sum(batch_history) / len(batch_history) if batch_history else 0.0,
        }
        return rewards + terms.to(device=rewards.device, dtype=rewards.dtype), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {str(k): float(v) for k, v in (state.get("history") or {}).items()}
        self.counts = {str(k): int(v) for k, v in (state.get("counts") or {}).items()}
