"""HAPO-H (arXiv 2509.16591): entropy normaliser, sampler temperature, token-level group average and
the adaptive PPO loss, against hand values and slow loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlvr.algos import AlgoContext, advantage, policy_loss
from rlvr.algos.hapo_h import EntropyNormalizer, adaptive_temperature, entropy_normalizer, normalized_entropy
from rlvr.errors import ConfigError

# z = log H = 0, 1, 2, 3, 5 on the valid tokens, one NaN padding token
Z = [0.0, 1.0, 2.0, 3.0, 5.0]
MASK = torch.tensor([[1.0] * 5 + [0.0]])


def entropies(z: list[float]) -> torch.Tensor:
    return torch.tensor([[math.exp(v) for v in z] + [float("nan")]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("pivot", "signed", "official"),
    [
        # pivot 0.5: index round(2) = 2, m = 2; h = (-2, -1, 0, 1, 3) / sqrt(3)
        (0.5, [-1.0, -0.5, 0.0, 1 / 3, 1.0], [1.0, 0.5, 0.0, 1 / 3, 1.0]),
        # pivot 0.625: index 2.5 rounds half to even -> 2, the same pivot
        (0.625, [-1.0, -0.5, 0.0, 1 / 3, 1.0], [1.0, 0.5, 0.0, 1 / 3, 1.0]),
        # pivot 0.8 (default): index round(3.2) = 3, m = 3; h = (-3, -2, -1, 0, 2) / rms
        (0.8, [-1.0, -2 / 3, -1 / 3, 0.0, 1.0], [1.0, 2 / 3, 1 / 3, 0.0, 1.0]),
        # pivot 0.875: index 3.5 rounds to 4, m = 5: every token is at or below the pivot
        (0.875, [-1.0, -0.8, -0.6, -0.4, 0.0], [1.0, 0.8, 0.6, 0.4, 0.0]),
    ],
)
def test_normalised_entropy_by_hand(pivot, signed, official) -> None:
    h_hat, _ = normalized_entropy(entropies(Z), MASK, pivot=pivot)
    assert h_hat[0].tolist() == pytest.approx(signed + [0.0])
    h_hat, _ = normalized_entropy(entropies(Z), MASK, pivot=pivot, official_sign=True)
    assert h_hat[0].tolist() == pytest.approx(official + [0.0])


def test_normaliser_statistics_by_hand() -> None:
    norm = entropy_normalizer(entropies(Z), MASK, pivot=0.5)
    assert norm.pivot.item() == pytest.approx(2.0)
    assert norm.rms.item() == pytest.approx(math.sqrt(3.0))  # sqrt(mean((-2, -1, 0, 1, 3)^2)), not the std
    assert norm.scale_pos.item() == pytest.approx(math.sqrt(3.0) / 3)  # 1 / (3 / sqrt 3)
    assert norm.scale_neg.item() == pytest.approx(math.sqrt(3.0) / 2)  # 1 / |-2 / sqrt 3|
    official = entropy_normalizer(entropies(Z), MASK, pivot=0.5, official_sign=True)
    assert official.scale_neg.item() == pytest.approx(-math.sqrt(3.0) / 2)
    assert set(norm.to_dict()) == {"pivot", "rms", "scale_pos", "scale_neg"}
    with pytest.raises(ConfigError, match="pivot"):
        entropy_normalizer(entropies(Z), MASK, pivot=1.5)


def _reference_h_hat(entropy: torch.Tensor, mask: torch.Tensor, pivot: float, official: bool) -> torch.Tensor:
    """Loop reference over the valid tokens of the whole batch."""
    values = [math.log(max(float(h), 1e-8)) for h, m in zip(entropy.flatten(), mask.flatten()) if m > 0]
    ordered = sorted(values)
    m = ordered[round(pivot * (len(ordered) - 1))]
    rms = math.sqrt(max(sum((v - m) ** 2 for v in values) / len(values), 1e-8))
    hs = [(v - m) / rms for v in values]
    pos = max([h for h in hs if h > 0], default=0.0)
    neg = min([h for h in hs if h < 0], default=0.0)
    pos, neg = max(pos, 1e-8), min(neg, -1e-8)
    out = torch.zeros_like(entropy)
    it = iter(hs)
    for i in range(entropy.shape[0]):
        for t in range(entropy.shape[1]):
            if mask[i, t] > 0:
                h = next(it)
                out[i, t] = h / pos if h > 0 else (h / neg if official else h / abs(neg))
    return out


@pytest.mark.parametrize("official", [False, True])
def test_normalised_entropy_matches_loop_reference(official) -> None:
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(4, 9, generator=gen, dtype=torch.float64) * 3
    entropy[0, 0] = 0.0  # clamped to 1e-8 before the log
    mask = (torch.arange(9) < torch.tensor([9, 3, 0, 6])[:, None]).double()
    for pivot in (0.0, 0.3, 0.8, 1.0):
        h_hat, _ = normalized_entropy(entropy, mask, pivot=pivot, official_sign=official)
        assert torch.allclose(h_hat, _reference_h_hat(entropy, mask, pivot, official), atol=1e-10)


def test_adaptive_temperature_by_hand() -> None:
    norm = entropy_normalizer(entropies(Z), MASK, pivot=0.5)
    # new entropies with z = 2, 3.5, 1, 8: h = (z - 2) / sqrt 3 -> h_hat = 0, 0.5, -0.5, 2 (clipped to 1)
    new = torch.tensor([math.exp(2.0), math.exp(3.5), math.exp(1.0), math.exp(8.0)], dtype=torch.float64)
    temps = adaptive_temperature(new, norm, temperature=0.7, tau=0.05)
    assert temps.tolist() == pytest.approx([0.7, 0.7 * 1.025, 0.7 * 0.975, 0.7 * 1.05], rel=1e-5)
    restored = EntropyNormalizer(**norm.to_dict())  # e.g. the previous step's statistics from a checkpoint
    assert adaptive_temperature(new, restored, temperature=0.7).tolist() == pytest.approx(temps.tolist())
    official = entropy_normalizer(entropies(Z), MASK, pivot=0.5, official_sign=True)
    # the official sign raises the temperature below the pivot too
    assert adaptive_temperature(new, official).tolist() == pytest.approx([1.0, 1.025, 1.025, 1.05], rel=1e-5)


# ---------------------------------------------------------------- advantage


def _adv_ctx(rewards, lengths, groups, width) -> AlgoContext:
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    return AlgoContext(response_mask=mask, rewards=torch.tensor(rewards), group_ids=torch.tensor(groups))


def test_token_group_average_by_hand() -> None:
    # group 0: R = 1, 0, 0 with lengths 1, 2, 3 -> mu = 1/6, sigma = sqrt(5)/6 (length-weighted, population)
    # group 1: R = 1, 0 with lengths 1, 30 -> A_correct = sqrt(30) >= 5: GRPO fallback (+-0.5 / 0.7071)
    ctx = _adv_ctx([1.0, 0.0, 0.0, 1.0, 0.0], [1, 2, 3, 1, 30], [0, 0, 0, 1, 1], 30)
    adv_fn = advantage.build("hapo_h").fn
    adv = adv_fn(ctx)
    grpo_value = 0.5 / math.sqrt(0.5) / (1 + 1e-6 / math.sqrt(0.5))
    expected = [math.sqrt(5), -1 / math.sqrt(5), -1 / math.sqrt(5), grpo_value, -grpo_value]
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert bool((adv[ctx.response_mask == 0] == 0).all())
    assert adv_fn.metrics == {"hapo_h/fallback_frac": 0.5}
    # no std: A = R - mu_g (length-weighted mean), and |A| < 5 everywhere, so no fallback
    plain = advantage.build("hapo_h", {"norm_by_std": False})(ctx)
    assert plain[:, 0].tolist() == pytest.approx([5 / 6, -1 / 6, -1 / 6, 30 / 31, -1 / 31], rel=1e-6)
    # a high threshold disables the fallback: sqrt(30), -1/sqrt(30) for group 1
    loose = advantage.build("hapo_h", {"fallback_threshold": 100.0})(ctx)
    assert loose[3:, 0].tolist() == pytest.approx([math.sqrt(30), -1 / math.sqrt(30)], rel=1e-5)


def test_token_group_average_matches_token_list_reference() -> None:
    rng = np.random.default_rng(0)
    lengths = [3, 5, 1, 4, 2, 6, 6, 1]
    rewards = rng.uniform(0, 1, size=8).round(2).tolist()
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    adv = advantage.build("hapo_h", {"fallback_threshold": 1e9})(_adv_ctx(rewards, lengths, groups, 6))
    for g in set(groups):
        rows = [i for i in range(8) if groups[i] == g]
        tokens = np.concatenate([[rewards[i]] * lengths[i] for i in rows])
        for i in rows:
            want = (rewards[i] - tokens.mean()) / (tokens.std() + 1e-6)
            assert adv[i, : lengths[i]].tolist() == pytest.approx([want] * lengths[i], rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- policy loss


def _loss_ctx(ratios, advs) -> tuple[AlgoContext, torch.Tensor]:
    logprobs = torch.tensor([[math.log(r) for r in ratios] + [float("nan")]], dtype=torch.float64, requires_grad=True)
    ctx = AlgoContext(
        response_mask=MASK.double(),
        logprobs=logprobs,
        old_logprobs=torch.zeros(1, 6, dtype=torch.float64),
        advantages=torch.tensor([advs + [0.0]], dtype=torch.float64),
        entropy=entropies(Z),
    )
    return ctx, logprobs


RATIOS = [1.0, 0.75, 1.05, 1.2, 1.3]
ADVS = [1.0, -1.0, 1.0, 1.0, 1.0]


def test_adaptive_loss_by_hand() -> None:
    # pivot 0.5 -> h_hat = (-1, -.5, 0, 1/3, 1); eps_low = .4 .3 .2 .2 .2, eps_high = .2 .2 .2 .2667 .4;
    # neutral bands (1 - eps_low/2, 1 + eps_high/2) = (.8,1.1) (.85,1.1) (.9,1.1) (.9,1.133) (.9,1.2)
    # t0: inside, h<=0 -> A_ent = 1 * (1 - 1) = 0                              -> 0
    # t1: r=.75 outside, h<=0 -> A = -1; low bound .7 leaves .75 unclipped    -> +0.75
    # t2: inside, h=0 -> A_ent = A                                             -> -1.05
    # t3: r=1.2 outside, h>0 -> A_ent = 4/3; high bound 1.2667                -> -1.6
    # t4: r=1.3 outside, h>0 -> A_ent = 2; high bound 1.4 (plain PPO: 1.2)    -> -2.6
    ctx, logprobs = _loss_ctx(RATIOS, ADVS)
    out = policy_loss.build("hapo_h", {"entropy_pivot": 0.5})(ctx)
    assert out.per_token[0, :5].tolist() == pytest.approx([0.0, 0.75, -1.05, -1.6, -2.6])
    assert out.per_token[0, 5].item() == 0.0
    (grad,) = torch.autograd.grad(out.per_token.sum(), logprobs)
    assert grad[0, :5].tolist() == pytest.approx([0.0, 0.75, -1.05, -1.6, -2.6])  # d(-A r)/d log pi = -A r
    assert grad[0, 5].item() == 0.0  # NaN padding gets no gradient
    assert out.metrics["hapo_h/frac_high"] == pytest.approx(0.4)
    assert out.metrics["hapo_h/frac_redistributed"] == pytest.approx(0.8)  # t0, t2 inside; t3, t4 outside
    assert out.metrics["hapo_h/clip_low_mean"] == pytest.approx((0.4 + 0.3 + 0.2 * 3) / 5)


def test_official_sign_loss_by_hand() -> None:
    # h_hat = (1, .5, 0, 1/3, 1): the low-entropy tokens now widen the *high* bound
    # t0: inside (.9, 1.2) -> A = 1 -> -1;  t1: r=.75 outside (.9, 1.15) -> A_ent = -1.5, low bound .8 clips:
    # max(1.5 * .75, 1.5 * .8) = 1.2 (no gradient); t2..t4 as with the paper's sign
    ctx, logprobs = _loss_ctx(RATIOS, ADVS)
    out = policy_loss.build("hapo_h", {"entropy_pivot": 0.5, "official_sign": True})(ctx)
    assert out.per_token[0, :5].tolist() == pytest.approx([-1.0, 1.2, -1.05, -1.6, -2.6])
    (grad,) = torch.autograd.grad(out.per_token.sum(), logprobs)
    assert grad[0, :5].tolist() == pytest.approx([-1.0, 0.0, -1.05, -1.6, -2.6])


def test_without_adaptation_equals_ppo_clip() -> None:
    gen = torch.Generator().manual_seed(1)
    logprobs = torch.randn(3, 7, generator=gen, dtype=torch.float64) * 0.3
    ctx = AlgoContext(
        response_mask=(torch.arange(7) < torch.tensor([7, 4, 2])[:, None]).double(),
        logprobs=logprobs,
        old_logprobs=torch.zeros(3, 7, dtype=torch.float64),
        advantages=torch.randn(3, 7, generator=gen, dtype=torch.float64),
        entropy=torch.rand(3, 7, generator=gen, dtype=torch.float64),
    )
    knobs = {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0}
    plain = policy_loss.build("hapo_h", {**knobs, "adaptive_clip": False, "adaptive_advantage": False})(ctx)
    reference = policy_loss.build("ppo_clip", knobs)(ctx)
    assert torch.allclose(plain.per_token, reference.per_token)
    adapted = policy_loss.build("hapo_h", knobs)(ctx)
    assert not torch.allclose(adapted.per_token, reference.per_token)


def test_rejects_bad_knobs() -> None:
    ctx, _ = _loss_ctx(RATIOS, ADVS)
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        policy_loss.build("hapo_h", {"clip_ratio_c": 0.5})(ctx)
    with pytest.raises(ConfigError, match="fallback_threshold"):
        advantage.build("hapo_h", {"fallback_threshold": 0.0})
