"""Masked-diffusion decoding with EOSER and the ascending step-size schedule (ASS), as a rollout engine.

EOSER / ASS / CJ-GRPO: arXiv 2509.23924; official code yjyddq/EOSER-ASS-RL
``cj-grpo/cj_grpo_trainer_eoser_ass.py`` (``reversed_process``, ``ass_sampling``,
``get_block_sizes``, ``get_num_transfer_tokens_ass``) and ``cj_grpo_trainer_eoser.py`` (``sampling``).

The response of ``L`` tokens starts as ``L`` ``[MASK]`` tokens. Decoding step ``k`` runs the model
on the current sequence, draws a candidate token at every position (Gumbel-max at the sampling
temperature, or the argmax when greedy) and its confidence ``softmax(logits)[candidate]``, and
commits the ``n_k`` most confident candidates among the still-masked positions before the step's
block end ``e_k`` ("low-confidence remasking"):

* **ASS** (:func:`rlvr.rollout.diffusion_schedule.ass_schedule`): step ``i`` commits ``2^i``
  tokens, so ``S = floor(log2 L)`` steps decode ``L`` tokens (the last step takes what remains). With ``block_num > 1`` the response is
  cut from the end into blocks of ``2^(S-1) + 1 + (L - 2^S)``, ``2^(S-2)``, ... tokens that each
  take one step, and the first block takes the remaining small steps ``0..S-block_num``.
* **uniform** (:func:`rlvr.rollout.diffusion_schedule.uniform_schedule`): ``steps`` steps commit
  equal shares (LLaDA's schedule, one block).
* **EOSER** (EOS Early Rejection): the confidence of an EOS candidate is multiplied by ``gamma_k``,
  which rises from ``gamma_min`` to ``gamma_max``: ``gamma_min + (gamma_max - gamma_min) t`` with
  ``t = (2^(k+1) - 1) / 2^S`` under ASS and ``t = k / (steps - 1)`` under the uniform schedule
  (official defaults ``gamma_min`` 0.01 and 0.4, ``gamma_max`` 1). Early steps then prefer content
  over the EOS tokens a masked diffusion model otherwise puts at the tail first (the "EOS trap").

The batch records the trajectory compactly: the final tokens and, per position, the step that
committed it (``extras["unmask_step"]``); state ``x^(s)`` is the final token where
``unmask_step < s`` and ``[MASK]`` elsewhere (:func:`rlvr.ops.trajectory.trajectory_states`).
``response_mask`` is 1 on all ``L`` positions (every one is a committed token the CJ-GRPO loss
trains, tail EOS included, as in the official ``compute_loss``); the text is decoded up to the
first EOS (the official decodes every non-special token) and ``truncated`` means no EOS at all.

Differences from the official sampler: pad/BOS/UNK/``[MASK]`` are never drawn (as in rlvr's
autoregressive sampler), the Gumbel draw is ``argmax(z / T - log(-log u))`` (the same distribution
as the official ``exp(z) / (-log u)^T``, without its float64 overflow), and the engine also records
``extras["sampler_logprobs"]``: each committed token's log-prob under the temperature-scaled,
full-vocabulary softmax of the forward that drew it, which the learner's replay must reproduce.
No KV cache: every step is a full forward of the bidirectional model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rlvr.errors import ConfigError
from rlvr.models.mdlm import check_bidirectional, mask_token_id, response_logits
from rlvr.rollout.base import UNMASK_STEP, RolloutBatch, response_mask_from_ids
from rlvr.rollout.diffusion_schedule import DecodeStep, Schedule, decoding_schedule
from rlvr.rollout.hf import decode_responses, format_prompts, special_ids_to_suppress
from rlvr.tasks.base import Problem

SAMPLER_LOGPROBS = "sampler_logprobs"
"""``extras`` key: ``(B, L)`` log-prob of each committed token under the forward that committed it."""


@torch.no_grad()
def diffusion_decode(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    schedule: list[DecodeStep],
    *,
    mask_id: int,
    eos_id: int,
    temperature: float = 1.0,
    greedy: bool = False,
    suppress_ids: Sequence[int] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens, unmask_step, logprobs)``, each ``(B, L)``, for left-padded prompts (module docstring).

    Random draws (``torch.rand``) come from the global generator of the prompts' device.
    """
    rows, prompt_len = prompt_ids.shape
    length = sum(step.count for step in schedule)
    device = prompt_ids.device
    tokens = torch.full((rows, length), mask_id, dtype=prompt_ids.dtype, device=device)
    unmask_step = torch.full((rows, length), -1, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, length, dtype=torch.float32, device=device)
    attention = torch.cat([prompt_mask, torch.ones_like(tokens)], dim=1)
    position = torch.arange(length, device=device)
    banned = torch.tensor(sorted(set(suppress_ids) | {mask_id}), dtype=torch.long, device=device)
    for k, step in enumerate(schedule):
        logits = response_logits(model, torch.cat([prompt_ids, tokens], dim=1), attention, prompt_len)
        allowed = logits.index_fill(-1, banned, float("-inf"))
        if greedy:
            candidate = allowed.argmax(-1)
        else:
            u = torch.rand(allowed.shape, dtype=torch.float64, device=device)
            candidate = (allowed.double() / temperature - torch.log(-torch.log(u))).argmax(-1)
        confidence = torch.softmax(allowed, dim=-1).gather(-1, candidate.unsqueeze(-1)).squeeze(-1)
        confidence = torch.where(candidate == eos_id, confidence * step.eos_gamma, confidence)
        open_ = (unmask_step < 0) & (position < step.end)
        confidence = torch.where(open_, confidence, torch.full_like(confidence, float("-inf")))
        chosen = confidence.topk(step.count, dim=-1).indices
        tokens.scatter_(1, chosen, candidate.gather(1, chosen))
        unmask_step.scatter_(1, chosen, k)
        step_logprobs = torch.log_softmax(logits / temperature, dim=-1).gather(-1, candidate.unsqueeze(-1)).squeeze(-1)
        logprobs.scatter_(1, chosen, step_logprobs.gather(1, chosen))
    return tokens, unmask_step, logprobs


