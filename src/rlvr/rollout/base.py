"""What a rollout engine returns: prompt+response token grids with masks and decoded text."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """``B`` responses; prompts left-padded to width ``prompt_len``, responses right-padded to ``T``.

    ``input_ids``/``attention_mask`` are ``(B, prompt_len + T)``; response token ``t`` of row ``i``
    is ``input_ids[i, prompt_len + t]`` and is valid where ``response_mask[i, t] == 1`` (the EOS
    token, when generated, is part of the response so the policy learns to stop).
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_len: int
    response_mask: Tensor
    responses: list[str]
    truncated: Tensor
    group_ids: Tensor

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum().item())

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
        )


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
