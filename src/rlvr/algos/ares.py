"""ARES hierarchical entropy reward and per-difficulty coefficient controller (stages: reward, controller).

ARES / Adaptive-Entropy Policy Optimization (AEPO), arXiv 2510.08457. Official code:
shawn0728/ARES ``examples/reward_function/aepo.py`` (``compute_score``), ``verl/trainer/ray_trainer.py``
(``update_difficulty_and_skip_gid_set``, ``fit``), ``verl/workers/rollout/vllm_rollout_spmd.py``
(``compute_reasoning_token_window_entropy``, ``get_window_average_entropy_percentile_threshold_list``),
``experiments/AEPO/config.yaml``. The statistics helpers are shared with ``hwe_stats``.

**HWE count** ``N_i`` of a response of ``n`` tokens, as the official training path computes it:

1. Token entropies ``H_t``: here the rollout policy's full-vocabulary entropy ``ctx.old_entropy``
   (official: from vLLM's top-10 log-probs plus a tail-mass bucket).
2. Following window ``W_t = mean(H_{t+1} .. H_{t+w})``, complete windows only (``t + w <= n - 1``),
   ``w = window = 4``.
3. Response threshold ``p_i`` = the ``percentile`` (95, numpy's linear interpolation) of ``W_t`` over
   all ``n`` positions, the incomplete last ``w`` ones filled with the mean of the complete ``W``
   (``H_0`` when there is none); 0 for an empty response.
4. Global threshold ``tau``, an EMA over steps: ``tau <- 0.99 tau + 0.01 median_i(p_i)``, started at
   the first batch's median. A step counts with the ``tau`` from *before* its own batch (the
   official code counts while generating); on the very first step it uses ``threshold_init``, or
   the batch's own median when that is None (official: -1, i.e. every complete window counts,
   unless a validation run set it first).
5. ``N_i = #{t : token t is a trigger, W_t complete, W_t >= tau}``. ``triggers``: a list of token
   strings, compared after stripping a leading ``▁``/``Ġ`` and whitespace and lower-casing (the
   official list is ``data/crucial_token_final_version.json``, decoded words such as "wait", matched
   against the *argmax* token of the top-k at t; here the sampled token). The token strings come
   from ``ctx.extras["response_tokens"]`` (one list of strings per row) or, for a tokenizer with one
   character per token (the built-in one), from the response text. ``triggers=None``: every
   position is a trigger (the trigger words mean nothing on countdown).

**Difficulty** per prompt from its group's accuracy (``ctx.correct``): easy >= 2/3, medium >= 1/3,
else hard. **Target** ``N*_b = round(mean over the bucket's prompts of their mean N_i)`` (half to
even), from the same batch.

**Reward** ``R_i + s_i`` with ``R_i`` the incoming reward (the verifier's accuracy) and, with
``Delta = N_i - N*_b``, margin ``m = max(1, f_b max(N*_b, 1))``, ``huber(x) = x^2 / (2 kappa)`` for
``x <= kappa`` else ``x - kappa / 2`` (on ``x >= 0``), ``sig(x) = 1 / (1 + exp(-x / T_b))`` and
``cap = alpha_b c_b``::

    easy, correct:    -min(cap, huber(max(Delta - m, 0)) / (m + kappa) * cap)
    medium, correct:  -min(cap, huber(max(|Delta| - m, 0)) / (m + kappa) * cap)
    easy/medium, wrong: sig(max(Delta - m, 0)) * cap * (0.6 | 0.8)
    hard, correct:    sig(Delta + m) * cap                        if Delta >= -m
                      -min(cap, 0.5 huber(-Delta - m) / (m + kappa) * cap)   otherwise
    hard, wrong:      sig(max(Delta - m, 0)) * cap

with ``f = (.15, .25, .35)``, ``kappa = (2, 3, 4)``, ``T = (2, 2.5, 3)``, ``c = (1, 1, 1.2)`` for
(easy, medium, hard). Note ``sig(0) = 1/2``: every wrong response gets at least ``cap * 0.3``.

**Controller** ``ares_alpha``: per bucket present in the batch, *before* the batch is scored
(official order), ``alpha_b <- clip(alpha_b + lr delta_b, 0, 2)``, ``lr = 0.05``, initial 0.5, with
``delta_b = mean_b - target_b`` for easy/medium ("too many HWE tokens: more penalty") and
``target_b - mean_b`` for hard, ``mean_b`` the bucket's mean count. Trap [CODE observation]: the
official target is recomputed from the same batch just before the update, ``target_b =
round(mean_b)``, so ``delta_b`` is only the rounding residual (``|delta_b| <= 1/2``) and alpha moves
at most 0.025 a step (``delta_target="batch"``, the default, reproduces it).
``delta_target="previous"`` [INFERENCE] compares with the previous step's target of the bucket
instead, a feedback loop on the change of the HWE count. Without the controller the reward uses a
fixed ``alpha`` for every bucket. The official bootstrap pass (alpha updates over a rollout of the
whole training set before step 1) and the dynamic KL of the actor are not implemented.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_index
from rlvr.algos.hwe_stats import difficulty_buckets, window_entropy
from rlvr.algos.registry import controller, reward
from rlvr.algos.shaping import RewardShaper, check_choice, correct_mask, float_rewards, group_ids_of, mean_of, response_texts
from rlvr.errors import ConfigError, MissingInputError

BUCKETS = ("easy", "medium", "hard")
MARGIN_FRAC = (0.15, 0.25, 0.35)
KAPPA = (2.0, 3.0, 4.0)
SIGMOID_TEMP = (2.0, 2.5, 3.0)
CAP_SCALE = (1.0, 1.0, 1.2)
WRONG_SCALE = (0.6, 0.8, 1.0)
DeltaTarget = Literal["batch", "previous"]
DELTA_TARGETS: tuple[str, ...] = get_args(DeltaTarget)


# --------------------------------------------------------------------------------------------------
# HWE counts
# --------------------------------------------------------------------------------------------------


def following_windows(entropy: Tensor, response_mask: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """``(W, complete)``: ``W_t = mean(H_{t+1..t+window})`` and where that window lies inside the response."""
    shifted = torch.nn.functional.pad(entropy[:, 1:], (0, 1))
    shifted_mask = torch.nn.functional.pad(response_mask[:, 1:], (0, 1))
    means = window_entropy(shifted, shifted_mask, window)
    lengths = response_mask.sum(-1, keepdim=True)
    positions = torch.arange(entropy.shape[-1], device=entropy.device)
    complete = (positions + window <= lengths - 1) & (response_mask > 0)
    return means, complete


def response_thresholds(entropy: Tensor, response_mask: Tensor, window: int, percentile: float) -> Tensor:
    """Per-response ``percentile`` of the window means, incomplete windows filled (module docstring), ``(B,)``."""
    means, complete = following_windows(entropy.to(torch.float64), response_mask, window)
    out = torch.zeros(entropy.shape[0], dtype=torch.float64, device=entropy.device)
    for i in range(entropy.shape[0]):
        n = int(response_mask[i].sum())
        if n == 0:
            continue
        full = means[i][complete[i]]
        fill = full.mean() if full.numel() else entropy[i, 0].to(torch.float64)
        values = torch.cat([full, fill.expand(n - full.numel())])
        out[i] = torch.quantile(values, percentile / 100.0)
    return out


def normalize_token(token: str) -> str:
    """A token string without a leading ``▁``/``Ġ`` and surrounding whitespace, lower-cased."""
    return re.sub(r"^[▁Ġ]+", "", token).strip().lower()


def token_strings(ctx: AlgoContext, who: str) -> list[list[str]]:
    """One string per response token: ``ctx.extras["response_tokens"]``, else the characters of the text.

    The text path needs one character per token (the built-in tokenizer); a final EOS token, which
    decodes to nothing, becomes ``""``.
    """
    tokens = ctx.extras.get("response_tokens")
    if tokens is not None:
        rows = [list(row) for row in tokens]
    else:
        rows = [list(text) for text in response_texts(ctx, who)]
    for i, n in enumerate(int(v) for v in ctx.lengths.tolist()):
        if tokens is None and len(rows[i]) == n - 1:
            rows[i].append("")
        if len(rows[i]) != n:
            raise MissingInputError(
                f"{who}: triggers need one string per response token (row {i}: {n} tokens, {len(rows[i])} "
                "strings); set ctx.extras['response_tokens'] or use a tokenizer with one character per token"
            )
    return rows


def trigger_mask(ctx: AlgoContext, triggers: Sequence[str] | None, who: str) -> Tensor:
    """Valid positions whose token is a trigger (all valid positions when ``triggers`` is None), ``(B, T)``."""
    valid = ctx.response_mask > 0
    if triggers is None:
        return valid
    wanted = {normalize_token(t) for t in triggers}
    out = torch.zeros_like(valid)
    for i, row in enumerate(token_strings(ctx, who)):
        for t, token in enumerate(row):
            out[i, t] = normalize_token(token) in wanted
    return out


def hwe_counts(hits: Tensor, means: Tensor, complete: Tensor, threshold: float) -> Tensor:
    """``N_i``: trigger positions with a complete following window whose mean reaches ``threshold``, ``(B,)``."""
    return (hits & complete & (means >= threshold)).sum(-1).to(torch.float64)


# --------------------------------------------------------------------------------------------------
# the hierarchical entropy score
# --------------------------------------------------------------------------------------------------


def huber(x: float, kappa: float) -> float:
    """``x^2 / (2 kappa)`` for ``0 <= x <= kappa``, ``x - kappa / 2`` above (``x`` floored at 0)."""
    x = max(x, 0.0)
    return 0.5 * x * x / kappa if x <= kappa else x - 0.5 * kappa


def saturate(x: float, temp: float) -> float:
    """``1 / (1 + exp(-x / temp))``."""
    z = -x / max(temp, 1e-6)
    return 1.0 / (1.0 + math.exp(z)) if z < 50 else 0.0


def entropy_score(count: float, target: float, bucket: int, correct: bool, alpha: float) -> float:
    """ARES's ``s_i`` for a response with ``count`` HWE tokens (module docstring)."""
    delta = count - target
    margin = max(1.0, MARGIN_FRAC[bucket] * max(target, 1.0))
    kappa, temp = KAPPA[bucket], SIGMOID_TEMP[bucket]
    cap = alpha * CAP_SCALE[bucket]
    if not correct:
        return saturate(max(delta - margin, 0.0), temp) * cap * WRONG_SCALE[bucket]
    if bucket == 0:
        return -min(cap, huber(delta - margin, kappa) / (margin + kappa) * cap)
    if bucket == 1:
        return -min(cap, huber(abs(delta) - margin, kappa) / (margin + kappa) * cap)
    if delta >= -margin:
        return saturate(delta + margin, temp) * cap
    return -min(cap, 0.5 * huber(-delta - margin, kappa) / (margin + kappa) * cap)


