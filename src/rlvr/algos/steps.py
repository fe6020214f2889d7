"""Segmentation of responses into reasoning steps (shared helpers; nothing is registered here).

A *step* is a run of consecutive valid response tokens; it is described by a bool ``(B, T)`` mask
``ends`` that is True on the **last token of every step**. The last valid token of a response
always ends a step, so every valid token belongs to exactly one step. Splits:

* ``"length"``: fixed-length steps of ``step_len`` valid tokens: the ``step_len``-th,
  ``2 * step_len``-th, ... valid token and the last one end a step (PRL, arXiv 2601.10201, official
  MaxwellJryao/Process-Reward-Learning ``verl/trainer/ppo/ray_trainer.py``, ``step_split="length"``:
  ``arange(1, T + 1) % step_len == 0`` plus the last valid token).
* ``"delimiter"``: a step ends at the token holding the last character of each (non-overlapping,
  left to right) occurrence of ``delimiter`` in the response text, and at the last valid token. The
  official PRL code instead marks tokens whose id equals the id of ``tokenizer.encode("\\n")``; on
  a character tokenizer the two coincide, on BPE tokenizers the text reading also finds newlines
  merged into other tokens (``".\\n"``, ``"\\n\\n"``).
* ``"token"``: every valid token is its own step.

Token texts for ``"delimiter"`` come from ``ctx.extras["token_texts"]`` (one list of decoded token
strings per row, one string per valid token) when the caller provides it; otherwise from the
decoded responses ``ctx.extras["responses"]`` when each valid token is exactly one character (the
built-in character tokenizer; a final EOS token decodes to nothing). Anything else raises
MissingInputError rather than guessing token offsets.

:func:`fill_from_step_end` gives every token of a step the value at the step's last token, with the
step ends passed explicitly (the official ``left_fill_by_next_nonzero`` instead treats a value of
exactly 0 as "no boundary" and carries the next step's value back over it).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError, MissingInputError

StepSplit = Literal["length", "delimiter", "token"]
STEP_SPLITS: tuple[str, ...] = get_args(StepSplit)


def _last_valid(valid: Tensor) -> Tensor:
    """Bool ``(B, T)``: the last valid position of each row (none for an empty row)."""
    positions = torch.arange(valid.shape[-1], device=valid.device).expand_as(valid)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1, keepdim=True)
    return valid & (positions == last)


def fixed_length_step_ends(mask: Tensor, step_len: int) -> Tensor:
    """Bool ``(B, T)``: every ``step_len``-th valid token and the last valid token of each row."""
    if step_len < 1:
        raise ConfigError(f"step_len must be >= 1, got {step_len}")
    valid = mask > 0
    rank = valid.long().cumsum(dim=-1)  # 1-based index among the valid tokens
    return (valid & (rank % step_len == 0)) | _last_valid(valid)


def token_step_ends(mask: Tensor) -> Tensor:
    """Bool ``(B, T)``: every valid token ends its own step."""
    return mask > 0


def delimiter_step_ends(token_texts: Sequence[Sequence[str]], mask: Tensor, delimiter: str) -> Tensor:
    """Bool ``(B, T)``: the token holding the last character of each ``delimiter`` occurrence, and the last token.

    ``token_texts[i]`` lists the decoded text of row ``i``'s valid tokens, in order (as many strings
    as the row has valid tokens; empty strings, e.g. an EOS token, cover no character).
    """
    if not delimiter:
        raise ConfigError("delimiter must be a non-empty string")
    valid = mask > 0
    ends = _last_valid(valid)
    for row, pieces in enumerate(token_texts):
        positions = valid[row].nonzero().flatten().tolist()
        if len(pieces) != len(positions):
            raise MissingInputError(
                f"row {row} has {len(positions)} valid tokens but {len(pieces)} token texts"
            )
        token_end = list(accumulate(len(p) for p in pieces))  # exclusive end offset of each token's characters
        text = "".join(pieces)
        start = text.find(delimiter)
        while start >= 0:
            last_char = start + len(delimiter) - 1
            ends[row, positions[bisect_right(token_end, last_char)]] = True
            start = text.find(delimiter, start + len(delimiter))
    return ends


def char_token_texts(texts: Sequence[str], mask: Tensor, truncated: Tensor | None = None) -> list[list[str]]:
    """Per-token texts of responses decoded by a one-character-per-token tokenizer.

    A row with ``n`` valid tokens maps to ``list(text)`` when ``len(text) == n``, or to
    ``list(text) + [""]`` when ``len(text) == n - 1`` (the final EOS token decodes to nothing; with
    ``truncated`` given, only for rows that were not truncated). Other rows raise MissingInputError.
    """
    counts = [int(c) for c in (mask > 0).sum(dim=-1).tolist()]
    cut = truncated.bool().tolist() if truncated is not None else [None] * len(counts)
    out: list[list[str]] = []
    for row, (text, n, was_cut) in enumerate(zip(texts, counts, cut)):
        if len(text) == n and was_cut is not False:
            out.append(list(text))
        elif len(text) == n - 1 and was_cut is not True:
            out.append([*text, ""])
        else:
            raise MissingInputError(
                f"row {row}: {n} valid tokens but {len(text)} characters of text, so the tokenizer is not one "
                "character per token; the delimiter split needs ctx.extras['token_texts'] (the decoded text "
                "of every valid token)"
            )
    return out


def token_texts_of(ctx: AlgoContext, who: str) -> list[list[str]]:
    """``ctx.extras["token_texts"]``, else :func:`char_token_texts` of ``ctx.extras["responses"]``."""
    given = ctx.extras.get("token_texts")
    if given is not None:
        if len(given) != ctx.batch_size:
            raise MissingInputError(f"{who}: ctx.extras['token_texts'] has {len(given)} rows for {ctx.batch_size}")
        return [list(row) for row in given]
    texts = ctx.extras.get("responses")
    if texts is None:
        raise MissingInputError(
            f"{who} with split='delimiter' needs ctx.extras['token_texts'] or ctx.extras['responses']"
        )
    if len(texts) != ctx.batch_size:
        raise MissingInputError(f"{who}: ctx.extras['responses'] has {len(texts)} texts for {ctx.batch_size} rows")
    try:
        return char_token_texts(texts, ctx.response_mask, ctx.truncated)
    except MissingInputError as exc:
        raise MissingInputError(f"{who}: {exc}") from None


def check_step_split(who: str, split: str, step_len: int, delimiter: str) -> None:
    """The step-segmentation knobs of a method: ``split`` known, ``step_len`` > 0, a delimiter to split at."""
    check_positive(who, step_len=step_len)
    check_choice(who, "split", split, STEP_SPLITS)
    if split == "delimiter" and not delimiter:
        raise ConfigError(f"{who}: split='delimiter' needs a non-empty delimiter")


def step_ends(ctx: AlgoContext, split: StepSplit, *, step_len: int, delimiter: str, who: str) -> Tensor:
    """The step ends of ``ctx``'s responses for ``split`` (see the module docstring)."""
    if split not in STEP_SPLITS:
        raise ConfigError(f"{who}: unknown split '{split}'; valid: {', '.join(STEP_SPLITS)}")
    if split == "length":
        return fixed_length_step_ends(ctx.response_mask, step_len)
    if split == "token":
        return token_step_ends(ctx.response_mask)
    return delimiter_step_ends(token_texts_of(ctx, who), ctx.response_mask, delimiter)


def step_index(ends: Tensor, mask: Tensor) -> Tensor:
    """Long ``(B, T)``: the 0-based step of each valid token (-1 on padding)."""
    valid = mask > 0
    ends = ends & valid
    before = ends.long().cumsum(dim=-1) - ends.long()  # step ends strictly before each position
    return torch.where(valid, before, torch.full_like(before, -1))


def fill_from_step_end(values: Tensor, ends: Tensor, mask: Tensor) -> Tensor:
    """``(B, T)``: each valid token takes ``values`` at the last token of its step; 0 on padding.

    Needs every valid token to have a step end at or after it (true for the ends built here).
    """
    valid = mask > 0
    width = values.shape[-1]
    positions = torch.arange(width, device=values.device).expand_as(values)
    marked = torch.where(ends & valid, positions, torch.full_like(positions, width))
    next_end = marked.flip(-1).cummin(dim=-1).values.flip(-1)
    if bool((valid & (next_end >= width)).any()):
        raise ValueError("a valid token has no step end at or after it")
    filled = values.gather(-1, next_end.clamp(max=width - 1))
    return torch.where(valid, filled, torch.zeros_like(filled))
