"""HAPO-H, Heterogeneous Adaptive Policy Optimization (stages: advantage, policy_loss; sampler formula).

Paper: "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
arXiv 2509.16591 (the repository's README badge reads 2507.21848). Official code:
starriver030515/HAPO ``verl/trainer/ppo/core_algos.py`` (``compute_entropy_h``, ``ada_clip``,
``ada_advantage``, ``compute_policy_loss``, ``compute_hapo_outcome_advantage``), ``recipe/train.md``
(``compute_entropy_based_temperature``), ``verl/trainer/config/ppo_trainer.yaml``,
``recipe/qwen2.5_math_7b.sh``. Not the History-Aware HAPO length reward (reward ``hapo``).

**Entropy normaliser** (:func:`entropy_normalizer`, shared by every part). Over the valid tokens::

    z_t = log max(H_t, 1e-8)
    m   = the ``pivot``-quantile of z, "nearest": the sorted value at index round(pivot * (N - 1))
          (Python's round, half to even, as the official ``torch_quantile``); default pivot 0.8
    s   = sqrt(max(mean_t (z_t - m)^2, 1e-8))      root-mean-square around the pivot, not the std
    h_t = (z_t - m) / s
    h^_t = h_t / max_{h>0} h      if h_t > 0
    h^_t = h_t / |min_{h<0} h|    if h_t <= 0      (``official_sign=False``, the default)

so ``h^`` is in [-1, 1], negative for tokens below the pivot, as the paper describes ("aggressive
probability reduction for noisy low-entropy tokens while enabling exploration for high-entropy
tokens"). **Official-code bug** (``official_sign=True`` reproduces it): ``scale_neg = 1 / min h`` is
negative, so below-pivot tokens get a *positive* ``h^`` (``h = (-2, -1, 0, 1, 3)`` gives
``(1, .5, 0, .33, 1)`` instead of ``(-1, -.5, 0, .33, 1)``); the most confident tokens then look
as "high-entropy" as the least confident ones, and the ``h^ <= 0`` branches below fire only at the
pivot itself. With it the differential advantage is inactive on an on-policy first update (ratio 1).

**Token Level Group Average** (advantage ``hapo_h``): every valid token of response i carries R_i;
``mu_g``, ``sigma_g`` are the mean and population std over all valid tokens of the group, i.e.
length-weighted, ``mu_g = sum_i L_i R_i / sum_i L_i``; ``A_i = (R_i - mu_g) / (sigma_g + eps)``
(``R_i - mu_g`` with ``norm_by_std=False``). If any ``|A_i| >= fallback_threshold`` (5) in a group,
the whole group takes the GRPO advantage instead (advantage ``grpo``, unbiased std). The official
check also runs over padding positions, whose value there is ``-mu_g / (sigma_g + eps)``; for 0/1
rewards that changes nothing (a reward-0 response, or an all-correct group whose GRPO advantage is 0
anyway), and here the check is on valid tokens only.

**Asymmetric Adaptive Clipping** (policy loss ``hapo_h``, ``clip_alpha = 1``)::

    h^ > 0:  eps_high = clip_high (1 + clip_alpha h^),   eps_low = clip_low
    h^ <= 0: eps_low  = clip_low  (1 - clip_alpha h^),   eps_high = clip_high

**Differential Advantage Redistribution** (same loss, ``adv_beta = 1``): ``A_ent = A (1 + adv_beta h^)``;
with the neutral band ``1 - eps_low/2 < r < 1 + eps_high/2`` (the adapted bounds when
``adaptive_clip``): ``h^ > 0`` uses A inside the band and ``A_ent`` outside, ``h^ <= 0`` uses ``A_ent``
inside and A outside. Then the PPO clipped surrogate with dual clip (``clip_ratio_c = 10`` in the
recipes) on the per-token bounds. ``h^`` comes from the current (update-forward) entropy of the
micro-batch, without gradient, as in the official actor.

**Adaptive Temperature Sampling** (:func:`adaptive_temperature`, the formula; the sampler option is
``rollout.adaptive_temperature``, :mod:`rlvr.rollout.adaptive_temperature`, in rlvr's KV-cache
loop). With the normaliser of the previous step's rollout entropies::

    T_t = T (1 + tau clip(h^_t, -1, 1)),   h_t = (log max(H_t, 1e-6) - m) / (s + 1e-6)

where ``H_t`` is the entropy of the current decoding step's distribution; ``T = 1``, ``tau = 0.05``
(README: Qwen models collapse with larger tau). Trap: the old log-probs of the PPO ratio must be
those under the temperature actually used; the official code recomputes them at the base T
(``rollout.adaptive_temperature.logprob_temperature`` offers both).

Recipe: DAPO base, token-mean loss, clip 0.2 / 0.2, dual clip 10, pivot 0.8, alpha = beta = 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.grpo import grpo, seq_rewards
from rlvr.algos.groups import group_index
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, check_clip, clipped_surrogate, masked_float, policy_inputs
from rlvr.algos.registry import advantage, policy_loss
from rlvr.errors import ConfigError

LOG_EPS = 1e-8
"""Floor of the entropy before the log, and of the variance, in the loss (official ``compute_entropy_h``)."""
SAMPLER_EPS = 1e-6
"""Floor of the entropy and additive std epsilon in the sampler formula (official ``compute_entropy_based_temperature``)."""


class EntropyNormalizer(NamedTuple):
    """The statistics of :func:`entropy_normalizer` (0-dim tensors): pivot ``m``, rms ``s`` and the two scales."""

    pivot: Tensor
    rms: Tensor
    scale_pos: Tensor
    scale_neg: Tensor

    def to_dict(self) -> dict[str, float]:
        """Plain floats, e.g. to keep the previous step's statistics in a checkpoint.

        ``EntropyNormalizer(**d)`` rebuilds it; floats work in place of the tensors.
        """
        return {key: float(value) for key, value in self._asdict().items()}


def nearest_quantile(values: Tensor, q: float) -> Tensor:
    """The sorted value at index ``round(q * (n - 1))`` (half to even); 0 for an empty tensor."""
    if values.numel() == 0:
        return values.new_zeros(())
    ordered = values.flatten().sort().values
    return ordered[round(q * (ordered.numel() - 1))]


def entropy_normalizer(
    entropy: Tensor, response_mask: Tensor, *, pivot: float = 0.8, official_sign: bool = False
) -> EntropyNormalizer:
    """HAPO's statistics of the valid token entropies (see the module docstring), no gradient."""
    if not 0.0 <= pivot <= 1.0:
        raise ConfigError(f"hapo_h: entropy pivot must be in [0, 1], got {pivot}")
    valid = response_mask > 0
    z = entropy.detach().clamp_min(LOG_EPS).log()
    m = nearest_quantile(z[valid], pivot)
    h = torch.where(valid, z - m, torch.zeros_like(z))
    n = valid.sum().clamp_min(1)
    rms = (h.pow(2).sum() / n).clamp_min(LOG_EPS).sqrt()
    h = h / rms
    zero = torch.zeros_like(h)
    pos_max = torch.where(valid & (h > 0), h, zero).max().clamp_min(LOG_EPS)
    neg_min = torch.where(valid & (h < 0), h, zero).min().clamp_max(-LOG_EPS)
    scale_neg = 1.0 / neg_min if official_sign else -1.0 / neg_min
    return EntropyNormalizer(m, rms, 1.0 / pos_max, scale_neg)