class MDLMEngine:
    """The rollout engine of ``model.kind=mdlm``: :func:`diffusion_decode` on the training model itself."""

    name = "mdlm"

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str = "auto",
        *,
        schedule: Schedule = "ass",
        steps: int | None = None,
        block_num: int = 1,
        eos_gamma_min: float | None = None,
        eos_gamma_max: float = 1.0,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.options: dict[str, Any] = dict(
            schedule=schedule, steps=steps, block_num=block_num, eos_gamma_min=eos_gamma_min, eos_gamma_max=eos_gamma_max
        )

    def schedule(self, length: int) -> list[DecodeStep]:
        return decoding_schedule(length, **self.options)

    def generate(
        self,
        model: Any,
        prompts: Sequence[str | Problem],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
    ) -> RolloutBatch:
        """``n`` responses of ``max_new_tokens`` tokens per prompt (rows ``i*n .. i*n+n-1``: group ``i``)."""
        if top_p < 1.0 or top_k:
            raise ConfigError("masked-diffusion decoding samples the full distribution; set rollout.top_p=1 and rollout.top_k=0")
        check_bidirectional(model)
        tok = self.tokenizer
        enc = tok(format_prompts(tok, prompts, self.chat_template), return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(model.parameters()).device
        prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(device)
        prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(device)
        was_training = model.training
        model.eval()
        tokens, unmask_step, logprobs = diffusion_decode(
            model,
            prompt_ids,
            prompt_mask,
            self.schedule(max_new_tokens),
            mask_id=mask_token_id(model),
            eos_id=tok.eos_token_id,
            temperature=temperature,
            greedy=greedy,
            suppress_ids=special_ids_to_suppress(tok),
        )
        model.train(was_training)
        answer_mask, truncated = response_mask_from_ids(tokens, tok.eos_token_id)
        return RolloutBatch(
            input_ids=torch.cat([prompt_ids, tokens], dim=1),
            attention_mask=torch.cat([prompt_mask, torch.ones_like(tokens)], dim=1),
            prompt_len=prompt_ids.shape[1],
            response_mask=torch.ones(tokens.shape, dtype=torch.float32, device=device),
            responses=decode_responses(tok, tokens, answer_mask),
            truncated=truncated,
            group_ids=torch.arange(len(prompts), device=device).repeat_interleave(n),
            extras={UNMASK_STEP: unmask_step, SAMPLER_LOGPROBS: logprobs},
        )

    def sync_weights(self, model: Any) -> None:
        """No-op: decoding runs on the training model itself."""
        return None

    def sleep(self) -> None:
        """No-op: the engine holds no memory of its own."""
        return None
