"""riskpo: bundles and papers, the mixed-VaR paper advantage and credit modes by hand, a naive reference,
and the quantile tracker (timing, modes, checkpoint state)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.riskpo import bundle_ids_of, bundle_papers
from rlvr.errors import ConfigError

SQRT3 = math.sqrt(3.0)


def make_ctx(rewards: list[float], groups: list[int], step: int = 0, width: int = 2) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.ones(len(rewards), width),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        group_ids=torch.tensor(groups),
        step=step,
    )


def seq(adv: torch.Tensor) -> list[float]:
    return adv[:, 0].tolist()


# two prompts x 3 responses, one bundle: A = [1, 0, 1], B = [0, 0, 1]; papers (0,3), (1,4), (2,5): S = 1, 0, 2.
# torch.quantile of [0, 1, 2]: q_0.2 = 0.4, q_0.9 = 1.8; sigma_b = 1.
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
GROUPS = [0, 0, 0, 1, 1, 1]
EXACT = {"bundle_size": 2, "eps": 0.0}


def test_bundles_follow_prompt_order_and_papers_take_the_jth_response() -> None:
    groups = torch.tensor([7, 7, 3, 3, 5, 5, 5])
    assert bundle_ids_of(groups, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    (first, second) = bundle_papers(groups, bundle_ids_of(groups, 2))
    assert first.tolist() == [[0, 2], [1, 3]]  # paper j = (j-th response of group 7, j-th of group 3)
    assert second.tolist() == [[4], [5], [6]]
    # unequal groups: 2 papers (the smaller group), the third response of the larger group is left out
    (only,) = bundle_papers(torch.tensor([0, 0, 0, 1, 1]), torch.zeros(5, dtype=torch.long))
    assert only.tolist() == [[0, 3], [1, 4]]
    with pytest.raises(ConfigError, match="splits a group"):
        bundle_papers(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))


def test_mixed_var_advantage_with_std_credit_by_hand() -> None:
    comp = advantage.build("riskpo", EXACT)
    adv = comp(make_ctx(REWARDS, GROUPS))
    # A_R = [(S - .4)^+ - (S - 1.8)^+ + (.4 - 1.8)] / .7: S=1: -0.8/.7 = -8/7; S=0: -2; S=2: 0
    # A_C = -(.4 - S)^+ / .2: S=0: -2, else 0;  mixed (1.5 A_C + A_R) / 2.5: -16/35 = -0.457143, -2, 0
    # credit "std": / sigma_q, both questions have std(1, 0, 1) = std(0, 0, 1) = 1/sqrt(3)
    paper = [-16 / 35 * SQRT3, -2 * SQRT3, 0.0]
    assert seq(adv) == pytest.approx([paper[0], paper[1], paper[2], paper[0], paper[1], paper[2]], abs=1e-9)
    assert adv[:, 1].tolist() == seq(adv)  # broadcast to every valid token
    assert comp.fn.metrics["riskpo/q_low"] == pytest.approx(0.4)
    assert comp.fn.metrics["riskpo/q_high"] == pytest.approx(1.8)
    assert comp.fn.metrics["riskpo/tracked"] == 0.0  # first step: empty tracker -> per-bundle quantiles


def test_risk_measures_and_credit_modes_by_hand() -> None:
    ctx = make_ctx(REWARDS, GROUPS)

    def run(**knobs: object) -> list[float]:
        return seq(advantage.build("riskpo", {**EXACT, "norm_by_std": False, **knobs})(ctx))

    assert run(credit="uniform") == pytest.approx([-16 / 35, -2, 0, -16 / 35, -2, 0], abs=1e-9)
    assert run(credit="uniform", risk="rvar") == pytest.approx([-8 / 7, -2, 0, -8 / 7, -2, 0], abs=1e-9)
    # upper tail: (1.5 (S - 1.8)^+ / 0.1 + A_R) / 2.5: S=2: 3 / 2.5 = 1.2; S=1: -8/7 / 2.5; S=0: -2 / 2.5
    assert run(credit="uniform", risk="upper") == pytest.approx([-16 / 35, -0.8, 1.2, -16 / 35, -0.8, 1.2], abs=1e-9)
    # no natural baseline: A_R = [(S - .4)^+ - (S - 1.8)^+] / .7 = 6/7, 0, 2 (rvar only)
    assert run(credit="uniform", risk="rvar", natural_baseline=False) == pytest.approx(
        [6 / 7, 0, 2, 6 / 7, 0, 2], abs=1e-9
    )
    # score: 0.5 A for a rewarded response, 1.5 A otherwise
    assert run(credit="score") == pytest.approx([-8 / 35, -3, 0, -24 / 35, -3, 0], abs=1e-9)
    # sum_mean: paper 0 ratios (1 - 2/3, 0 - 1/3) sum to 0 -> halves; paper 1 (-2/3, -1/3) -> 2/3, 1/3 of -2
    assert run(credit="sum_mean") == pytest.approx([-8 / 35, -4 / 3, 0, -8 / 35, -2 / 3, 0], abs=1e-9)


def naive_riskpo(rewards: list[float], groups: list[int], size: int, alpha: float, beta: float, credit: str) -> list[float]:
    """Slow reference: bundles, papers and the mixed-VaR advantage with explicit loops (official defaults)."""
    order: list[int] = []
    for g in groups:
        if g not in order:
            order.append(g)
    out = [0.0] * len(rewards)
    eps = 1e-6
    for start in range(0, len(order), size):
        questions = [[i for i, g in enumerate(groups) if g == q] for q in order[start : start + size]]
        n = min(len(rows) for rows in questions)
        papers = [[rows[j] for rows in questions] for j in range(n)]
        scores = [sum(rewards[i] for i in paper) for paper in papers]
        ranked = sorted(scores)

        def quantile(level: float) -> float:
            pos = level * (len(ranked) - 1)
            lo = math.floor(pos)
            hi = min(lo + 1, len(ranked) - 1)
            return ranked[lo] + (pos - lo) * (ranked[hi] - ranked[lo])

        if n == 1:
            qa = qb = scores[0]
            std = 1.0
        else:
            qa, qb = quantile(alpha), quantile(beta)
            mean = sum(scores) / n
            std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
        for paper, s in zip(papers, scores):
            a_r = (max(s - qa, 0) - max(s - qb, 0) + qa - qb) / (beta - alpha + eps)
            a_c = -max(qa - s, 0) / (alpha + eps)
            a = (1.5 * a_c + a_r) / 2.5 / (std + eps)
            for i in paper:
                rs = [rewards[k] for k, g in enumerate(groups) if g == groups[i]]
                m = sum(rs) / len(rs)
                sq = math.sqrt(sum((r - m) ** 2 for r in rs) / (len(rs) - 1)) if len(rs) > 1 else 0.0
                out[i] = a / ((sq if sq > 1e-3 else 1.0) + eps) if credit == "std" else a
    return out


def test_matches_the_naive_reference_on_several_bundles() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (28,), generator=gen).double().tolist()
    groups = [g for g in (4, 1, 6, 0, 3, 5, 2) for _ in range(4)]  # 7 prompts x 4: bundles of 3, 3, 1
    for credit in ("std", "uniform"):
        knobs = {"bundle_size": 3, "alpha": 0.25, "beta": 0.75, "credit": credit}
        got = seq(advantage.build("riskpo", knobs)(make_ctx(rewards, groups)))
        assert got == pytest.approx(naive_riskpo(rewards, groups, 3, 0.25, 0.75, credit), abs=1e-9)


# step 1 batch: A = [1, 1, 1], B = [1, 0, 1]: papers S = 2, 1, 2; per-bundle q_0.2 = 1.4, q_0.9 = 2
STEP1 = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
PLAIN = {**EXACT, "risk": "rvar", "credit": "uniform", "norm_by_std": False}


def test_tracked_quantiles_are_used_from_the_next_step_and_updated_in_prepare() -> None:
    comp = advantage.build("riskpo", PLAIN)  # quantiles="tracked" (default)
    first = make_ctx(REWARDS, GROUPS, step=0)
    comp(first)
    assert comp.prepare(first) == {"riskpo/track_q_low": pytest.approx(0.4), "riskpo/track_q_high": pytest.approx(1.8)}
    second = make_ctx(STEP1, GROUPS, step=1)
    # tracked q = (0.4, 1.8): S=2: (1.6 - 0.2 - 1.4)/.7 = 0; S=1: (0.6 - 1.4)/.7 = -8/7
    assert seq(comp(second)) == pytest.approx([0, -8 / 7, 0, 0, -8 / 7, 0], abs=1e-9)
    assert comp.fn.metrics["riskpo/tracked"] == 1.0
    assert seq(comp(second)) == pytest.approx([0, -8 / 7, 0, 0, -8 / 7, 0], abs=1e-9)  # calling again changes nothing
    # official behaviour: per-bundle q = (1.4, 2): S=1: (0 - 0 - 0.6)/.7 = -6/7, whatever the tracker holds
    bundle = advantage.build("riskpo", {**PLAIN, "quantiles": "bundle"})
    bundle.prepare(first)
    assert seq(bundle(second)) == pytest.approx([0, -6 / 7, 0, 0, -6 / 7, 0], abs=1e-9)
    # mix: q = (0.9, 1.9): S=1: (0.1 - 1.0)/.7 = -9/7; S=2: (1.1 - 0.1 - 1.0)/.7 = 0
    mix = advantage.build("riskpo", {**PLAIN, "quantiles": "mix"})
    mix.prepare(first)
    assert seq(mix(second)) == pytest.approx([0, -9 / 7, 0, 0, -9 / 7, 0], abs=1e-9)
    # pinball SGD step with the step-1 papers [2, 1, 2]: q_a = 0.4 + 0.1 (0.2 - 0) = 0.42,
    # q_b = 1.8 + 0.1 (0.9 - 1/3) = 1.856667
    metrics = comp.prepare(second)
    assert metrics["riskpo/track_q_low"] == pytest.approx(0.42)
    assert metrics["riskpo/track_q_high"] == pytest.approx(1.8 + 0.1 * (0.9 - 1 / 3))


def test_tracker_state_round_trips_through_plain_containers() -> None:
    comp = advantage.build("riskpo", PLAIN)
    assert comp.state_dict()["q"].numel() == 0
    comp.prepare(make_ctx(REWARDS, GROUPS))
    comp.prepare(make_ctx(STEP1, GROUPS, step=1))
    state = comp.state_dict()
    assert set(state) == {"q", "updates"} and isinstance(state["q"], torch.Tensor) and state["updates"] == 2
    fresh = advantage.build("riskpo", PLAIN)
    fresh.load_state_dict(state)
    ctx = make_ctx(STEP1, GROUPS, step=2)
    assert torch.equal(fresh(ctx), comp(ctx))
    assert fresh.fn.metrics["riskpo/tracked"] == 1.0


def test_given_bundle_ids_and_knob_checks() -> None:
    ctx = make_ctx(REWARDS, GROUPS)
    ctx.extras["bundle_ids"] = torch.tensor([0, 0, 0, 1, 1, 1])  # each prompt its own bundle
    adv = seq(advantage.build("riskpo", {**PLAIN, "bundle_size": 5})(ctx))
    # bundle A alone: papers S = 1, 0, 1 -> q_0.2 = 0.4, q_0.9 = 1: S=1: (0.6 - 0 - 0.6)/.7 = 0; S=0: -0.6/.7
    assert adv[:3] == pytest.approx([0, -6 / 7, 0], abs=1e-9)
    with pytest.raises(ConfigError, match="alpha < beta"):
        advantage.build("riskpo", {"alpha": 0.9, "beta": 0.2})


def test_helpers_reject_unknown_choices() -> None:
    from rlvr.algos.riskpo import credit_to_responses, mvar_advantage

    scores = torch.tensor([0.0, 1.0], dtype=torch.float64)
    knobs = dict(alpha=0.2, beta=0.9, w_mix=1.5, upper_weight=1.5, natural_baseline=True, eps=0.0)
    with pytest.raises(ConfigError, match="risk 'bogus'"):
        mvar_advantage(scores, 0.2, 0.9, risk="bogus", **knobs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="credit 'bogus'"):
        credit_to_responses(scores, torch.tensor([[0], [1]]), scores, torch.zeros(2), "bogus", 0.0)  # type: ignore[arg-type]
