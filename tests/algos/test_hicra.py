"""hicra: strategic-gram token alignment and both advantage readings by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.hicra import phrase_token_mask
from rlvr.errors import ConfigError, MissingInputError

A = 1 / math.sqrt(2.0)


def make_ctx(texts: list[str], extras: dict | None = None) -> AlgoContext:
    width = max(len(t) for t in texts)
    mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in texts], dtype=torch.float64)
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
        truncated=torch.tensor([True, True]),
        extras={"responses": texts} if extras is None else extras,
    )


def test_token_alignment_with_multi_character_tokens() -> None:
    # tokens "Bu", "t w", "ait", "!": the gram "but wait" spans the first three
    texts = [["Bu", "t w", "ait", "!"], ["x"]]
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    got = phrase_token_mask(texts, mask, ["but wait"])
    assert got.tolist() == [[True, True, True, False], [False] * 4]
    assert not phrase_token_mask(texts, mask, ["but wait"], case_sensitive=True).any()
    # a gram ending inside a token marks that token; an empty (EOS) token covers nothing
    got = phrase_token_mask([["ab", "c", ""]], torch.ones(1, 3), ["b"])
    assert got.tolist() == [[True, False, False]]


def test_abs_and_scale_modes_by_hand() -> None:
    # one character per token; "+" is the only gram: row 0 "1+2" token 1; row 1 "3+4+5" tokens 1 and 3
    ctx = make_ctx(["1+2", "3+4+5"])
    abs_mode = advantage.build("hicra", {"grams": ["+"], "alpha": 0.5, "base_kwargs": {"eps": 0.0}})
    got = abs_mode(ctx).tolist()
    assert got[0] == pytest.approx([A, 1.5 * A, A, 0.0, 0.0], abs=1e-12)
    assert got[1] == pytest.approx([-A, -0.5 * A, -A, -0.5 * A, -A], abs=1e-12)  # negatives softened
    assert abs_mode.fn.metrics["hicra/frac_planning"] == pytest.approx(3 / 8)
    scale = advantage.build("hicra", {"grams": ["+"], "alpha": 0.5, "mode": "scale", "base_kwargs": {"eps": 0.0}})
    got = scale(ctx).tolist()
    assert got[0] == pytest.approx([A, 1.5 * A, A, 0.0, 0.0], abs=1e-12)
    assert got[1] == pytest.approx([-A, -1.5 * A, -A, -1.5 * A, -A], abs=1e-12)  # negatives amplified
    # the default English lexicon finds nothing in arithmetic: plain GRPO
    assert torch.equal(advantage.build("hicra")(ctx), advantage.build("grpo")(ctx))


def test_missing_texts_and_bad_knobs() -> None:
    ctx = make_ctx(["1+2", "3+4+5"], extras={})
    with pytest.raises(MissingInputError, match="token_texts"):
        advantage.build("hicra")(ctx)
    ctx = make_ctx(["1+2", "3+4+5"], extras={"token_texts": [["1+", "2"], ["3", "+4", "+5"]]})
    ctx.response_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    planning = advantage.build("hicra", {"grams": ["+"], "base_kwargs": {"eps": 0.0}})(ctx)
    assert planning[0, 0].item() == pytest.approx(1.2 * A) and planning[1, 0].item() == pytest.approx(-A)
    with pytest.raises(ConfigError, match="mode"):
        advantage.build("hicra", {"mode": "double"})
    with pytest.raises(ConfigError, match="grams"):
        advantage.build("hicra", {"grams": "but wait"})
