"""Lp-Reg (arXiv 2510.03222): hand-computed selection and loss, and a python-loop reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.errors import ConfigError, MissingInputError


def k3(lp: float, proxy: float) -> float:
    d = proxy - lp
    return min(10.0, max(-10.0, math.exp(d) - d - 1.0))


def make_ctx(logp, old, adv, proxy, mask=None) -> tuple[AlgoContext, torch.Tensor]:
    logprobs = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    ctx = AlgoContext(
        response_mask=torch.tensor(mask if mask is not None else [[1.0] * len(logp[0])] * len(logp), dtype=torch.float64),
        logprobs=logprobs,
        old_logprobs=torch.tensor(old, dtype=torch.float64),
        advantages=torch.tensor(adv, dtype=torch.float64),
        old_minp_logprobs=torch.tensor(proxy, dtype=torch.float64),
    )
    return ctx, logprobs


# one row, six tokens: four negative-advantage tokens with current log-probs -5, -1, -6, -2
LOGP = [[-5.0, -1.0, -6.0, -2.0, -7.0, -0.5]]
OLD = [[-5.0, -1.0, -6.0, -2.0, -7.0, -0.5]]
ADV = [[-1.0, -1.0, -1.0, -1.0, 2.0, 2.0]]
# proxy: (0) -4 > -5: amplified; (2) -1e4 - 1: filtered out by min-p; others irrelevant
PROXY = [[-4.0, -0.9, -10001.0, -1.5, -3.0, -0.4]]


def test_selects_lowest_negative_tokens_below_their_proxy() -> None:
    # neg_ratio 0.5 -> k = int(0.5 * 4) = 2 lowest among negatives: (2) lp -6 and (0) lp -5.
    # (2) has proxy -10001 < -6: skipped. (0): -5 < -4: regularised. The A>0 token (4) at -7 is not a candidate.
    ctx, lp = make_ctx(LOGP, OLD, ADV, PROXY)
    out = policy_loss.build("lp_reg", {"neg_ratio": 0.5})(ctx)
    kl0 = k3(-5.0, -4.0)  # e - 1 - 1 = 0.71828
    assert kl0 == pytest.approx(math.e - 2.0)
    assert out.per_token[0].tolist() == pytest.approx([1.0 + kl0, 1.0, 1.0, 1.0, -2.0, -2.0])
    (grad,) = torch.autograd.grad(out.per_token.sum(), lp)
    # d/dlp of -A r + k3: -A r + (1 - e^{proxy - lp}) = 1 + 1 - e
    assert grad[0].tolist() == pytest.approx([2.0 - math.e, 1.0, 1.0, 1.0, -2.0, -2.0])
    m = out.metrics
    assert m["lp_reg/frac_selected"] == pytest.approx(1 / 6)
    assert m["lp_reg/frac_lowest"] == pytest.approx(2 / 6)
    assert m["lp_reg/kl_selected"] == pytest.approx(kl0)
    assert m["lp_reg/frac_minp_filtered"] == pytest.approx(1 / 6)


def test_unselected_tokens_keep_the_clipped_ppo_loss_and_selected_are_unclipped() -> None:
    old = [[-5.5, -1.5, -6.0, -2.0, -7.0, -0.5]]  # log r = +0.5 on tokens 0 and 1 (r = 1.6487)
    ctx, _ = make_ctx(LOGP, old, ADV, PROXY)
    out = policy_loss.build("lp_reg", {"neg_ratio": 0.5, "clip_low": 0.2, "clip_high": 0.2})(ctx)
    r = math.exp(0.5)
    assert out.per_token[0, 0].item() == pytest.approx(r + k3(-5.0, -4.0))  # -A r, unclipped
    assert out.per_token[0, 1].item() == pytest.approx(r)  # A < 0, r > 1.2: max(r, 1.2) = r
    assert out.metrics["clip_frac"] == 0.0


def test_positive_side_and_official_min_k() -> None:
    ctx, _ = make_ctx(LOGP, OLD, ADV, PROXY)
    # pos_ratio 0.5 -> k = 1 lowest positive token: (4) lp -7 < proxy -3 -> regularised (A = 2)
    out = policy_loss.build("lp_reg", {"neg_ratio": 0.0, "pos_ratio": 0.5})(ctx)
    assert out.per_token[0, 4].item() == pytest.approx(-2.0 + k3(-7.0, -3.0))
    assert out.metrics["lp_reg/frac_selected"] == pytest.approx(1 / 6)
    # the official code only regularises a side when k > 1: k = 1 here -> nothing
    strict = policy_loss.build("lp_reg", {"neg_ratio": 0.0, "pos_ratio": 0.5, "official_min_k": True})(ctx)
    assert strict.metrics["lp_reg/frac_selected"] == 0.0
    # default neg_ratio 0.01 on 4 negatives: k = max(1, 0) = 1 -> (2), filtered by min-p -> nothing
    assert policy_loss.build("lp_reg", {})(ctx).metrics["lp_reg/frac_lowest"] == pytest.approx(1 / 6)
    assert policy_loss.build("lp_reg", {})(ctx).metrics["lp_reg/frac_selected"] == 0.0


def reference(logp, old, adv, proxy, mask, *, neg_ratio, beta, clip_low, clip_high):
    rows, cols = len(logp), len(logp[0])
    cells = [(i, t) for i in range(rows) for t in range(cols) if mask[i][t] > 0]
    neg = sorted((c for c in cells if adv[c[0]][c[1]] < 0), key=lambda c: logp[c[0]][c[1]])
    lowest = neg[: max(1, int(len(neg) * neg_ratio))] if neg and neg_ratio > 0 else []
    chosen = {c for c in lowest if logp[c[0]][c[1]] < proxy[c[0]][c[1]]}
    out = [[0.0] * cols for _ in range(rows)]
    for i, t in cells:
        r = math.exp(logp[i][t] - old[i][t])
        a = adv[i][t]
        if (i, t) in chosen:
            out[i][t] = -a * r + beta * k3(logp[i][t], proxy[i][t])
        else:
            out[i][t] = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows, cols = 4, 30
    mask = [[1.0 if t < rng.randint(10, cols) else 0.0 for t in range(cols)] for _ in range(rows)]
    adv = [[a] * cols for a in (rng.choice([-1.0, -0.3, 0.7]) for _ in range(rows))]
    logp = [[-rng.uniform(0.0, 9.0) for _ in range(cols)] for _ in range(rows)]
    old = [[x + rng.uniform(-0.5, 0.5) for x in row] for row in logp]
    proxy = [[x + rng.choice([-1.0, 0.8, -1e4]) for x in row] for row in old]
    ctx, _ = make_ctx(logp, old, adv, proxy, mask)
    out = policy_loss.build("lp_reg", {"neg_ratio": 0.2, "beta": 0.5, "clip_low": 0.2, "clip_high": 0.28})(ctx)
    ref = reference(logp, old, adv, proxy, mask, neg_ratio=0.2, beta=0.5, clip_low=0.2, clip_high=0.28)
    assert out.metrics["lp_reg/frac_selected"] > 0
    assert torch.allclose(out.per_token, torch.tensor(ref, dtype=torch.float64), atol=1e-10)


def test_min_p_attribute_and_errors() -> None:
    comp = policy_loss.build("lp_reg", {"min_p": 0.1})
    assert comp.fn.min_p == 0.1  # read by the trainer for the old-policy min-p forward
    assert "old_minp_logprobs" in comp.requires
    for knobs in ({"min_p": 2.0}, {"neg_ratio": 1.0 * 100}, {"beta": -1.0}, {"kl_estimator": "k9"}, {"clip_ratio_c": 1.0}):
        with pytest.raises(ConfigError):
            policy_loss.build("lp_reg", knobs)
    ctx, _ = make_ctx(LOGP, OLD, ADV, PROXY)
    ctx.old_minp_logprobs = None
    with pytest.raises(MissingInputError, match="old_minp_logprobs"):
        comp(ctx)
