"""earl: the per-response entropy-quantile gate by hand, against the per-micro-batch forking-token pool."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, token_weight
from rlvr.errors import ConfigError, MissingInputError

NAN = float("nan")


def make_ctx() -> AlgoContext:
    # row 0 is uncertain everywhere, row 1 confident everywhere: a batch pool would keep only row 0's tokens
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]], dtype=torch.float64),
        old_entropy=torch.tensor([[3.0, 5.0, 4.0, 2.0, 6.0], [0.1, 0.3, 0.2, NAN, NAN]], dtype=torch.float64),
    )


def test_each_response_keeps_its_own_high_entropy_tokens() -> None:
    out = token_weight.build("earl")(make_ctx())
    # row 0: 0.8-quantile of (2,3,4,5,6) = 5.2 -> token 4; row 1: of (0.1,0.2,0.3) = 0.26 -> token 1
    assert out.weights.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0]]
    assert torch.equal(out.loss_mask, out.weights)
    assert out.metrics["earl/frac_selected"] == pytest.approx(2 / 8)
    assert out.metrics["earl/entropy_selected"] == pytest.approx((6.0 + 0.3) / 2)
    half = token_weight.build("earl", {"quantile": 0.5})(make_ctx())
    assert half.weights.tolist() == [[0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]]
    forking = token_weight.build("forking_tokens", {"top_ratio": 0.25, "renormalize": False})
    pooled = forking(AlgoContext(response_mask=make_ctx().response_mask, entropy=make_ctx().old_entropy))
    assert float(pooled.weights[1].sum()) == 0.0  # the batch pool starves the confident response


def test_errors() -> None:
    ctx = make_ctx()
    ctx.old_entropy = None
    with pytest.raises(MissingInputError, match="old_entropy"):
        token_weight.build("earl")(ctx)
    with pytest.raises(ConfigError, match="quantile"):
        token_weight.build("earl", {"quantile": 1.5})(make_ctx())
