"""The policy forward of a masked-diffusion rollout: every committed token scored from the state it was drawn in.

CJ-GRPO (arXiv 2509.23924; official yjyddq/EOSER-ASS-RL ``cj-grpo/cj_grpo_trainer_eoser_ass.py``
``_get_per_token_logps``) optimises along the trajectory the sampler took: for each decoding step
``s`` a forward on the state ``x^(s)`` (the tokens committed before step ``s``, ``[MASK]`` elsewhere)
gives the log-probs of the tokens committed at step ``s``. Each response position is committed
exactly once, so these per-step values fill one ``(B, L)`` grid aligned with the response tokens:
``logprobs[b, t] = log p(x_t | x^(s_t))`` with ``s_t = unmask_step[b, t]``, and every forward
quantity of :mod:`rlvr.ops.forward` (entropy, top-p entropy, ...) is computed the same way from the
hidden state at ``(b, t)`` of step ``s_t``'s forward. Logits are divided by the sampling temperature,
as in the autoregressive forward (the official code scores untempered logits; the two agree at its
temperature 1). ``S`` forwards per call, each with gradients when called outside ``no_grad``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from rlvr.errors import RLVRError
from rlvr.models.mdlm import mask_token_id
from rlvr.ops.forward import HeadInputs, LogProbs, Quantity, _scatter
from rlvr.ops.logprobs import last_hidden_states, output_head_weight
from rlvr.rollout.base import UNMASK_STEP, RolloutBatch


def trajectory_states(final_ids: Tensor, unmask_step: Tensor, step: int, mask_id: int) -> Tensor:
    """``x^(step)``: ``final_ids`` where ``0 <= unmask_step < step``, ``mask_id`` elsewhere (``(B, L)``)."""
    committed = (unmask_step >= 0) & (unmask_step < step)
    return torch.where(committed, final_ids, torch.full_like(final_ids, mask_id))


def trajectory_forward(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float,
    chunk_size: int,
    quantities: Iterable[Quantity] = (),
) -> dict[str, Tensor]:
    """``{quantity.name: (B, L)}`` of the committed response tokens of a masked-diffusion batch (module docstring).

    Positions outside ``response_mask`` or never committed (``unmask_step < 0``) hold 0. A batch
    without its trajectory (``extras["unmask_step"]``) is an RLVRError, never an autoregressive forward.
    """
    wanted = {q.name: q for q in (LogProbs(), *quantities)}
    separate = [name for name, q in wanted.items() if q.own_forward]
    if separate:
        raise ValueError(f"a masked-diffusion forward cannot compute {separate}")
    unmask_step = batch.extras.get(UNMASK_STEP)
    if unmask_step is None:
        raise RLVRError(
            f"a masked diffusion model is scored along its decoding trajectory, but this batch has no extras['{UNMASK_STEP}'] "
            "(sample it with rlvr.rollout.mdlm.MDLMEngine, and keep RolloutBatch.extras when moving or merging batches)"
        )
    prompt_len = batch.prompt_len
    prompt, final = batch.input_ids[:, :prompt_len], batch.input_ids[:, prompt_len:]
    valid = batch.response_mask.bool() & (unmask_step >= 0)
    mask_id = mask_token_id(model)
    hidden: Tensor | None = None
    for step in range(int(unmask_step.max()) + 1 if unmask_step.numel() else 0):
        now = (unmask_step == step) & valid
        if not bool(now.any()):
            continue
        state = torch.cat([prompt, trajectory_states(final, unmask_step, step, mask_id)], dim=1)
        h = last_hidden_states(model, state, batch.attention_mask)[:, prompt_len:]
        hidden = torch.where(now.unsqueeze(-1), h, h.new_zeros(()) if hidden is None else hidden)
    if hidden is None:
        return {name: torch.zeros(valid.shape, device=valid.device) for name in wanted}
    head = HeadInputs(
        hidden=hidden[valid],
        weight=output_head_weight(model),
        targets=final[valid],
        temperature=temperature,
        chunk_size=chunk_size,
        wanted=frozenset(wanted),
    )
    return {name: _scatter(q.compute(head), valid) for name, q in wanted.items()}