def bucket_statistics(counts: Tensor, buckets: Tensor, group_ids: Tensor) -> tuple[dict[int, float], dict[int, int]]:
    """``(mean_b, target_b)`` over the buckets present: mean of the prompts' mean counts, and its rounding."""
    dense, k = group_index(group_ids)
    per_prompt: dict[int, list[float]] = {}
    bucket_of: dict[int, int] = {}
    for g, c, b in zip(dense.tolist(), counts.tolist(), buckets.tolist()):
        per_prompt.setdefault(g, []).append(c)
        bucket_of[g] = b
    members: dict[int, list[float]] = {}
    for g, values in per_prompt.items():
        members.setdefault(bucket_of[g], []).append(sum(values) / len(values))
    means = {b: sum(v) / len(v) for b, v in sorted(members.items())}
    return means, {b: round(m) for b, m in means.items()}


@reward.register("ares", requires=("rewards", "correct", "group_ids", "old_entropy"))
class AresEntropyReward(RewardShaper):
    """ARES hierarchical entropy reward ``R + s(N_HWE - N*_difficulty)`` (arXiv 2510.08457).

    Knobs: ``alpha`` (0.5, used when no ``ares_alpha`` controller drives it), ``window`` (4),
    ``percentile`` (95.0), ``threshold_ema`` (0.99), ``threshold_init`` (None: the first batch's
    median), ``triggers`` (None: every token). Metrics ``ares/hwe_count_mean``, ``ares/threshold``,
    ``ares/score_mean``, ``ares/target_<bucket>``, ``ares/alpha_<bucket>``. State: the threshold EMA.
    """

    name = "ares"

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        window: int = 4,
        percentile: float = 95.0,
        threshold_ema: float = 0.99,
        threshold_init: float | None = None,
        triggers: list[str] | None = None,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ConfigError(f"{self.who()}: window must be >= 1, got {window}")
        if not 0.0 <= percentile <= 100.0:
            raise ConfigError(f"{self.who()}: percentile must be in [0, 100], got {percentile}")
        if not 0.0 <= threshold_ema <= 1.0:
            raise ConfigError(f"{self.who()}: threshold_ema must be in [0, 1], got {threshold_ema}")
        self.alpha = float(alpha)
        self.window = int(window)
        self.percentile = float(percentile)
        self.threshold_ema = float(threshold_ema)
        self.threshold_init = threshold_init
        self.triggers = None if triggers is None else list(triggers)
        self.ema: float | None = None
        self.controller: AresAlphaController | None = None

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        who = self.who()
        rewards = float_rewards(ctx, who)
        correct = correct_mask(ctx, who)
        group_ids = group_ids_of(ctx, who)
        ctx.require("old_entropy", who=who)
        assert ctx.old_entropy is not None
        entropy = ctx.old_entropy.detach()
        mask = ctx.response_mask
        thresholds = response_thresholds(entropy, mask, self.window, self.percentile)
        batch_median = float(torch.quantile(thresholds, 0.5)) if thresholds.numel() else 0.0
        if self.ema is not None:
            threshold = self.ema
        else:
            threshold = batch_median if self.threshold_init is None else float(self.threshold_init)
        means, complete = following_windows(entropy.to(torch.float64), mask, self.window)
        counts = hwe_counts(trigger_mask(ctx, self.triggers, who), means, complete, threshold)
        self.ema = batch_median if self.ema is None else self.threshold_ema * self.ema + (1 - self.threshold_ema) * batch_median
        buckets = difficulty_buckets(correct, group_ids)
        bucket_means, targets = bucket_statistics(counts, buckets, group_ids)
        if self.controller is not None:
            alphas = self.controller.update(bucket_means, targets)
        else:
            alphas = {b: self.alpha for b in range(len(BUCKETS))}
        scores = torch.tensor(
            [
                entropy_score(c, targets[b], b, ok, alphas[b])
                for c, b, ok in zip(counts.tolist(), buckets.tolist(), correct.tolist())
            ],
            dtype=torch.float64,
        )
        metrics = {"hwe_count_mean": mean_of(counts), "threshold": threshold, "score_mean": mean_of(scores)}
        for b, target in targets.items():
            metrics[f"target_{BUCKETS[b]}"] = float(target)
            metrics[f"alpha_{BUCKETS[b]}"] = alphas[b]
        return rewards + scores.to(device=rewards.device, dtype=rewards.dtype), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else float(ema)


