"""ep_ppl and ep_position: the perplexity z-score scale and the position weights by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage, token_weight
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")


def make_ctx() -> AlgoContext:
    # group 0: rows 0-2, group 1: row 3 (singleton)
    # log ppl = -mean log pi_old: row 0 (2 tokens) 0.5, row 1 (1 token) 1.0, row 2 (2 tokens) 3.0, row 3 2.0
    old = torch.tensor([[-0.4, -0.6], [-1.0, NAN], [-2.0, -4.0], [-2.0, -2.0]], dtype=torch.float64)
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0, 0, 1]),
        old_logprobs=old,
        old_entropy=torch.tensor([[0.1, 0.9], [0.5, NAN], [2.0, 1.0], [0.3, 0.3]], dtype=torch.float64),
    )


def test_ppl_scale_by_hand() -> None:
    ctx = make_ctx()
    base = advantage.build("grpo", {"eps": 0.0})(ctx)
    comp = advantage.build("ep_ppl", {"alpha": 0.5, "eps": 0.0, "base_kwargs": {"eps": 0.0}})
    got = comp(ctx)
    # group 0 log ppl (0.5, 1.0, 3.0): mean 1.5, unbiased std sqrt(((1)^2 + 0.5^2 + 1.5^2) / 2) = sqrt(1.75)
    std = math.sqrt(1.75)
    z = [(0.5 - 1.5) / std, (1.0 - 1.5) / std, (3.0 - 1.5) / std]
    scales = [1 + 0.5 * max(-1.0, min(1.0, -v)) for v in z] + [1.0]  # singleton group: z = 0
    assert scales[2] == 0.5 and scales[0] == pytest.approx(1 + 0.5 / std)  # row 2 clipped at -1
    for row, s in enumerate(scales):
        assert got[row].tolist() == pytest.approx((base[row] * s).tolist(), abs=1e-12)
    assert comp.fn.metrics["ep_ppl/log_ppl_mean"] == pytest.approx((0.5 + 1.0 + 3.0 + 2.0) / 4)
    ctx.old_logprobs = None
    with pytest.raises(MissingInputError, match="old_logprobs"):
        comp(ctx)


def test_position_weights_by_hand() -> None:
    ctx = make_ctx()
    out = token_weight.build("ep_position", {"beta": 0.5})(ctx)
    # w = 1 + 0.5 t / n: rows of 2 tokens 1.25, 1.5; one token: 1.5
    assert out.weights.tolist() == [[1.25, 1.5], [1.5, 0.0], [1.25, 1.5], [1.25, 1.5]]
    assert out.loss_mask is None
    high = token_weight.build("ep_position", {"beta": 0.5, "scope": "high_entropy", "quantile": 0.8})(ctx)
    # per-row 0.8-quantile of H: row 0 0.74 -> token 1; row 1 its only token; row 2 1.8 -> token 0; row 3 ties -> both
    assert high.weights.tolist() == [[1.0, 1.5], [1.5, 0.0], [1.25, 1.0], [1.25, 1.5]]
    assert high.metrics["ep_position/frac_boosted"] == pytest.approx(5 / 7)
    with pytest.raises(ConfigError, match="scope"):
        token_weight.build("ep_position", {"scope": "late"})
