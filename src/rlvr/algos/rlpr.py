"""RLPR: the reference answer's probability as the reward, debiased, and the reward-std filter (stages: reward, token_weight), arXiv 2506.18254.

Official code: OpenBMB/RLPR@8490fca, ``verl/workers/reward_manager/prob.py`` (``ProbRewardManager``,
``compute_scoreB``, ``format_reward``), ``verl/trainer/ppo/ray_trainer.py`` (``replace_answer_with_gt_batch``,
``get_scoreA``, ``compute_promptgt2scoreA``, ``filter``, the EMA std filter in ``fit``),
``verl/utils/reward_score/repetition.py``, recipe ``examples/RLPR/reproduce_qwen.sh``.

**Reward** (``rlpr``), verifier-free. The reference answer ``y*`` is spliced after each response's
reasoning (:func:`rlvr.ops.splice.splice_response`; R1 format by default) and one no-grad forward of
the rollout policy gives ``log pi(y*_j | q, z, y*_<j)`` (``ctx.extras["reference_answer_logprobs"]``)::

    s_B = mean_j pi(y*_j | q, z, y*_<j)           (score="mean_prob", the official mean_exp_log_softmax)
    s_A = the same with y* right after the prompt  (no reasoning; debias)
    r   = (1 - c_f) * shaped(s_B - s_A) + c_f * format        (c_f = format_coef = 0.1)
    r  += -1   if a 10-word window repeats >= 10 times and r != 0   (repetition_penalty)

``shaped`` is ``threshold_0`` (``x < threshold -> 0``, else ``x``; threshold 0) or the identity. Other
scores: ``mean_logprob`` (mean_log_softmax), ``prob`` (exp_sum_log_softmax, the sequence
probability), ``geo_mean_prob`` (exp_mean_log_softmax). ``format`` is the official R1 format reward
(each of ``<think> </think> <answer> </answer>`` once, ``<think>.*</think>.*<answer>.*</answer>.*``);
a response that is not well-formed for the splice scores ``s_B = 0`` (the official zeroes its answer
mask). The penalty is added where the reward is non-zero, as the official's add over the reward's
non-zero entries (a response with reward exactly 0 is not penalised); words are split on whitespace,
then on ``_``.

Debiasing ``s_A`` (``debias``): the official computes it once before training over the whole training
set with the initial policy. rlvr's trainer has no pass over the training set, so ``first_visit``
(default) keeps, per prompt id, the value from the prompt's first rollout (a no-grad forward of the
rollout policy of that step: the initial policy for the prompts of step 1; checkpointed);
``current`` uses this step's value; ``none`` sets ``s_A = 0``. The official rounds ``s_B`` to bfloat16;
rlvr keeps float64. Not offered: the sigmoid / leaky / binned shapers, ``format_coefficient = -1`` and
the ``pr+vr`` mix.

**Std filter** (``rlpr_std_filter``, a token weight; official ``filter_mode=EMA``,
``filter_target=final_reward_std``): with ``sigma_g`` the standard deviation (unbiased; 1 for a group of
one, as verl's GRPO) of group ``g``'s final rewards, keep the groups with ``sigma_g >= beta * sigma_EMA``
(``beta = std_filter_beta = 0.5``). From step ``ema_start_step`` (6) on, each step's mean group std is
recorded (before filtering); at step ``start_step`` (11) ``sigma_EMA`` starts as the mean of the recorded
step means, then each step ``sigma_EMA <- ema_ratio * sigma_EMA + (1 - ema_ratio) * mean_of_last_step``
(``ema_ratio = filter_ema_ratio = 0.99``); no filtering before ``start_step``. Steps count from 1 as the
official's ``global_steps``. The official upper bound (``accuracy_upper_bound = 1e6``) never acts and is
not offered.

*Seam (differs from the official):* the official drops the filtered groups at rollout time and samples
more prompts (plus a cache) until the batch is full. That needs the shaped reward, hence the splice
forward, inside the rollout loop. Here the decision is made after the reward and advantage stages, on
the whole batch (``prepare``): the dropped groups' tokens get ``loss_mask = 0``. This token selection
reads no current-policy quantity, so it also leaves the loss denominators, as if the rows were removed.
The step then trains on fewer groups (no refill). Step metrics and regularizers still see every row.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput, kept_rows_mask
from rlvr.algos.groups import group_index, group_std
from rlvr.algos.logprob_reward import COMBINES, Combine, answer_likelihood, extras_with_mask
from rlvr.algos.registry import reward, token_weight
from rlvr.algos.shaping import RewardShaper, check_choice, float_rewards, response_texts
from rlvr.errors import ConfigError, MissingInputError
from rlvr.ops.forward import REFERENCES, Reference, ReferenceAnswerBaselineLogProbs, ReferenceAnswerLogProbs
from rlvr.ops.splice import SPLICE_FORMATS, SpliceFormat, format_score

RlprScore = Literal["mean_prob", "mean_logprob", "prob", "geo_mean_prob"]
RLPR_SCORES: tuple[str, ...] = get_args(RlprScore)
Shaping = Literal["threshold", "identity"]
SHAPINGS: tuple[str, ...] = get_args(Shaping)
Debias = Literal["first_visit", "current", "none"]
DEBIASES: tuple[str, ...] = get_args(Debias)


def answer_score(logprobs: Tensor, mask: Tensor, score: RlprScore) -> Tensor:
    """Per row, ``(B,)`` float64: the ``score`` of the masked answer log-probs; 0 for a row without answer tokens
    (the official ``compute_scoreB``)."""
    check_choice("reward 'rlpr'", "score", score, RLPR_SCORES)
    if score == "geo_mean_prob":
        value = answer_likelihood(logprobs, mask, "mean_logprob").exp()
    else:
        value = answer_likelihood(logprobs, mask, score)
    return torch.where((mask > 0).any(-1), value, torch.zeros_like(value))


def shape_delta(delta: Tensor, shaping: Shaping, threshold: float) -> Tensor:
    """``threshold``: ``0`` where ``delta < threshold``, else ``delta`` (official ``threshold_<t>``); ``identity``."""
    if shaping == "identity":
        return delta
    return torch.where(delta < threshold, torch.zeros_like(delta), delta)


def rlpr_reward(score_b: Tensor, score_a: Tensor, fmt: Tensor, *, shaping: Shaping, threshold: float, format_coef: float) -> Tensor:
    """``(1 - c_f) * shaped(s_B - s_A) + c_f * format`` (``ProbRewardManager.__call__``)."""
    return (1.0 - format_coef) * shape_delta(score_b - score_a, shaping, threshold) + format_coef * fmt


def words_of(text: str) -> list[str]:
    """``text`` split on whitespace, then each piece on ``_`` (the official ``detect_repetition_with_hash``)."""
    return [word for piece in text.split() for word in piece.split("_")]


def repetition_penalty(text: str, window: int = 10, limit: int = 10) -> float:
    """``-1`` when some ``window``-word window occurs ``limit`` or more times in ``text``, else 0."""
    words = words_of(text)
    if len(words) <= window:
        return 0.0
    counts: Counter[tuple[str, ...]] = Counter()
    for start in range(len(words) - window + 1):
        key = tuple(words[start : start + window])
        counts[key] += 1
        if counts[key] >= limit:
            return -1.0
    return 0.0


@reward.register("rlpr", requires=("rewards", "reference_answer_logprobs", "reference_answer_baseline_logprobs"))
class Rlpr(RewardShaper):
    """RLPR (arXiv 2506.18254): the reference answer's mean token probability after the reasoning, minus the no-reasoning one.

    Knobs: ``score`` (mean_prob | mean_logprob | prob | geo_mean_prob), ``shaping`` (threshold |
    identity), ``threshold`` (0.0), ``format_coef`` (0.1), ``debias`` (first_visit | current | none),
    ``repetition_penalty`` (True), ``repetition_window`` (10), ``repetition_limit`` (10), ``format``
    (r1 | boxed | append: the splice), ``reference`` (answer | solution), ``combine`` (replace | add).
    """

    name = "rlpr"

    def __init__(
        self,
        *,
        score: RlprScore = "mean_prob",
        shaping: Shaping = "threshold",
        threshold: float = 0.0,
        format_coef: float = 0.1,
        debias: Debias = "first_visit",
        repetition_penalty: bool = True,
        repetition_window: int = 10,
        repetition_limit: int = 10,
        format: SpliceFormat = "r1",
        reference: Reference = "answer",
        combine: Combine = "replace",
    ) -> None:
        super().__init__()
        who = self.who()
        check_choice(who, "score", score, RLPR_SCORES)
        check_choice(who, "shaping", shaping, SHAPINGS)
        check_choice(who, "debias", debias, DEBIASES)
        check_choice(who, "format", format, SPLICE_FORMATS)
        check_choice(who, "reference", reference, REFERENCES)
        check_choice(who, "combine", combine, COMBINES)
        if repetition_window < 1 or repetition_limit < 1:
            raise ConfigError(f"{who}: repetition_window and repetition_limit must be >= 1")
        self.score = score
        self.shaping = shaping
        self.threshold = float(threshold)
        self.format_coef = float(format_coef)
        self.debias = debias
        self.repetition = bool(repetition_penalty)
        self.repetition_window = int(repetition_window)
        self.repetition_limit = int(repetition_limit)
        self.format = format
        self.reference = reference
        self.combine = combine
        self.score_a: dict[str, float] = {}

    def forward_quantities(self) -> list[Any]:
        return [
            ReferenceAnswerLogProbs(format=self.format, reference=self.reference),
            ReferenceAnswerBaselineLogProbs(format=self.format, reference=self.reference),
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"score_a": dict(self.score_a)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score_a = {str(k): float(v) for k, v in (state.get("score_a") or {}).items()}

    def baseline(self, ctx: AlgoContext, device: torch.device) -> Tensor:
        """``s_A`` per row (module docstring, ``debias``)."""
        if self.debias == "none":
            return torch.zeros(ctx.batch_size, dtype=torch.float64, device=device)
        logprobs, mask = extras_with_mask(
            ctx,
            "reference_answer_baseline_logprobs",
            "reference_answer_baseline_mask",
            self.who(),
            "(B, L) tensors from a forward with the reference answer right after each prompt",
        )
        now = answer_score(logprobs, mask, self.score).to(device)
        if self.debias == "current":
            return now
        if ctx.prompt_ids is None or len(ctx.prompt_ids) != ctx.batch_size:
            raise MissingInputError(f"{self.who()} with debias=first_visit needs ctx.prompt_ids (one per row)")
        for row, pid in enumerate(ctx.prompt_ids):
            self.score_a.setdefault(str(pid), float(now[row]))
        return torch.tensor([self.score_a[str(pid)] for pid in ctx.prompt_ids], dtype=torch.float64, device=device)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        logprobs, mask = extras_with_mask(
            ctx,
            "reference_answer_logprobs",
            "reference_answer_mask",
            self.who(),
            "(B, L) tensors from a forward with the reference answer spliced after each sampled response",
        )
        rewards = float_rewards(ctx, self.who())
        device = rewards.device
        valid = ctx.extras.get("reference_answer_valid")
        valid = torch.ones(ctx.batch_size, dtype=torch.bool, device=device) if valid is None else valid.to(device).bool()
        score_b = answer_score(logprobs, mask, self.score).to(device)
        score_b = torch.where(valid, score_b, torch.zeros_like(score_b))
        score_a = self.baseline(ctx, device)
        texts = response_texts(ctx, self.who())
        fmt = torch.tensor([format_score(self.format, t) for t in texts], dtype=torch.float64, device=device)
        value = rlpr_reward(score_b, score_a, fmt, shaping=self.shaping, threshold=self.threshold, format_coef=self.format_coef)
        penalty = torch.zeros_like(value)
        if self.repetition:
            found = [repetition_penalty(t, self.repetition_window, self.repetition_limit) for t in texts]
            penalty = torch.where(value != 0, torch.tensor(found, dtype=torch.float64, device=device), penalty)
        value = value + penalty
        out = value.to(rewards.dtype) if self.combine == "replace" else rewards + value.to(rewards.dtype)
        n = max(ctx.batch_size, 1)
        metrics = {
            "score_b_mean": float(score_b.sum()) / n,
            "score_a_mean": float(score_a.sum()) / n,
            "delta_mean": float((score_b - score_a).sum()) / n,
            "well_formed_frac": float(valid.double().sum()) / n,
            "format_mean": float(fmt.sum()) / n,
            "repetition_frac": float((penalty != 0).double().sum()) / n,
            "reward_mean": float(value.sum()) / n,
        }
        return out, metrics


@token_weight.register("rlpr_std_filter", requires=("rewards", "group_ids"))
class RlprStdFilter:
    """RLPR's reward-std filter (arXiv 2506.18254): groups whose reward std is below ``beta`` x its EMA leave the loss.

    Knobs: ``beta`` (0.5), ``ema_ratio`` (0.99), ``ema_start_step`` (6), ``start_step`` (11); steps
    count from 1. Decided on the whole batch in ``prepare`` (after the rewards and advantages).
    """

    name = "rlpr_std_filter"

    def __init__(self, *, beta: float = 0.5, ema_ratio: float = 0.99, ema_start_step: int = 6, start_step: int = 11) -> None:
        who = f"token_weight '{self.name}'"
        if not 0.0 <= ema_ratio <= 1.0:
            raise ConfigError(f"{who}: ema_ratio must be in [0, 1], got {ema_ratio}")
        if not 1 <= ema_start_step < start_step:
            raise ConfigError(f"{who}: need 1 <= ema_start_step < start_step, got {ema_start_step} and {start_step}")
        self.beta = float(beta)
        self.ema_ratio = float(ema_ratio)
        self.ema_start_step = int(ema_start_step)
        self.start_step = int(start_step)
        self.history: list[float] = []  # mean group std of each step from ema_start_step to start_step - 1
        self.ema: float | None = None
        self.last: float | None = None  # the previous step's mean group std, folded into the EMA at the next step
        self.kept: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "ema": self.ema, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state.get("history", [])]
        self.ema = state.get("ema")
        self.last = state.get("last")

    def threshold(self, step: int) -> float | None:
        """The std threshold of ``step`` (1-based), advancing the EMA; None before ``start_step`` or without history."""
        if step < self.start_step:
            return None
        if self.ema is None:
            self.ema = sum(self.history) / len(self.history) if self.history else None
        elif self.last is not None and math.isfinite(self.last):
            self.ema = self.ema_ratio * self.ema + (1.0 - self.ema_ratio) * self.last
        return None if self.ema is None else self.beta * self.ema

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        who = f"token_weight '{self.name}'"
        ctx.require("rewards", "group_ids", who=who)
        assert ctx.rewards is not None and ctx.group_ids is not None
        step = ctx.step + 1
        stds = group_std(ctx.rewards.detach().double(), ctx.group_ids)
        dense, k = group_index(ctx.group_ids)
        per_group = torch.zeros(k, dtype=torch.float64, device=stds.device).index_copy_(0, dense, stds)
        finite = per_group[torch.isfinite(per_group)]
        mean_std = float(finite.mean()) if finite.numel() else float("nan")
        limit = self.threshold(step)
        self.kept = stds >= limit if limit is not None else torch.ones_like(stds, dtype=torch.bool)
        if step >= self.ema_start_step:
            if step < self.start_step:
                if math.isfinite(mean_std):
                    self.history.append(mean_std)
            else:
                self.last = mean_std
        kept_groups = torch.zeros(k, dtype=torch.bool, device=stds.device).index_copy_(0, dense, self.kept)
        return {
            f"{self.name}/threshold": limit if limit is not None else 0.0,
            f"{self.name}/ema": self.ema if self.ema is not None else 0.0,
            f"{self.name}/mean_group_std": mean_std if math.isfinite(mean_std) else 0.0,
            f"{self.name}/kept_groups_frac": float(kept_groups.double().mean()) if k else 0.0,
        }

    def __call__(self, ctx: AlgoContext) -> TokenWeightOutput:
        mask = kept_rows_mask(ctx, self.kept, f"token_weight '{self.name}'", "filters groups of the whole rollout batch")
        return TokenWeightOutput(weights=torch.ones_like(ctx.response_mask), loss_mask=mask)