@controller.register("ares_alpha")
class AresAlphaController:
    """ARES per-difficulty coefficient ``alpha_b <- clip(alpha_b + lr delta_b, min, max)`` driving reward ``ares``.

    Knobs: ``lr`` (0.05), ``alpha_init`` (0.5), ``alpha_min`` (0.0), ``alpha_max`` (2.0),
    ``delta_target`` (``"batch"``: the official same-batch target; ``"previous"``: the previous step's).
    The update runs when ``ares`` scores a batch, before scoring it. State: alphas and last targets.
    """

    def __init__(
        self,
        *,
        lr: float = 0.05,
        alpha_init: float = 0.5,
        alpha_min: float = 0.0,
        alpha_max: float = 2.0,
        delta_target: DeltaTarget = "batch",
    ) -> None:
        who = "controller 'ares_alpha'"
        check_choice(who, "delta_target", delta_target, DELTA_TARGETS)
        if alpha_min > alpha_max:
            raise ConfigError(f"{who}: alpha_min={alpha_min} exceeds alpha_max={alpha_max}")
        self.lr = float(lr)
        self.alpha_min, self.alpha_max = float(alpha_min), float(alpha_max)
        self.delta_target = delta_target
        self.alpha = {b: float(alpha_init) for b in range(len(BUCKETS))}
        self.targets: dict[int, float] = {}

    def bind(self, pipeline: Any) -> None:
        """Attach to the ``ares`` reward shaper(s) of the pipeline."""
        matches = [c for c in pipeline.reward_shaping if c.name == "ares"]
        if not matches:
            names = ", ".join(c.name for c in pipeline.reward_shaping) or "(none)"
            raise ConfigError(
                f"controller 'ares_alpha' drives reward 'ares', which is not in algo.reward_shaping (configured: {names})"
            )
        for component in matches:
            component.fn.controller = self

    def update(self, means: dict[int, float], targets: dict[int, int]) -> dict[int, float]:
        """One step for the buckets present (``means``, ``targets`` of this batch); returns every bucket's alpha."""
        for b, mean in means.items():
            target = float(targets[b]) if self.delta_target == "batch" else self.targets.get(b, float(targets[b]))
            delta = mean - target if b < 2 else target - mean
            self.alpha[b] = min(self.alpha_max, max(self.alpha_min, self.alpha[b] + self.lr * delta))
        self.targets.update({b: float(t) for b, t in targets.items()})
        return dict(self.alpha)

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        return {f"ares_alpha/{BUCKETS[b]}": value for b, value in self.alpha.items()}

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": {BUCKETS[b]: v for b, v in self.alpha.items()},
            "targets": {BUCKETS[b]: v for b, v in self.targets.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        index = {name: b for b, name in enumerate(BUCKETS)}
        for name, value in (state.get("alpha") or {}).items():
            self.alpha[index[name]] = float(value)
        self.targets = {index[name]: float(v) for name, v in (state.get("targets") or {}).items()}
