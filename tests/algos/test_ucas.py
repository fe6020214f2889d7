"""UCAS (arXiv 2510.10649): a python-loop reference of the official advantage and hand-checked cases."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.ucas import minmax_normalise
from rlvr.errors import ConfigError, MissingInputError


def make_ctx(rewards, groups, certainty, raw, mask) -> AlgoContext:
    return AlgoContext(
        response_mask=torch.tensor(mask),
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(groups),
        old_self_certainty=torch.tensor(certainty),
        old_raw_logit=torch.tensor(raw),
    )


def reference(rewards, groups, certainty, raw, mask, *, bp=0.25, bn=0.35, pen=0.05, eps=1e-6):
    """xvolcano02/UCAS compute_ucas_advantage with python loops: GRPO A, summed certainty z-scored per group,
    batch min-max of raw logits."""
    n, t_len = len(rewards), len(mask[0])
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    cert = [sum(certainty[i][t] for t in range(t_len) if mask[i][t]) for i in range(n)]

    def mean_std(vals):
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 1.0
        return m, s

    adv, chat = [0.0] * n, [0.0] * n
    for rows in members.values():
        mr, sr = mean_std([rewards[i] for i in rows])
        mc, sc = mean_std([cert[i] for i in rows])
        for i in rows:
            adv[i] = (rewards[i] - (mr if len(rows) > 1 else 0.0)) / (sr + eps)
            chat[i] = (cert[i] - mc) / (sc + eps) if len(rows) > 1 else 0.0
    vals = [raw[i][t] for i in range(n) for t in range(t_len) if mask[i][t]]
    lo, hi = min(vals), max(vals)
    out = [[0.0] * t_len for _ in range(n)]
    for i in range(n):
        m = math.exp(-bp * chat[i]) if adv[i] > 0 else math.exp(bn * chat[i])
        for t in range(t_len):
            if not mask[i][t]:
                continue
            z = (raw[i][t] - lo) / (hi - lo) if hi - lo >= 1e-8 else 0.0
            v = adv[i] * m - pen * z
            out[i][t] = max(v, 0.0) if adv[i] * m > 0 else v
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    groups = [g for g in range(3) for _ in range(4)] + [3]  # plus a singleton group
    n, t_len = len(groups), 6
    rewards = [float(rng.random() < 0.5) for _ in range(n)]
    mask = [[1.0 if t < rng.randint(1, t_len) else 0.0 for t in range(t_len)] for _ in range(n)]
    certainty = [[rng.uniform(10.0, 13.0) for _ in range(t_len)] for _ in range(n)]
    raw = [[rng.uniform(-5.0, 30.0) for _ in range(t_len)] for _ in range(n)]
    got = advantage.build("ucas", {})(make_ctx(rewards, groups, certainty, raw, mask))
    ref = reference(rewards, groups, certainty, raw, mask)
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)


def test_hand_checked_modifier_penalty_and_clamp() -> None:
    # one group of two: rewards 1, 0 -> GRPO A = +-0.70711 (std sqrt(0.5)).
    # certainty sums 3 and 1 -> C_hat = +-0.70711; the correct answer is the confident one.
    mask = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    certainty = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    raw = [[0.0, 10.0, 5.0], [10.0, 99.0, 99.0]]  # padding values must be ignored by the min-max
    got = advantage.build("ucas", {"penalty": 1.0})(make_ctx([1.0, 0.0], [0, 0], certainty, raw, mask))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (1 - 0.5) / (0.70711 + eps)
    c = 1.0 / (math.sqrt(2.0) + 1e-6)  # (3 - 2) / std([3, 1]) = 1 / 1.41421
    pos = a * math.exp(-0.25 * c)  # 0.59096
    neg = -a * math.exp(0.35 * -c)  # the wrong answer is the unconfident one: pushed down less
    # z_hat over valid tokens (min 0, max 10): [0, 1, 0.5] / [1]
    assert got[0].tolist() == pytest.approx([pos - 0.0, max(pos - 1.0, 0.0), pos - 0.5], abs=1e-5)
    assert got[0, 1].item() == 0.0  # clamped: a positive advantage never turns negative
    assert got[1].tolist() == pytest.approx([neg - 1.0, 0.0, 0.0], abs=1e-5)


def test_zero_advantage_tokens_get_only_the_penalty_and_row_norm() -> None:
    mask = [[1.0, 1.0], [1.0, 1.0]]
    ctx = make_ctx([1.0, 1.0], [0, 0], [[1.0, 2.0], [3.0, 4.0]], [[0.0, 4.0], [2.0, 2.0]], mask)
    got = advantage.build("ucas", {})(ctx)
    assert got.tolist()[0] == pytest.approx([0.0, -0.05], abs=1e-7)
    assert got.tolist()[1] == pytest.approx([-0.025, -0.025], abs=1e-7)
    row = minmax_normalise(ctx.old_raw_logit, ctx.response_mask, "row")
    assert row.tolist() == [[0.0, 1.0], [0.0, 0.0]]  # constant row -> 0


def test_errors() -> None:
    for knobs in ({"certainty_agg": "max"}, {"logit_norm": "global"}, {"base": "ucas"}, {"base_kwargs": {"x": 1}}):
        with pytest.raises(ConfigError):
            advantage.build("ucas", knobs)
    ctx = make_ctx([1.0, 0.0], [0, 0], [[1.0], [1.0]], [[1.0], [1.0]], [[1.0], [1.0]])
    ctx.old_raw_logit = None
    with pytest.raises(MissingInputError, match="old_raw_logit"):
        advantage.build("ucas", {})(ctx)


def test_composes_with_seed_grpo_base() -> None:
    ctx = make_ctx([1.0, 0.0], [0, 0], [[1.0], [2.0]], [[1.0], [1.0]], [[1.0], [1.0]])
    ctx.extras["responses"] = ["\\boxed{1}", "\\boxed{2}"]
    got = advantage.build("ucas", {"base": "seed_grpo", "base_kwargs": {"alpha": 0.5}, "penalty": 0.0})(ctx)
    # seed_grpo on dr_grpo: +-0.5 * (1 - 0.5) (two different answers: SE = SE_max);
    # certainty 1 vs 2: C_hat = -+0.5 / std([1, 2]) = -+0.70711
    c = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert got[:, 0].tolist() == pytest.approx([0.25 * math.exp(0.25 * c), -0.25 * math.exp(0.35 * c)], abs=1e-5)
