"""steps: fixed-length, delimiter and per-token step ends, step indices and the fill from each step's end."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext
from rlvr.algos.steps import (
    char_token_texts,
    delimiter_step_ends,
    fill_from_step_end,
    fixed_length_step_ends,
    step_ends,
    step_index,
    token_step_ends,
)
from rlvr.errors import ConfigError, MissingInputError

# row 0: 7 valid tokens; row 1: 3 valid; row 2: empty
MASK = torch.tensor([[1.0] * 7, [1.0] * 3 + [0.0] * 4, [0.0] * 7])


def ends_list(ends: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in ends]


def test_fixed_length_ends_every_step_len_tokens_and_at_the_last() -> None:
    # step_len 3: the 3rd and 6th valid tokens (indices 2, 5) and the last (6); row 1: index 2 (3rd = last)
    assert ends_list(fixed_length_step_ends(MASK, 3)) == [[2, 5, 6], [2], []]
    assert ends_list(fixed_length_step_ends(MASK, 64)) == [[6], [2], []]
    assert ends_list(fixed_length_step_ends(MASK, 1)) == ends_list(token_step_ends(MASK))
    # counted among valid tokens, not positions: a hole at index 1 shifts the 3rd valid token to index 3
    holed = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    assert ends_list(fixed_length_step_ends(holed, 3)) == [[3, 4]]
    with pytest.raises(ConfigError):
        fixed_length_step_ends(MASK, 0)


def test_delimiter_ends_at_the_token_holding_the_delimiter_end() -> None:
    texts = [["a", "\n", "b", "c", "\n", "d", ""], ["x", "y", "z"], []]
    assert ends_list(delimiter_step_ends(texts, MASK, "\n")) == [[1, 4, 6], [2], []]
    # multi-character tokens: "ab\n" holds the first newline, "\n\n" the second delimiter's end
    bpe = [["ab\n", "c", "d\n", "\n", "e", "f", "g"]]
    assert ends_list(delimiter_step_ends(bpe, MASK[:1], "\n")) == [[0, 2, 3, 6]]
    # "\n\n" found left to right without overlap: "d\n" + "\n" -> ends at index 3 (its second character)
    assert ends_list(delimiter_step_ends(bpe, MASK[:1], "\n\n")) == [[3, 6]]
    with pytest.raises(MissingInputError, match="3 valid tokens but 2"):
        delimiter_step_ends([["a"] * 7, ["x", "y"], []], MASK, "\n")


def test_char_token_texts_maps_one_character_per_token() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    # row 0 truncated (3 characters for 3 tokens); row 1 ended with EOS (2 characters + EOS)
    out = char_token_texts(["a\nb", "c\n"], mask, torch.tensor([True, False]))
    assert out == [["a", "\n", "b"], ["c", "\n", ""]]
    with pytest.raises(MissingInputError, match="token_texts"):
        char_token_texts(["toolong"], mask[:1])
    with pytest.raises(MissingInputError):  # truncated, so no EOS: 2 characters cannot fill 3 tokens
        char_token_texts(["c\n"], mask[:1], torch.tensor([True]))


def test_step_ends_dispatch_reads_token_texts_or_responses() -> None:
    mask = torch.tensor([[1.0] * 5])
    ctx = AlgoContext(response_mask=mask, extras={"responses": ["ab\ncd"]})
    assert ends_list(step_ends(ctx, "delimiter", step_len=2, delimiter="\n", who="t")) == [[2, 4]]
    assert ends_list(step_ends(ctx, "length", step_len=2, delimiter="\n", who="t")) == [[1, 3, 4]]
    ctx.extras["token_texts"] = [["a", "b\n", "c", "d", "e"]]
    assert ends_list(step_ends(ctx, "delimiter", step_len=2, delimiter="\n", who="t")) == [[1, 4]]
    with pytest.raises(MissingInputError):
        step_ends(AlgoContext(response_mask=mask), "delimiter", step_len=2, delimiter="\n", who="t")
    with pytest.raises(ConfigError):
        step_ends(ctx, "sentence", step_len=2, delimiter="\n", who="t")  # type: ignore[arg-type]


def test_step_index_and_fill_from_step_end() -> None:
    ends = fixed_length_step_ends(MASK, 3)
    assert step_index(ends, MASK).tolist() == [[0, 0, 0, 1, 1, 1, 2], [0, 0, 0, -1, -1, -1, -1], [-1] * 7]
    values = torch.arange(21, dtype=torch.float64).view(3, 7)
    filled = fill_from_step_end(values, ends, MASK)
    assert filled.tolist() == [[2, 2, 2, 5, 5, 5, 6], [9, 9, 9, 0, 0, 0, 0], [0] * 7]
    # an exact 0 at a step end stays the step's value (left_fill_by_next_nonzero would carry 5 back)
    zeroed = values.clone()
    zeroed[0, 2] = 0.0
    assert fill_from_step_end(zeroed, ends, MASK)[0].tolist() == [0, 0, 0, 5, 5, 5, 6]
    with pytest.raises(ValueError):
        fill_from_step_end(values, torch.zeros_like(ends), MASK)
