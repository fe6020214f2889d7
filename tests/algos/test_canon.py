"""CANON advantages (arXiv 2509.23962) against hand-computed values and a slow reference."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.canon import cosine_restart_schedule, high_half_mask
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")


def make_ctx(
    rewards: list[float],
    groups: list[int],
    *,
    mean_entropy: list[float] | None = None,
    lengths: list[int] | None = None,
    width: int = 4,
    **fields: object,
) -> AlgoContext:
    """Responses of ``lengths`` valid tokens (default: all ``width``); per-token entropy = the mean,
    with NaN on padding (must never leak into the metric)."""
    n = len(rewards)
    lengths = lengths or [width] * n
    mask = torch.tensor([[1.0] * k + [0.0] * (width - k) for k in lengths])
    old_entropy = None
    if mean_entropy is not None:
        old_entropy = torch.tensor([[h] * k + [NAN] * (width - k) for h, k in zip(mean_entropy, lengths)])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(groups),
        old_entropy=old_entropy,
        **fields,  # type: ignore[arg-type]
    )


def run(name: str, ctx: AlgoContext, **knobs: object) -> torch.Tensor:
    return advantage.build(name, dict(knobs))(ctx)


def seq(adv: torch.Tensor) -> list[float]:
    return adv[:, 0].tolist()


def close(actual: list[float], expected: list[float]) -> None:
    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), atol=1e-6, rtol=0.0)


# ----------------------------------------------------------------------------------- split ----------


def test_split_even_odd_and_ties() -> None:
    # group 0 (even, n=4): h = [0.5, 0.1, 0.3, 0.9] -> sorted idx 1, 2, 0, 3; mid = 2 -> high {0, 3}
    # group 1 (odd, n=3):  h = [0.2, 0.2, 0.1] -> sorted idx 6, 4, 5 (tie 4/5 keeps batch order);
    #                      mid = 1 -> high {4, 5} (the high half takes the extra response)
    metric = torch.tensor([0.5, 0.1, 0.3, 0.9, 0.2, 0.2, 0.1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert high_half_mask(metric, groups).tolist() == [True, False, False, True, True, True, False]
    # a tie straddling mid: h = [0.3, 0.3, 0.1, 0.3] -> sorted idx 2, 0, 1, 3 -> high {1, 3}
    assert high_half_mask(torch.tensor([0.3, 0.3, 0.1, 0.3]), torch.zeros(4)).tolist() == [
        False,
        True,
        False,
        True,
    ]


# ----------------------------------------------------------------------- entropy / length ----------


def test_entropy_variant_alpha_beta_mu() -> None:
    # rewards [1, 0, 1, 1], mean entropies [0.5, 0.1, 0.3, 0.9] -> low {1, 2}, high {0, 3}
    # R-bar- = (0 + 1)/2 = 0.5, R-bar+ = (1 + 1)/2 = 1; mu = 0.7, alpha = 1.5, beta = 0.1
    # high: mu (R - alpha R-bar- + beta) + (1 - mu)(R - R-bar+)
    #   i=0,3 (R=1): 0.7 (1 - 0.75 + 0.1) + 0.3 (1 - 1) = 0.7 * 0.35 = 0.245
    # low:  mu (alpha R - R-bar+ - beta) + (1 - mu)(R - R-bar-)
    #   i=1 (R=0): 0.7 (0 - 1 - 0.1) + 0.3 (0 - 0.5) = -0.77 - 0.15 = -0.92
    #   i=2 (R=1): 0.7 (1.5 - 1 - 0.1) + 0.3 (1 - 0.5) = 0.28 + 0.15 = 0.43
    # response 1 has 2 valid tokens (padding entropy NaN must be ignored)
    ctx = make_ctx([1, 0, 1, 1], [0, 0, 0, 0], mean_entropy=[0.5, 0.1, 0.3, 0.9], lengths=[4, 2, 4, 3])
    adv = run("canon", ctx, metric="entropy", mu=0.7, alpha=1.5, beta=0.1)
    close(seq(adv), [0.245, -0.92, 0.43, 0.245])
    # broadcast over the mask, zero on padding
    assert adv[1].tolist() == pytest.approx([-0.92, -0.92, 0.0, 0.0])
    assert adv[3, 3].item() == 0.0


def test_length_variant_puts_alpha_on_the_other_term() -> None:
    # lengths [3, 1, 2, 4] -> same order as above: low {1, 2}, high {0, 3}; R-bar- = 0.5, R-bar+ = 1
    # high: mu (alpha R - R-bar- + beta) + (1 - mu)(R - R-bar+)
    #   i=0,3 (R=1): 0.7 (1.5 - 0.5 + 0.1) + 0.3 * 0 = 0.77
    # low:  mu (R - alpha R-bar+ - beta) + (1 - mu)(R - R-bar-)
    #   i=1 (R=0): 0.7 (0 - 1.5 - 0.1) + 0.3 (0 - 0.5) = -1.12 - 0.15 = -1.27
    #   i=2 (R=1): 0.7 (1 - 1.5 - 0.1) + 0.3 (1 - 0.5) = -0.42 + 0.15 = -0.27
    ctx = make_ctx([1, 0, 1, 1], [0, 0, 0, 0], lengths=[3, 1, 2, 4])
    adv = run("canon", ctx, metric="length", mu=0.7, alpha=1.5, beta=0.1)
    close(seq(adv), [0.77, -1.27, -0.27, 0.77])


def test_odd_group_and_two_interleaved_groups() -> None:
    # group 7 = idx 0, 2, 4 (odd): h = [0.2, 0.2, 0.1], R = [0, 1, 1]
    #   sorted idx 4 (0.1), 0, 2 (tie: batch order); mid = 1 -> low {4}, high {0, 2}
    #   R-bar- = 1, R-bar+ = (0 + 1)/2 = 0.5; mu = 1: high R - R-bar-, low R - R-bar+
    #   A0 = 0 - 1 = -1, A2 = 1 - 1 = 0, A4 = 1 - 0.5 = 0.5
    # group 3 = idx 1, 3 (n=2): h = [0.9, 0.4], R = [1, 0] -> low {3}, high {1}
    #   A1 = 1 - 0 = 1, A3 = 0 - 1 = -1
    ctx = make_ctx([0, 1, 1, 0, 1], [7, 3, 7, 3, 7], mean_entropy=[0.2, 0.9, 0.2, 0.4, 0.1])
    close(seq(run("canon", ctx)), [-1.0, 1.0, 0.0, -1.0, 0.5])


def test_tie_breaking_is_batch_order() -> None:
    # h = [0.3, 0.3, 0.1, 0.3], R = [1, 0, 0, 0]: sorted idx 2, 0, 1, 3 -> low {2, 0}, high {1, 3}
    # R-bar- = (0 + 1)/2 = 0.5, R-bar+ = 0; mu = 1
    # A0 = 1 - 0 = 1, A1 = 0 - 0.5 = -0.5, A2 = 0 - 0 = 0, A3 = -0.5
    ctx = make_ctx([1, 0, 0, 0], [0, 0, 0, 0], mean_entropy=[0.3, 0.3, 0.1, 0.3])
    close(seq(run("canon", ctx)), [1.0, -0.5, 0.0, -0.5])


def test_singleton_group_follows_official_zero_means() -> None:
    # the official code sets both half means of a one-response group to 0; the response is "high"
    # entropy: mu (R + beta) + (1 - mu) R = 0.5 * 1.1 + 0.5 * 1 = 1.05
    # length (alpha = 2): mu (alpha R + beta) + (1 - mu) R = 0.5 * 2.1 + 0.5 = 1.55
    ctx = make_ctx([1.0], [0], mean_entropy=[0.4])
    close(seq(run("canon", ctx, mu=0.5, beta=0.1)), [1.05])
    close(seq(run("canon", ctx, metric="length", mu=0.5, alpha=2.0, beta=0.1)), [1.55])
    # defaults: just R
    close(seq(run("canon", ctx)), [1.0])


def test_all_equal_rewards() -> None:
    # alpha = 1, beta = 0: every term is R - R = 0 for any mu
    ctx = make_ctx([1, 1, 1, 1], [0, 0, 0, 0], mean_entropy=[0.1, 0.2, 0.3, 0.4])
    for mu in (0.0, 0.3, 1.0):
        close(seq(run("canon", ctx, mu=mu)), [0.0, 0.0, 0.0, 0.0])
    # alpha = 1.2 (official formula kept): low {0,1}: alpha R - R-bar+ = 1.2 - 1 = 0.2;
    # high {2,3}: R - alpha R-bar- = 1 - 1.2 = -0.2
    close(seq(run("canon", ctx, alpha=1.2)), [0.2, 0.2, -0.2, -0.2])


def test_mu_half_is_dr_grpo_for_equal_halves() -> None:
    gen = torch.Generator().manual_seed(0)
    groups = torch.arange(6).repeat_interleave(8)  # six groups of 8 (even -> equal halves)
    rewards = torch.randint(0, 2, (48,), generator=gen).float()
    ctx = make_ctx(rewards.tolist(), groups.tolist(), mean_entropy=torch.rand(48, generator=gen).tolist())
    adv = seq(run("canon", ctx, mu=0.5))
    dr_grpo = rewards - rewards.view(6, 8).mean(-1).repeat_interleave(8)
    close(adv, dr_grpo.tolist())


# --------------------------------------------------------------------------------- schedules -------


def test_cosine_restart_schedule_values() -> None:
    # warmup 30, total 150, 3 cycles -> cycle = (150 - 30) // 3 = 40; max 0.6, min 0
    assert cosine_restart_schedule(0) == pytest.approx(0.6 * 1 / 30)  # 0.02
    assert cosine_restart_schedule(29) == pytest.approx(0.6)  # 0.6 * 30/30
    assert cosine_restart_schedule(30) == pytest.approx(0.6)  # e = 0: 0.3 (1 + cos 0)
    assert cosine_restart_schedule(50) == pytest.approx(0.3)  # e = 20: 0.3 (1 + cos pi/2)
    assert cosine_restart_schedule(60) == pytest.approx(0.3 * (1 - math.sqrt(0.5)))  # cos(3pi/4): 0.0878680
    assert cosine_restart_schedule(69) == pytest.approx(0.3 * (1 + math.cos(math.pi * 39 / 40)))
    assert cosine_restart_schedule(70) == pytest.approx(0.6)  # restart
    assert cosine_restart_schedule(150) == pytest.approx(0.6)  # e = 120 = 3 * 40: restarts go on
    # the _r bounds: max 1, min 0.4 at e = 20 -> 0.4 + 0.3 (1 + 0) = 0.7
    assert cosine_restart_schedule(50, max_value=1.0, min_value=0.4) == pytest.approx(0.7)
    with pytest.raises(ConfigError):
        cosine_restart_schedule(0, warmup_steps=30, total_steps=31, cycles=3)


# batch for the schedule tests: R = [1, 0, 0, 0], h increasing -> low {0, 1}, high {2, 3}
# R-bar- = 0.5, R-bar+ = 0. With inter weight w (= mu) and intra weight 1 - w:
#   A0 = w (1 - 0) + (1 - w)(1 - 0.5);  A1 = w (0 - 0) + (1 - w)(0 - 0.5);
#   A2 = A3 = w (0 - 0.5) + (1 - w)(0 - 0)
SCHED_R = [1.0, 0.0, 0.0, 0.0]
SCHED_H = [0.1, 0.2, 0.3, 0.4]


def test_anneal_uses_batch_mean_reward() -> None:
    # batch mean reward 0.25 -> intra m = 1 - 0.25 = 0.75, inter w = 0.25
    # A0 = 0.25 + 0.75 * 0.5 = 0.625; A1 = 0.75 * -0.5 = -0.375; A2 = A3 = 0.25 * -0.5 = -0.125
    ctx = make_ctx(SCHED_R, [0, 0, 0, 0], mean_entropy=SCHED_H)
    close(seq(run("canon", ctx, schedule="anneal", mu=0.9)), [0.625, -0.375, -0.125, -0.125])  # mu ignored


def test_cosine_schedules_at_step() -> None:
    # ctx.step = 49 -> schedule step 49 + step_offset 1 = 50
    # cosine_restart: m = 0.3 -> w = 0.7: A0 = 0.7 + 0.3 * 0.5 = 0.85; A1 = 0.3 * -0.5 = -0.15;
    #                 A2 = A3 = 0.7 * -0.5 = -0.35
    ctx = make_ctx(SCHED_R, [0, 0, 0, 0], mean_entropy=SCHED_H, step=49)
    close(seq(run("canon", ctx, schedule="cosine_restart")), [0.85, -0.15, -0.35, -0.35])
    # cosine_restart_r: cos part 0.4 + 0.3 = 0.7, m = 1 - 0.7 = 0.3 -> the same w = 0.7
    close(seq(run("canon", ctx, schedule="cosine_restart_r")), [0.85, -0.15, -0.35, -0.35])
    # step_offset = 0 -> schedule step 49: m = 0.3 (1 + cos(19 pi / 40)), w = 1 - m
    m = 0.3 * (1 + math.cos(math.pi * 19 / 40))
    w = 1 - m
    expected = [w + (1 - w) * 0.5, (1 - w) * -0.5, w * -0.5, w * -0.5]
    close(seq(run("canon", ctx, schedule="cosine_restart", step_offset=0)), expected)
    # first step (ctx.step 0 -> 1): warm-up m = 0.6 * 2 / 30 = 0.04, w = 0.96
    ctx0 = make_ctx(SCHED_R, [0, 0, 0, 0], mean_entropy=SCHED_H, step=0)
    close(seq(run("canon", ctx0, schedule="cosine_restart")), [0.96 + 0.04 * 0.5, 0.04 * -0.5, -0.48, -0.48])


# ------------------------------------------------------------------------ length division ----------


def test_division_by_max_length_under_seq_mean_token_sum() -> None:
    # mu = 1: A = [1 - 0, 0 - 0, 0 - 0.5, 0 - 0.5] = [1, 0, -0.5, -0.5]
    base = dict(mean_entropy=SCHED_H)
    ctx = make_ctx(SCHED_R, [0, 0, 0, 0], agg_mode="seq-mean-token-sum", max_response_length=8, **base)
    close(seq(run("canon", ctx)), [1 / 8, 0.0, -0.5 / 8, -0.5 / 8])  # [0.125, 0, -0.0625, -0.0625]
    close(seq(run("canon", ctx, divide_by_max_length=False)), [1.0, 0.0, -0.5, -0.5])
    # other modes: no division unless forced; forced without max_response_length -> padded width 4
    ctx_tm = make_ctx(SCHED_R, [0, 0, 0, 0], agg_mode="token-mean", **base)
    close(seq(run("canon", ctx_tm)), [1.0, 0.0, -0.5, -0.5])
    close(seq(run("canon", ctx_tm, divide_by_max_length=True)), [0.25, 0.0, -0.125, -0.125])


# ---------------------------------------------------------------------------- random / errors ------


def test_canon_random_splits_by_batch_order() -> None:
    # group by batch order: low {0, 1} (R-bar- = 1), high {2, 3} (R-bar+ = 0); entropy not needed
    # mu = 1: low R - R-bar+ = [1, 1]; high R - R-bar- = [-1, -1]
    ctx = make_ctx([1, 1, 0, 0], [0, 0, 0, 0])
    close(seq(run("canon_random", ctx)), [1.0, 1.0, -1.0, -1.0])


def test_errors() -> None:
    ctx = make_ctx([1, 0], [0, 0])  # no old_entropy
    with pytest.raises(MissingInputError, match="old_entropy"):
        run("canon", ctx)
    close(seq(run("canon", ctx, metric="length")), [1.0, -1.0])  # equal lengths: batch order
    with pytest.raises(ConfigError, match="metric"):
        run("canon", ctx, metric="perplexity")
    with pytest.raises(ConfigError, match="schedule"):
        run("canon", ctx, metric="length", schedule="linear")
    with pytest.raises(ConfigError, match="knob"):
        advantage.build("canon", {"lambda_": 0.5})


# -------------------------------------------------------------------------- slow reference ---------


def reference_canon(
    rewards: list[float], groups: list[int], metric: list[float], *, variant: str, mu: float, alpha: float, beta: float
) -> list[float]:
    """Loop form of the official functions: Python's stable ``sorted`` by metric, mid = n // 2."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = [0.0] * len(rewards)
    for idx in members.values():
        order = sorted(idx, key=lambda i: metric[i])
        mid = len(order) // 2
        high = set(order[mid:])
        if len(order) == 1:
            m_hi = m_lo = 0.0
        else:
            m_hi = sum(rewards[i] for i in order[mid:]) / len(order[mid:])
            m_lo = sum(rewards[i] for i in order[:mid]) / len(order[:mid])
        for i in idx:
            r = rewards[i]
            if variant == "entropy":
                a = (
                    mu * (r - alpha * m_lo + beta) + (1 - mu) * (r - m_hi)
                    if i in high
                    else mu * (alpha * r - m_hi - beta) + (1 - mu) * (r - m_lo)
                )
            else:
                a = (
                    mu * (alpha * r - m_lo + beta) + (1 - mu) * (r - m_hi)
                    if i in high
                    else mu * (r - alpha * m_hi - beta) + (1 - mu) * (r - m_lo)
                )
            out[i] = a
    return out


@pytest.mark.parametrize("variant", ["entropy", "length"])
def test_matches_slow_reference(variant: str) -> None:
    rng = random.Random(1)
    for _ in range(20):
        sizes = [rng.choice([1, 2, 3, 4, 5, 8]) for _ in range(rng.randint(1, 5))]
        groups = [g for g, n in enumerate(sizes) for _ in range(n)]
        rng.shuffle(groups)
        b = len(groups)
        rewards = [float(rng.choice([0, 1, 0.5])) for _ in range(b)]
        lengths = [rng.randint(1, 4) for _ in range(b)]  # many ties
        h = [rng.choice([0.1, 0.2, 0.3]) for _ in range(b)]  # many ties
        mu, alpha, beta = rng.random(), rng.uniform(0.5, 1.5), rng.uniform(-0.2, 0.2)
        ctx = make_ctx(rewards, groups, mean_entropy=h, lengths=lengths)
        got = seq(run("canon", ctx, metric=variant, mu=mu, alpha=alpha, beta=beta))
        metric = h if variant == "entropy" else [float(n) for n in lengths]
        want = reference_canon(rewards, groups, metric, variant=variant, mu=mu, alpha=alpha, beta=beta)
        close(got, want)
