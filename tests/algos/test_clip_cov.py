"""Clip-Cov (arXiv 2505.22617): hand-computed values, a python-loop reference of the official
function, and the batch / micro covariance scopes."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from rlvr.algos import AlgoContext, policy_loss
from rlvr.algos.clip_cov import clip_cov_selection, token_covariance
from rlvr.errors import ConfigError

# 2 rows x 3 tokens, the last token of row 1 is padding (NaN there must not leak anywhere).
LOGP = [[-0.5, -1.0, -3.0], [-0.5, -4.0, float("nan")]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]
# valid tokens: mean A = 0.2, mean log p = -1.8, so cov = (A - 0.2)(log p + 1.8):
COV = [[0.8 * 1.3, 0.8 * 0.8, 0.8 * -1.2], [-1.2 * 1.3, -1.2 * -2.2, 0.0]]  # 1.04 0.64 -0.96 / -1.56 2.64


def make_ctx(logp=LOGP, old=None, adv=ADV, mask=MASK, **kw) -> tuple[AlgoContext, torch.Tensor]:
    logprobs = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    old_t = torch.tensor(old if old is not None else logp, dtype=torch.float64)
    ctx = AlgoContext(
        response_mask=torch.tensor(mask, dtype=torch.float64),
        logprobs=logprobs,
        old_logprobs=old_t,
        advantages=torch.tensor(adv, dtype=torch.float64),
        **kw,
    )
    return ctx, logprobs


def test_token_covariance_hand_computed() -> None:
    ctx, _ = make_ctx()
    cov = token_covariance(ctx.advantages, ctx.logprobs, ctx.response_mask)
    assert cov.tolist()[0] == pytest.approx(COV[0], abs=1e-12)
    assert cov.tolist()[1] == pytest.approx(COV[1], abs=1e-12)
    assert not cov.requires_grad


def test_micro_scope_zeroes_both_candidates() -> None:
    # candidates (1 < cov < 5): (0,0) cov 1.04 and (1,1) cov 2.64. clip_ratio 0.4 -> int(0.4*5) = 2 picks.
    ctx, lp = make_ctx()
    out = policy_loss.build("clip_cov", {"clip_ratio": 0.4, "scope": "micro"})(ctx)
    # ratio 1 everywhere: loss -A, except the two zeroed tokens; padding 0
    assert out.per_token.tolist() == [[0.0, -1.0, -1.0], [1.0, 0.0, 0.0]]
    (grad,) = torch.autograd.grad(out.per_token.sum(), lp)
    assert grad.tolist() == [[0.0, -1.0, -1.0], [1.0, 0.0, 0.0]]
    m = out.metrics
    assert m["clip_cov/frac_selected"] == pytest.approx(0.4)
    assert m["clip_cov/frac_candidates"] == pytest.approx(0.4)
    assert m["clip_cov/batch_scope"] == 0.0
    assert m["clip_cov/cov_max"] == pytest.approx(2.64)
    assert m["clip_cov/cov_mean"] == pytest.approx(sum([1.04, 0.64, -0.96, -1.56, 2.64]) / 5)
    assert m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0


def test_ppo_clipped_tokens_are_not_candidates() -> None:
    # token (1,1): log r = -1 (r = 0.37 < 0.8) with A = -1 -> clipped by PPO -> excluded, only (0,0) left.
    old = [[-0.5, -1.0, -3.0], [-0.5, -3.0, 0.0]]
    ctx, _ = make_ctx(old=old)
    out = policy_loss.build("clip_cov", {"clip_ratio": 1.0, "scope": "micro"})(ctx)
    assert out.per_token[0].tolist() == [0.0, -1.0, -1.0]
    assert out.per_token[1].tolist() == pytest.approx([1.0, 0.8, 0.0])  # clipped branch -A * 0.8 kept
    assert out.metrics["clip_cov/frac_selected"] == pytest.approx(0.2)
    assert out.metrics["clip_frac"] == pytest.approx(0.2)


def test_single_pick_is_uniform_over_candidates() -> None:
    # clip_ratio 2e-4 -> max(int(0.001), 1) = 1 pick among the two candidates, chosen by the generator
    seen = set()
    for seed in range(12):
        ctx, _ = make_ctx(generator=torch.Generator().manual_seed(seed))
        out = policy_loss.build("clip_cov", {"scope": "micro"})(ctx)
        zeroed = {(i, t) for i in range(2) for t in range(2 if i else 3) if out.per_token[i, t] == 0.0}
        assert len(zeroed) == 1 and zeroed <= {(0, 0), (1, 1)}
        seen |= zeroed
    assert seen == {(0, 0), (1, 1)}


# ---------------------------------------------------------------- python-loop reference


def official_clip_cov_reference(logp, old, adv, mask, *, clip_ratio, lb, ub, clip_low, clip_high, generator):
    """The official compute_policy_loss_clip_cov, token by token (per-token loss before aggregation)."""
    rows, cols = len(logp), len(logp[0])
    cells = [(i, t) for i in range(rows) for t in range(cols) if mask[i][t] > 0]
    n = len(cells)
    mean_a = sum(adv[i][t] for i, t in cells) / n
    mean_lp = sum(logp[i][t] for i, t in cells) / n
    loss, candidates = {}, []
    for i, t in cells:
        r = math.exp(logp[i][t] - old[i][t])
        l1 = -adv[i][t] * r
        l2 = -adv[i][t] * min(max(r, 1 - clip_low), 1 + clip_high)
        loss[i, t] = max(l1, l2)
        cov = (adv[i][t] - mean_a) * (logp[i][t] - mean_lp)
        if not l2 > l1 and lb < cov < ub:
            candidates.append((i, t))  # row-major, as torch.nonzero
    clip_num = max(int(clip_ratio * n), 1)
    chosen = []
    if candidates:
        perm = torch.randperm(len(candidates), generator=generator).tolist()
        chosen = [candidates[j] for j in perm[:clip_num]]
    return [[(0.0 if (i, t) in chosen else loss[i, t]) if mask[i][t] > 0 else 0.0 for t in range(cols)] for i in range(rows)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows, cols = 6, 9
    mask = [[1.0 if t < rng.randint(3, cols) else 0.0 for t in range(cols)] for _ in range(rows)]
    adv = [[a] * cols for a in (rng.choice([-1.5, -0.5, 0.5, 2.0]) for _ in range(rows))]
    logp = [[-rng.uniform(0.0, 6.0) for _ in range(cols)] for _ in range(rows)]
    old = [[x + rng.uniform(-0.4, 0.4) for x in row] for row in logp]
    knobs = dict(clip_ratio=0.1, cov_low=0.5, cov_high=4.0, clip_low=0.2, clip_high=0.28)
    ctx, _ = make_ctx(logp=logp, old=old, adv=adv, mask=mask, generator=torch.Generator().manual_seed(seed))
    out = policy_loss.build("clip_cov", {**knobs, "scope": "micro"})(ctx)
    ref = official_clip_cov_reference(
        logp, old, adv, mask, clip_ratio=0.1, lb=0.5, ub=4.0, clip_low=0.2, clip_high=0.28,
        generator=torch.Generator().manual_seed(seed),
    )
    assert out.metrics["clip_cov/frac_selected"] > 0
    assert torch.allclose(out.per_token, torch.tensor(ref, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------- batch scope


def test_batch_scope_applies_the_prepared_selection_by_row() -> None:
    ctx, _ = make_ctx(step=3, generator=torch.Generator().manual_seed(0))
    ctx.extras["row_index"] = torch.arange(2)
    comp = policy_loss.build("clip_cov", {"clip_ratio": 0.4})  # default scope="batch"
    metrics = comp.prepare(ctx)
    assert metrics["clip_cov/batch/frac_selected"] == pytest.approx(0.4)
    assert metrics["clip_cov/batch/cov_max"] == pytest.approx(2.64)
    # micro-batches in shuffled order; each applies the stored selection of its own rows
    parts = {}
    for rows in ([1], [0]):
        sub = ctx.select(torch.tensor(rows))
        out = comp(sub)
        assert out.metrics["clip_cov/batch_scope"] == 1.0
        parts[rows[0]] = out.per_token[0].tolist()
    assert parts == {0: [0.0, -1.0, -1.0], 1: [1.0, 0.0, 0.0]}


def test_batch_scope_uses_the_whole_batch_population() -> None:
    # Row 1 alone would have a single valid-token mean; the batch selection is drawn on the whole batch.
    ctx, _ = make_ctx(step=0)
    ctx.extras["row_index"] = torch.arange(2)
    comp = policy_loss.build("clip_cov", {"clip_ratio": 1.0})
    comp.prepare(ctx)
    micro_alone = policy_loss.build("clip_cov", {"clip_ratio": 1.0, "scope": "micro"})(ctx.select(torch.tensor([1])))
    batch = comp(ctx.select(torch.tensor([1])))
    # on row 1 alone: mean A = -1, so cov = 0 everywhere -> nothing selected
    assert micro_alone.per_token[0].tolist() == [1.0, 1.0, 0.0]
    assert batch.per_token[0].tolist() == [1.0, 0.0, 0.0]


def test_batch_scope_falls_back_without_row_index_or_prepare() -> None:
    ctx, _ = make_ctx(step=1)
    comp = policy_loss.build("clip_cov", {"clip_ratio": 0.4})
    with pytest.warns(UserWarning, match="scope='micro'"):
        out = comp(ctx)  # prepare never ran
    assert out.metrics["clip_cov/batch_scope"] == 0.0
    assert out.per_token.tolist() == [[0.0, -1.0, -1.0], [1.0, 0.0, 0.0]]
    comp.prepare(ctx)  # prepared, but the context has no row_index: still micro (warned only once)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert comp(ctx).metrics["clip_cov/batch_scope"] == 0.0
    # prepare without advantages (trainer calling it too early) -> micro as well
    no_adv = AlgoContext(response_mask=ctx.response_mask, old_logprobs=ctx.old_logprobs)
    with pytest.warns(UserWarning, match="after the advantages"):
        assert policy_loss.build("clip_cov").prepare(no_adv) == {"clip_cov/batch_scope": 0.0}


def test_own_generator_is_seeded_and_checkpointed() -> None:
    def picks(comp) -> list[tuple[int, int]]:
        ctx, _ = make_ctx()
        out = comp(ctx)
        return [(i, t) for i in range(2) for t in range(3) if MASK[i][t] and out.per_token[i, t] == 0.0]

    a = policy_loss.build("clip_cov", {"scope": "micro", "seed": 5})
    b = policy_loss.build("clip_cov", {"scope": "micro", "seed": 5})
    assert [picks(a) for _ in range(6)] == [picks(b) for _ in range(6)]
    state = a.state_dict()
    first = [picks(a) for _ in range(6)]
    b.load_state_dict(state)
    assert [picks(b) for _ in range(6)] == first


def test_clip_cov_selection_count_and_knob_errors() -> None:
    cov = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    sel, cand = clip_cov_selection(cov, mask, None, clip_ratio=0.5, cov_low=1.0, cov_high=5.0)
    assert int(cand.sum()) == 3 and int(sel.sum()) == 2  # int(0.5 * 4) = 2 of the 3 candidates
    for knobs in ({"scope": "global"}, {"clip_ratio": 2.0}, {"cov_low": 5.0, "cov_high": 1.0}, {"clip_low": 1.5}):
        with pytest.raises(ConfigError):
            policy_loss.build("clip_cov", knobs)
