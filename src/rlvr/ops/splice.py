"""The reference answer spliced after each sampled response's reasoning: texts and token grids.

RLPR (arXiv 2506.18254; official OpenBMB/RLPR ``verl/trainer/ppo/ray_trainer.py``
``replace_answer_with_gt_batch``, ``get_scoreA``, ``batch_locate_substring_tokens``) and the
likelihood-based log-prob reward (arXiv 2602.03979) score a response by the policy's log-probs of the
**reference answer** ``y*`` teacher-forced after the response's reasoning. This module builds those
inputs; :mod:`rlvr.ops.forward` runs them through the policy.

A splice is three strings, ``head + y* + tail`` (the EOS token id follows), replacing the response
after its prompt. The formats (``SPLICE_FORMATS``):

* ``"r1"``, the official R1 rules (``format_mode=R1``). A response is *well-formed* when it holds
  exactly one ``<think>``, one ``</think>`` and one ``<answer>``, matches ``^.*<think>.*</think>.*<answer>.*$``
  and its answer section (after ``<answer>``) is not blank. Then::

      head = <text before </think>> + "</think>" + middle + "<answer>" + ws
      tail = " </answer>"

  with ``middle`` the response's own text between ``</think>`` and ``<answer>`` and ``ws`` its own
  whitespace after ``<answer>`` (a single space when it has none). A malformed response keeps its
  first ``max_new_tokens - len(end) - 5`` tokens (all of them when shorter), ``end`` being the
  tokens of ``"</think> <answer> y* </answer>"`` + EOS, as the official cuts its padded row to make
  room, and gets ``head = <kept text> + "</think> <answer> "``, ``tail = " </answer>"``; it is
  marked not ``valid`` (the official zeroes its answer mask, so its RLPR score is 0). Differences:
  a short malformed response's EOS is dropped before the end text (the official's cut keeps it), and
  no splice is marked invalid for its length (the official also invalidates one longer than
  ``max_prompt_length + max_response_length`` tokens).
* ``"boxed"``: cut at the last ``\\boxed{`` (kept), ``tail = "}"``; without one, ``head = text + " \\boxed{"``
  (not ``valid``).
* ``"append"``: the whole response is the reasoning; ``head = text + " "``, ``tail = ""`` (always ``valid``).

The **no-reasoning baseline** (RLPR's ``scoreA``) puts ``y*`` right after the prompt: ``" " + y* + " "``
for ``r1`` (the official's ``prompt + ' ' + ground_truth + ' ' + eos``), ``"\\boxed{" + y* + "}"`` for
``boxed`` and ``y*`` alone for ``append``.

Tokenisation (differs from the official, on purpose): the prompt keeps the token ids it was sampled
with, and only the new response text ``head + y* + tail`` is tokenised (the official decodes and
re-tokenises prompt and response together). ``y*``'s tokens are those whose character span (the
tokenizer's offsets) overlaps ``[len(head), len(head) + len(y*))``, the official's overlap rule at the
place the splice put ``y*`` (the official finds it with ``rfind`` before the end text: the same place).
A BPE merge across the boundary (``" 42"`` as one token) puts the merged token in the mask, as there.
EOS is appended as a token id, not as text. A fast tokenizer (offsets) is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.errors import ConfigError
from rlvr.rollout.base import RolloutBatch

SpliceFormat = Literal["r1", "boxed", "append"]
SPLICE_FORMATS: tuple[str, ...] = get_args(SpliceFormat)

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
BOXED = "\\boxed{"
R1_SPLICE_PATTERN = re.compile(r"^.*<think>.*</think>.*<answer>.*$", re.DOTALL)
R1_FORMAT_PATTERN = re.compile(r"<think>.*</think>.*<answer>.*</answer>.*", re.DOTALL)
MALFORMED_SLACK = 5
"""Extra tokens the official drops from a malformed response besides the end text's (``- 5``)."""
WHITESPACE = " \n\t\r"


