"""Rollouts on the training model itself: ``n`` sampled responses per prompt.

Llama-family models (Llama, Qwen2, Qwen3, Mistral; :func:`rlvr.models.architecture.is_full_attention_llama`)
are sampled with rlvr's lean preallocated-cache loop (:class:`rlvr.rollout.kv_decode.KVDecoder`);
other architectures, or ``kv_decode=False``, use transformers' ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.errors import ConfigError
from rlvr.models.architecture import is_full_attention_llama
from rlvr.rollout.base import RolloutBatch, response_mask_from_ids
from rlvr.rollout.kv_decode import KVDecoder
from rlvr.tasks.base import Problem


def _prompt_and_system(prompt: str | Problem) -> tuple[str, str | None]:
    """The user text of a prompt and its system message (a Problem's ``meta["system"]``, if any)."""
    if isinstance(prompt, Problem):
        system = prompt.meta.get("system") if isinstance(prompt.meta, dict) else None
        return prompt.prompt, (str(system) if system else None)
    return prompt, None


def format_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | Problem], chat_template: str
) -> list[str]:
    """Apply the tokenizer's chat template (``auto``: when it has one) and return prompt strings.

    A prompt is a string, or a Problem: its ``prompt``, and its ``meta["system"]`` (set by tasks
    such as math_jsonl's ``system_prompt``) as the chat's system message. Without a chat template
    the system text comes first, then a blank line, then the prompt.
    """
    use_chat = chat_template == "on" or (chat_template == "auto" and getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("rollout.chat_template=on but the tokenizer has no chat template; use auto or off")
    pairs = [_prompt_and_system(p) for p in prompts]
    if not use_chat:
        bos = tokenizer.bos_token or ""
        return [bos + (f"{system}\n\n{text}" if system else text) for text, system in pairs]
    texts = []
    for text, system in pairs:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        try:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as exc:  # noqa: BLE001 - jinja's TemplateError, raised by templates without a system role
            if not system:
                raise
            raise ConfigError(
                f"the tokenizer's chat template rejects a system message ({exc}); put that text in the "
                "task's prompt_template instead of system_prompt, or use rollout.chat_template=off"
            ) from exc
    return texts


def special_ids_to_suppress(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Pad/BOS/UNK ids that must never be sampled inside a response (EOS stays allowed)."""
    eos = tokenizer.eos_token_id
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    return sorted(i for i in ids if i is not None and i != eos)


class HFRollout:
    """Sampling engine on the training model itself (no weight sync needed)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: str = "auto", kv_decode: bool = True) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.kv_decode = kv_decode

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: Sequence[str | Problem],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
    ) -> RolloutBatch:
        """``n`` responses for each prompt (rows ``i*n .. i*n+n-1`` share group id ``i``).

        Randomness comes from torch's global generator, which the trainer seeds, so a run is
        reproducible on CPU.
        """
        tok = self.tokenizer
        texts = format_prompts(tok, prompts, self.chat_template)
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(model.parameters()).device
        input_ids = enc["input_ids"].repeat_interleave(n, dim=0).to(device)
        attention_mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(device)
        suppress = special_ids_to_suppress(tok)
        was_training = model.training
        model.eval()
        if self.kv_decode and is_full_attention_llama(model):
            response_ids = KVDecoder(model).sample(
                enc["input_ids"].to(device),
                enc["attention_mask"].to(device),
                n=n,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                greedy=greedy,
                suppress_ids=suppress,
            )
        else:
            response_ids = self._generate(model, input_ids, attention_mask, max_new_tokens, temperature, top_p, top_k, greedy, suppress)
        model.train(was_training)
        prompt_len = input_ids.shape[1]
        response_mask, truncated = response_mask_from_ids(response_ids, tok.eos_token_id)
        response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
        full_ids = torch.cat([input_ids, response_ids], dim=1)
        full_mask = torch.cat([attention_mask, response_mask.long()], dim=1)
        responses = decode_responses(tok, response_ids, response_mask)
        group_ids = torch.arange(len(prompts), device=device).repeat_interleave(n)
        return RolloutBatch(full_ids, full_mask, prompt_len, response_mask, responses, truncated, group_ids)

    def _generate(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
        suppress: list[int],
    ) -> torch.Tensor:
        """Response ids from transformers ``generate`` (architectures the KV decoder does not cover)."""
        tok = self.tokenizer
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            use_cache=True,
        )
        if greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
        if suppress:
            gen_kwargs["suppress_tokens"] = suppress
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        return out[:, input_ids.shape[1] :]


def decode_responses(tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Text of each response without special tokens."""
    out = []
    for ids, m in zip(response_ids.tolist(), mask.tolist()):
        valid = [t for t, keep in zip(ids, m) if keep]
        out.append(tokenizer.decode(valid, skip_special_tokens=True))
    return out
