"""KL-Cov (arXiv 2505.22617): hand-computed values, a python-loop reference of the official function,
and the batch / micro covariance scopes."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.kl_cov import kl_cov_selection
from rlvr.errors import ConfigError

# Same layout as test_clip_cov: cov = 1.04 0.64 -0.96 / -1.56 2.64 (pad) on the current log-probs.
LOGP = [[-0.5, -1.0, -3.0], [-0.5, -4.0, float("nan")]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]


def make_ctx(logp=LOGP, old=None, adv=ADV, mask=MASK, **kw) -> tuple[AlgoContext, torch.Tensor]:
    logprobs = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    if old is None:
        old = [[x - 0.1 for x in row] for row in logp]  # log r = 0.1 everywhere
    ctx = AlgoContext(
        response_mask=torch.tensor(mask, dtype=torch.float64),
        logprobs=logprobs,
        old_logprobs=torch.tensor(old, dtype=torch.float64),
        advantages=torch.tensor(adv, dtype=torch.float64),
        **kw,
    )
    return ctx, logprobs


def test_top_covariance_tokens_get_the_kl_penalty() -> None:
    # kl_cov_ratio 0.4 -> int(0.4 * 5) = 2 tokens with the largest cov: (1,1) 2.64 and (0,0) 1.04.
    ctx, lp = make_ctx()
    out = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.4, "ppo_kl_coef": 2.0, "scope": "micro"})(ctx)
    r = math.exp(0.1)
    # unselected: -A r (no clipping); selected: -A r + 2 * |0.1|
    expected = [[-r + 0.2, -r, -r], [r, r + 0.2, 0.0]]
    assert out.per_token[0].tolist() == pytest.approx(expected[0], abs=1e-12)
    assert out.per_token[1].tolist() == pytest.approx(expected[1], abs=1e-12)
    # d/dlogp: -A r + beta * sign(log r)
    (grad,) = torch.autograd.grad(out.per_token.sum(), lp)
    assert grad.tolist()[0] == pytest.approx([-r + 2.0, -r, -r], abs=1e-12)
    assert grad.tolist()[1] == pytest.approx([r, r + 2.0, 0.0], abs=1e-12)
    m = out.metrics
    assert m["kl_cov/frac_selected"] == pytest.approx(0.4)
    assert m["kl_cov/abs_log_ratio_selected"] == pytest.approx(0.1)
    assert m["approx_kl"] == pytest.approx(-0.1)
    assert m["kl_cov/batch_scope"] == 0.0


def test_no_clipping_even_far_from_one() -> None:
    ctx, _ = make_ctx(old=[[x - 2.0 for x in row] for row in LOGP])  # r = e^2, PPO would clip
    out = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.0, "scope": "micro"})(ctx)  # 0 -> nothing selected
    r = math.exp(2.0)
    assert out.per_token[0].tolist() == pytest.approx([-r, -r, -r])
    assert out.metrics["kl_cov/frac_selected"] == 0.0


def official_kl_cov_reference(logp, old, adv, mask, *, ratio, coef):
    cells = [(i, t) for i in range(len(logp)) for t in range(len(logp[0])) if mask[i][t] > 0]
    n = len(cells)
    mean_a = sum(adv[i][t] for i, t in cells) / n
    mean_lp = sum(logp[i][t] for i, t in cells) / n
    cov = {(i, t): (adv[i][t] - mean_a) * (logp[i][t] - mean_lp) for i, t in cells}
    k = max(1, int(n * ratio))
    top = sorted(cells, key=lambda c: -cov[c])[:k]
    out = [[0.0] * len(logp[0]) for _ in logp]
    for i, t in cells:
        lr = logp[i][t] - old[i][t]
        out[i][t] = -adv[i][t] * math.exp(lr) + (coef * abs(lr) if (i, t) in top else 0.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows, cols = 5, 8
    mask = [[1.0 if t < rng.randint(2, cols) else 0.0 for t in range(cols)] for _ in range(rows)]
    adv = [[a] * cols for a in (rng.uniform(-2, 2) for _ in range(rows))]
    logp = [[-rng.uniform(0.0, 5.0) for _ in range(cols)] for _ in range(rows)]
    old = [[x + rng.uniform(-0.3, 0.3) for x in row] for row in logp]
    ctx, _ = make_ctx(logp=logp, old=old, adv=adv, mask=mask)
    out = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.15, "ppo_kl_coef": 0.7, "scope": "micro"})(ctx)
    ref = official_kl_cov_reference(logp, old, adv, mask, ratio=0.15, coef=0.7)
    assert torch.allclose(out.per_token, torch.tensor(ref, dtype=torch.float64), atol=1e-12)


def test_batch_scope_selects_on_old_logprobs_over_the_whole_batch() -> None:
    # current log-probs equal LOGP, old ones move token (0,2) up so that on the OLD policy the
    # top-covariance token set differs from the current one.
    old = [[-0.6, -1.1, 2.0], [-0.6, -4.1, 0.0]]
    ctx, _ = make_ctx(old=old, step=7)
    ctx.extras["row_index"] = torch.arange(2)
    comp = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.2, "ppo_kl_coef": 1.0})  # k = 1
    prep = comp.prepare(ctx)
    # old: mean A = 0.2, mean lp = (-0.6-1.1+2.0-0.6-4.1)/5 = -0.88; cov(0,2) = 0.8*2.88 = 2.304,
    # cov(1,1) = -1.2*-3.22 = 3.864 -> the top token is still (1,1); check it and the row mapping.
    assert prep["kl_cov/batch/cov_max"] == pytest.approx(3.864)
    out1 = comp(ctx.select(torch.tensor([1])))
    out0 = comp(ctx.select(torch.tensor([0])))
    assert out1.metrics["kl_cov/batch_scope"] == 1.0
    lr11 = -4.0 - -4.1
    assert out1.per_token[0, 1].item() == pytest.approx(math.exp(lr11) + abs(lr11))
    assert out0.metrics["kl_cov/frac_selected"] == 0.0


def test_batch_scope_differs_from_micro_when_the_ranking_changes() -> None:
    adv = [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]
    old = [[-0.5, -1.0, 8.0], [-0.5, -4.1, 0.0]]  # on the old policy (0,2) has the largest cov
    ctx, _ = make_ctx(old=old, adv=adv, step=0)
    ctx.extras["row_index"] = torch.arange(2)
    batch = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.2})
    batch.prepare(ctx)
    micro = policy_loss.build("kl_cov", {"kl_cov_ratio": 0.2, "scope": "micro"})
    sel_batch = batch(ctx).per_token - policy_loss.build("kl_cov", {"kl_cov_ratio": 0.0, "scope": "micro"})(ctx).per_token
    sel_micro = micro(ctx).per_token - policy_loss.build("kl_cov", {"kl_cov_ratio": 0.0, "scope": "micro"})(ctx).per_token
    assert (sel_batch != 0).nonzero().tolist() == [[0, 2]]
    assert (sel_micro != 0).nonzero().tolist() == [[1, 1]]


def test_selection_helper_and_knob_errors() -> None:
    cov = torch.tensor([[3.0, 1.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert kl_cov_selection(cov, mask, kl_cov_ratio=0.5).tolist() == [[True, False, False, False]]  # max(1, int(1.5))
    assert kl_cov_selection(cov, mask, kl_cov_ratio=0.7).tolist() == [[True, False, True, False]]
    assert not kl_cov_selection(cov, torch.zeros_like(mask), kl_cov_ratio=0.5).any()
    for knobs in ({"kl_cov_ratio": 0.2 * 100}, {"ppo_kl_coef": -1.0}, {"scope": "x"}):
        with pytest.raises(ConfigError):
            policy_loss.build("kl_cov", knobs)
