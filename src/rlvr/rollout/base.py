"""What a rollout engine returns: prompt+response token grids with masks and decoded text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

UNMASK_STEP = "unmask_step"
"""``extras`` key of a masked-diffusion rollout (:mod:`rlvr.rollout.mdlm`): ``(B, T)`` long, the
decoding step at which each response position was unmasked (the whole trajectory, with the final tokens)."""

TOKEN_TEMPERATURE = "token_temperature"
"""``extras`` key: ``(B, T)`` float, the temperature each response token was sampled at (adaptive
temperature sampling, :mod:`rlvr.rollout.adaptive_temperature`)."""
SAMPLING_ENTROPY = "sampling_entropy"
"""``extras`` key: ``(B, T)`` float, the entropy of each response token's next-token distribution at the
base sampling temperature, measured while decoding."""
TOP_LOGPROBS = "top_logprobs"
"""``extras`` key: ``(B, T, k)`` float, the ``k`` largest log-probs of each response position's
next-token distribution at temperature 1 (the model's raw distribution), in descending order."""
TOP_IDS = "top_ids"
"""``extras`` key: ``(B, T, k)`` long, the token ids of :data:`TOP_LOGPROBS`."""
RESPONSE_EXTRAS: dict[str, float] = {TOKEN_TEMPERATURE: 1.0, SAMPLING_ENTROPY: 0.0, TOP_LOGPROBS: 0.0, TOP_IDS: 0}
"""``extras`` aligned with the response positions (second dimension ``T``) and their padding value:
:func:`concat_batches` right-pads them to the merged response width."""


@dataclass
class RolloutBatch:
    """``B`` responses; prompts left-padded to width ``prompt_len``, responses right-padded to ``T``.

    ``input_ids``/``attention_mask`` are ``(B, prompt_len + T)``; response token ``t`` of row ``i``
    is ``input_ids[i, prompt_len + t]`` and is valid where ``response_mask[i, t] == 1`` (the EOS
    token, when generated, is part of the response so the policy learns to stop).

    ``extras`` holds per-row tensors (first dimension ``B``) an engine records for the learner and
    the methods, e.g. :data:`UNMASK_STEP`; ``rows`` slices them and the learner copies them into
    ``AlgoContext.extras``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_len: int
    response_mask: Tensor
    responses: list[str]
    truncated: Tensor
    group_ids: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum().item())

    def response_token_ids(self, row: int) -> list[int]:
        """The valid response token ids of ``row`` (its EOS included when it generated one)."""
        return self.response_ids[row][self.response_mask[row] > 0].tolist()

    def rows(self, index: Tensor) -> "RolloutBatch":
        """The sub-batch of rows ``index``."""
        return RolloutBatch(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            prompt_len=self.prompt_len,
            response_mask=self.response_mask[index],
            responses=[self.responses[i] for i in index.tolist()],
            truncated=self.truncated[index],
            group_ids=self.group_ids[index],
            extras={key: value[index] for key, value in self.extras.items()},
        )


def eos_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's EOS token id(s) as a list (empty when it has none)."""
    eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def response_mask_from_ids(response_ids: Tensor, eos_token_id: int | list[int]) -> tuple[Tensor, Tensor]:
    """Mask of valid response tokens (up to and including the first EOS) and a truncated flag.

    A response without any EOS within the generated width is *truncated* (it hit max_new_tokens).
    """
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= response_ids == eos
    seen_before = torch.cumsum(is_eos.int(), dim=-1) - is_eos.int()
    mask = (seen_before == 0).float()
    truncated = ~is_eos.any(dim=-1)
    return mask, truncated


def concat_batches(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Stack rollout batches of different prompt/response widths (prompts left-, responses right-padded).

    Group ids are renumbered so groups of different batches stay distinct. Every batch must hold the
    same ``extras`` keys; the response-aligned ones (:data:`RESPONSE_EXTRAS`) are right-padded to
    the merged width, the others concatenated as they are, with equal shapes after the first
    dimension (a masked-diffusion rollout's are ``(B, max_new_tokens)``).
    """
    keys = set(batches[0].extras)
    if any(set(b.extras) != keys for b in batches):
        raise ValueError(f"cannot concatenate rollout batches with different extras: {[sorted(b.extras) for b in batches]}")
    prompt_len = max(b.prompt_len for b in batches)
    width = max(b.response_mask.shape[1] for b in batches)
    ids, attn, masks, group_ids = [], [], [], []
    offset = 0
    for b in batches:
        left = prompt_len - b.prompt_len
        right = width - b.response_mask.shape[1]
        ids.append(torch.nn.functional.pad(b.input_ids, (left, right), value=pad_token_id))
        attn.append(torch.nn.functional.pad(b.attention_mask, (left, right), value=0))
        masks.append(torch.nn.functional.pad(b.response_mask, (0, right), value=0.0))
        dense = torch.unique(b.group_ids, return_inverse=True)[1]
        group_ids.append(dense + offset)
        offset += int(dense.max()) + 1 if dense.numel() else 0
    return RolloutBatch(
        input_ids=torch.cat(ids),
        attention_mask=torch.cat(attn),
        prompt_len=prompt_len,
        response_mask=torch.cat(masks),
        responses=[r for b in batches for r in b.responses],
        truncated=torch.cat([b.truncated for b in batches]),
        group_ids=torch.cat(group_ids),
        extras={key: torch.cat([_pad_extra(b, key, width) for b in batches]) for key in sorted(keys)},
    )


def _pad_extra(batch: RolloutBatch, key: str, width: int) -> Tensor:
    """``batch.extras[key]``, right-padded along the response axis to ``width`` if it is response-aligned."""
    value = batch.extras[key]
    if key not in RESPONSE_EXTRAS or value.shape[1] == width:
        return value
    pad = [0, 0] * (value.dim() - 2) + [0, width - value.shape[1]]
    return torch.nn.functional.pad(value, pad, value=RESPONSE_EXTRAS[key])


def left_pad(rows: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` of token-id lists left-padded with ``pad_token_id`` to the longest."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)