@dataclass(frozen=True)
class Splice:
    """The new response text ``head + answer + tail`` (EOS follows) and whether the response had its answer slot."""

    head: str
    answer: str
    tail: str
    valid: bool = True


def check_format(fmt: str, who: str = "splice") -> None:
    if fmt not in SPLICE_FORMATS:
        raise ConfigError(f"{who}: format must be one of {', '.join(SPLICE_FORMATS)}, got {fmt!r}")


def leading_whitespace(text: str) -> str:
    """The run of spaces, newlines, tabs and carriage returns that starts ``text``."""
    return text[: len(text) - len(text.lstrip(WHITESPACE))]


def r1_well_formed(text: str) -> bool:
    """The official splice condition: one ``<think>``, ``</think>``, ``<answer>`` each, in that order, non-blank answer."""
    if not (text.count(ANSWER_OPEN) == 1 and text.count(THINK_OPEN) == 1 and text.count(THINK_CLOSE) == 1):
        return False
    if R1_SPLICE_PATTERN.fullmatch(text) is None:
        return False
    return bool(text.split(ANSWER_OPEN)[1].strip())


def r1_format_score(text: str) -> float:
    """RLPR's format reward (``format_reward``, ``format_mode=R1``): 1 iff each of the four tags occurs once and
    ``<think>.*</think>.*<answer>.*</answer>.*`` matches the whole response."""
    if any(text.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return 0.0
    return 1.0 if R1_FORMAT_PATTERN.fullmatch(text) else 0.0


def format_score(fmt: SpliceFormat, text: str) -> float:
    """1 when ``text`` has the answer slot of ``fmt`` (for ``r1`` the official's stricter :func:`r1_format_score`)."""
    if fmt == "r1":
        return r1_format_score(text)
    if fmt == "boxed":
        return float(BOXED in text)
    return 1.0


def splice_response(
    fmt: SpliceFormat,
    text: str,
    answer: str,
    *,
    response_ids: Sequence[int] = (),
    tokenizer: Any = None,
    max_new_tokens: int | None = None,
) -> Splice:
    """``y* = answer`` spliced into the response ``text`` (its EOS removed) by the rules of ``fmt`` (module docstring).

    ``response_ids`` (the response's tokens without EOS), ``tokenizer`` and ``max_new_tokens`` are read only
    for a malformed ``r1`` response, which keeps its first ``max_new_tokens - len(end) - 5`` tokens.
    """
    check_format(fmt)
    if fmt == "append":
        return Splice(text + " ", answer, "")
    if fmt == "boxed":
        at = text.rfind(BOXED)
        if at < 0:
            return Splice(text + " " + BOXED, answer, "}", valid=False)
        return Splice(text[: at + len(BOXED)], answer, "}")
    if r1_well_formed(text):
        before, after = text.split(THINK_CLOSE)
        middle, section = after.split(ANSWER_OPEN)
        ws = leading_whitespace(section) or " "
        return Splice(before + THINK_CLOSE + middle + ANSWER_OPEN + ws, answer, " " + ANSWER_CLOSE)
    end = f"{THINK_CLOSE} {ANSWER_OPEN} "
    kept = text
    if max_new_tokens is not None and tokenizer is not None:
        end_len = len(tokenizer(end + answer + " " + ANSWER_CLOSE, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        keep = max(0, max_new_tokens - end_len - MALFORMED_SLACK)
        if len(response_ids) > keep:
            kept = tokenizer.decode(list(response_ids)[:keep], skip_special_tokens=True)
    return Splice(kept + end, answer, " " + ANSWER_CLOSE, valid=False)


def baseline_splice(fmt: SpliceFormat, answer: str) -> Splice:
    """The no-reasoning response: ``y*`` right after the prompt (RLPR's ``scoreA`` input for ``r1``)."""
    check_format(fmt)
    if fmt == "r1":
        return Splice(" ", answer, " ")
    if fmt == "boxed":
        return Splice(BOXED, answer, "}")
    return Splice("", answer, "")


def splice_tokens(tokenizer: Any, splice: Splice) -> tuple[list[int], list[bool]]:
    """Token ids of ``head + answer + tail`` followed by EOS, and which of them belong to the answer."""
    text = splice.head + splice.answer + splice.tail
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise ConfigError(
            "splicing the reference answer needs a fast tokenizer (character offsets locate the answer's tokens)"
        ) from exc
    start, end = len(splice.head), len(splice.head) + len(splice.answer)
    ids = list(enc["input_ids"])
    in_answer = [s < end and e > start for s, e in enc["offset_mapping"]]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
        in_answer.append(False)
    return ids, in_answer


def spliced_batch(batch: RolloutBatch, rows: Sequence[int], splices: Sequence[Splice], tokenizer: Any) -> RolloutBatch:
    """Row ``k``: the prompt of ``batch`` row ``rows[k]`` (its sampled token ids) followed by ``splices[k]``'s tokens.

    The new responses are right-padded; ``response_mask`` is 1 on the answer's tokens only (the
    positions whose log-probs are wanted), ``attention_mask`` on every real token.
    """
    encoded = [splice_tokens(tokenizer, s) for s in splices]
    width = max((len(ids) for ids, _ in encoded), default=0)
    device = batch.input_ids.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=batch.input_ids.dtype, device=device)
    attention = torch.zeros((len(rows), width), dtype=batch.attention_mask.dtype, device=device)
    answer = torch.zeros((len(rows), width), dtype=batch.response_mask.dtype, device=device)
    for k, (row_ids, in_answer) in enumerate(encoded):
        n = len(row_ids)
        ids[k, :n] = torch.tensor(row_ids, dtype=ids.dtype)
        attention[k, :n] = 1
        answer[k, :n] = torch.tensor(in_answer, dtype=answer.dtype)
    index = torch.tensor(list(rows), dtype=torch.long, device=device)
    p = batch.prompt_len
    return RolloutBatch(
        input_ids=torch.cat([batch.input_ids[index, :p], ids], dim=1),
        attention_mask=torch.cat([batch.attention_mask[index, :p], attention], dim=1),
        prompt_len=p,
        response_mask=answer,
        responses=[s.head + s.answer + s.tail for s in splices],
        truncated=torch.zeros(len(rows), dtype=torch.bool, device=device),
        group_ids=batch.group_ids[index],
    )


def compact(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The masked entries of each row of ``values`` moved left, in order: ``(R, L)`` values and mask,
    ``L = max(1, largest row count)``."""
    keep = mask > 0
    counts = keep.sum(-1)
    width = max(1, int(counts.max())) if counts.numel() else 1
    out = torch.zeros((values.shape[0], width), dtype=values.dtype, device=values.device)
    out_mask = torch.zeros((values.shape[0], width), dtype=mask.dtype, device=mask.device)
    rows, _cols = keep.nonzero(as_tuple=True)
    columns = (keep.cumsum(-1) - 1)[keep]
    out[rows, columns] = values[keep]
    out_mask[rows, columns] = 1
    return out, out_mask


def first_rows(keys: Sequence[Any]) -> tuple[list[int], list[int]]:
    """``(first, inverse)``: the index of each distinct key's first row, and each row's position in ``first``."""
    position: dict[Any, int] = {}
    first: list[int] = []
    inverse: list[int] = []
    for row, key in enumerate(keys):
        if key not in position:
            position[key] = len(first)
            first.append(row)
        inverse.append(position[key])
    return first, inverse


def prompt_tokens(batch: RolloutBatch, row: int) -> tuple[int, ...]:
    """The real (unpadded) prompt token ids of ``row``."""
    p = batch.prompt_len
    return tuple(batch.input_ids[row, :p][batch.attention_mask[row, :p].bool()].tolist())