def scaled_entropy(h: Tensor, norm: EntropyNormalizer) -> Tensor:
    """``h * scale_pos`` where ``h > 0``, ``h * scale_neg`` elsewhere."""
    return torch.where(h > 0, h * norm.scale_pos, h * norm.scale_neg)


def normalized_entropy(
    entropy: Tensor, response_mask: Tensor, *, pivot: float = 0.8, official_sign: bool = False
) -> tuple[Tensor, EntropyNormalizer]:
    """``(h^, statistics)`` of a batch of token entropies, ``h^`` 0 on padding, no gradient."""
    norm = entropy_normalizer(entropy, response_mask, pivot=pivot, official_sign=official_sign)
    h = (entropy.detach().clamp_min(LOG_EPS).log() - norm.pivot) / norm.rms
    h_hat = scaled_entropy(h, norm)
    return torch.where(response_mask > 0, h_hat, torch.zeros_like(h_hat)), norm


def adaptive_temperature(
    entropy: Tensor, norm: EntropyNormalizer, *, temperature: float = 1.0, tau: float = 0.05
) -> Tensor:
    """HAPO's per-token sampling temperature ``T (1 + tau clip(h^, -1, 1))`` (see rlvr.rollout.adaptive_temperature).

    ``entropy``: the entropies of the distributions being sampled (any shape); ``norm``: the
    :func:`entropy_normalizer` of the previous step's rollout entropies (``official_sign`` there
    decides the sign below the pivot).
    """
    h = (entropy.clamp_min(SAMPLER_EPS).log() - norm.pivot) / (norm.rms + SAMPLER_EPS)
    return temperature * (1.0 + tau * scaled_entropy(h, norm).clamp(-1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# advantage: token-level group average
# --------------------------------------------------------------------------------------------------


def token_group_average(
    rewards: Tensor, lengths: Tensor, group_ids: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``(A, group of each row)``: ``(R - mu_g) / (sigma_g + eps)`` with length-weighted group moments.

    A group without valid tokens gets advantage 0.
    """
    dense, k = group_index(group_ids)
    weights = lengths.to(rewards.dtype)
    total = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, dense, weights)
    mean = torch.zeros_like(total).index_add_(0, dense, weights * rewards) / total.clamp_min(1.0)
    centred = rewards - mean[dense]
    adv = centred
    if norm_by_std:
        var = torch.zeros_like(total).index_add_(0, dense, weights * centred**2) / total.clamp_min(1.0)
        adv = centred / (var.sqrt()[dense] + eps)
    return torch.where(total[dense] > 0, adv, torch.zeros_like(adv)), dense


@advantage.register("hapo_h", requires=("rewards", "group_ids"))
class HapoHAdvantage:
    """HAPO-H token-level group average (arXiv 2509.16591): length-weighted ``(R - mu_g) / sigma_g``, GRPO fallback.

    Knobs: ``norm_by_std`` (True), ``eps`` (1e-6), ``fallback_threshold`` (5.0: a group with any
    ``|A| >= 5`` takes the GRPO advantage). Metric ``hapo_h/fallback_frac``: share of groups that fell back.
    """

    def __init__(self, *, norm_by_std: bool = True, eps: float = 1e-6, fallback_threshold: float = 5.0) -> None:
        if not fallback_threshold > 0:
            raise ConfigError(f"advantage 'hapo_h': fallback_threshold must be > 0, got {fallback_threshold}")
        self.norm_by_std = bool(norm_by_std)
        self.eps = float(eps)
        self.fallback_threshold = float(fallback_threshold)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        rewards = seq_rewards(ctx, "advantage 'hapo_h'")
        assert ctx.group_ids is not None
        lengths = ctx.lengths
        adv, dense = token_group_average(rewards, lengths, ctx.group_ids, norm_by_std=self.norm_by_std, eps=self.eps)
        k = int(dense.max()) + 1 if dense.numel() else 0
        large = ((adv.abs() >= self.fallback_threshold) & (lengths > 0)).to(rewards.dtype)
        fallback = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, dense, large) > 0
        tokens = adv.unsqueeze(-1) * ctx.response_mask.to(adv.dtype)
        if bool(fallback.any()):
            tokens = torch.where(fallback[dense].unsqueeze(-1), grpo(ctx, norm_by_std=self.norm_by_std, eps=self.eps), tokens)
        self.metrics = {"hapo_h/fallback_frac": float(fallback.to(torch.float64).mean()) if k else 0.0}
        return tokens


# --------------------------------------------------------------------------------------------------
# policy loss: asymmetric adaptive clipping + differential advantage redistribution
# --------------------------------------------------------------------------------------------------


def adaptive_clip_bounds(
    h_hat: Tensor, clip_low: float, clip_high: float, clip_alpha: float
) -> tuple[Tensor, Tensor]:
    """Per-token ``(eps_low, eps_high)``: widened high bound where ``h^ > 0``, low bound where ``h^ <= 0``."""
    low = torch.where(h_hat <= 0, clip_low * (1.0 - clip_alpha * h_hat), torch.full_like(h_hat, clip_low))
    high = torch.where(h_hat > 0, clip_high * (1.0 + clip_alpha * h_hat), torch.full_like(h_hat, clip_high))
    return low, high


def redistributed_advantages(
    advantages: Tensor, h_hat: Tensor, ratio: Tensor, eps_low: Tensor, eps_high: Tensor, adv_beta: float
) -> tuple[Tensor, Tensor]:
    """``(A', uses_ent)``: ``A_ent = A (1 + beta h^)`` outside (h^ > 0) or inside (h^ <= 0) the neutral band."""
    ratio = ratio.detach()
    inside = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)
    uses_ent = torch.where(h_hat > 0, ~inside, inside)
    return torch.where(uses_ent, advantages * (1.0 + adv_beta * h_hat), advantages), uses_ent


@policy_loss.register("hapo_h", requires=("entropy", "logprobs", "old_logprobs", "advantages"))
def hapo_h_loss(
    ctx: AlgoContext,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = 10.0,
    entropy_pivot: float = 0.8,
    adaptive_clip: bool = True,
    clip_alpha: float = 1.0,
    adaptive_advantage: bool = True,
    adv_beta: float = 1.0,
    official_sign: bool = False,
) -> LossOutput:
    """HAPO-H PPO loss (arXiv 2509.16591): entropy-adaptive clip bounds and advantage redistribution.

    ``h^`` from the micro-batch's current entropy (``official_sign=True``: the released code's
    unsigned ``h^``). ``clip_ratio_c`` (10, the recipes; None: off) is the dual clip. Metrics:
    ``hapo_h/h_hat_mean``, ``hapo_h/frac_high`` (h^ > 0), ``hapo_h/clip_low_mean``,
    ``hapo_h/clip_high_mean``, ``hapo_h/frac_redistributed`` (tokens on A_ent), then PPO's clip metrics.
    """
    who = "policy_loss 'hapo_h'"
    check_clip(who, clip_low, clip_high)
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ConfigError(f"{who}: clip_ratio_c must be > 1 (or None to disable), got {clip_ratio_c}")
    ctx.require("entropy", who=who)
    assert ctx.entropy is not None
    _, log_ratio, adv, mask = policy_inputs(ctx, who)
    ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
    h_hat, _ = normalized_entropy(ctx.entropy, mask, pivot=entropy_pivot, official_sign=official_sign)
    h_hat = h_hat.to(adv.dtype)
    if adaptive_clip:
        eps_low, eps_high = adaptive_clip_bounds(h_hat, clip_low, clip_high, clip_alpha)
    else:
        eps_low, eps_high = torch.full_like(h_hat, clip_low), torch.full_like(h_hat, clip_high)
    uses_ent = torch.zeros_like(mask, dtype=torch.bool)
    if adaptive_advantage:
        adv, uses_ent = redistributed_advantages(adv, h_hat, ratio, eps_low, eps_high, adv_beta)
    per_token, metrics = clipped_surrogate(ratio, adv, mask, eps_low, eps_high, clip_ratio_c)  # type: ignore[arg-type]
    metrics["approx_kl"] = masked_float(-log_ratio, mask)
    metrics.update(
        {
            "hapo_h/h_hat_mean": masked_float(h_hat, mask),
            "hapo_h/frac_high": masked_float((h_hat > 0).to(mask.dtype), mask),
            "hapo_h/clip_low_mean": masked_float(eps_low, mask),
            "hapo_h/clip_high_mean": masked_float(eps_high, mask),
            "hapo_h/frac_redistributed": masked_float(uses_ent.to(mask.dtype), mask),
        }
    )
    return LossOutput(per_token=per_token, metrics=metrics)
