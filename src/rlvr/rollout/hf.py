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
from rlvr.rollout.base import TOP_IDS, TOP_LOGPROBS, RolloutBatch, left_pad, response_mask_from_ids
from rlvr.rollout.kv_decode import KVDecoder, TemperatureFn, top_logprob_list
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


class TokenIdEngine:
    """``generate`` of an engine that samples from token ids: the prompts are formatted (chat template,
    system message) and tokenized by rlvr, then :meth:`generate_from_ids` continues them."""

    tokenizer: PreTrainedTokenizerBase
    chat_template: str

    def prompt_token_ids(self, prompts: Sequence[str | Problem]) -> list[list[int]]:
        """The token ids of each formatted prompt (chat template applied, no padding)."""
        return prompt_token_ids(self.tokenizer, prompts, self.chat_template)

    @torch.no_grad()
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
        temperature_fn: TemperatureFn | None = None,
        top_logprobs: int = 0,
    ) -> RolloutBatch:
        """``n`` responses for each prompt (rows ``i*n .. i*n+n-1`` share group id ``i``).

        Randomness comes from torch's global generator, which the trainer seeds, so a run is
        reproducible on CPU. See :meth:`generate_from_ids` for ``temperature_fn`` and ``top_logprobs``.
        """
        return self.generate_from_ids(
            model, self.prompt_token_ids(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, greedy=greedy, temperature_fn=temperature_fn, top_logprobs=top_logprobs,
        )  # fmt: skip

    def generate_from_ids(self, model: Any, prompt_ids: Sequence[Sequence[int]], **options: Any) -> RolloutBatch:
        raise NotImplementedError


class HFRollout(TokenIdEngine):
    """Sampling engine on the training model itself (no weight sync needed)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: str = "auto", kv_decode: bool = True) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.kv_decode = kv_decode

    @torch.no_grad()
    def generate_from_ids(
        self,
        model: PreTrainedModel,
        prompt_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        temperature_fn: TemperatureFn | None = None,
        top_logprobs: int = 0,
    ) -> RolloutBatch:
        """``n`` continuations of each token-id prompt, which may end inside an earlier response.

        ``prompt_ids[i]`` is a formatted prompt's ids, possibly followed by a prefix of a response
        (rows of different lengths are left-padded): the continuation starts exactly at the next
        token position, with no decode/re-encode of the prefix, and everything given counts as
        prompt (outside ``response_mask``). ``temperature_fn`` (rlvr's KV-cache loop only; see
        :data:`rlvr.rollout.kv_decode.TemperatureFn`) samples each token at its own temperature and
        records it; ``top_logprobs = k`` records the ``k`` largest raw log-probs of every response
        position (``extras``, see :mod:`rlvr.rollout.base`).
        """
        tok = self.tokenizer
        device = next(model.parameters()).device
        prompts, prompt_mask = left_pad([list(p) for p in prompt_ids], tok.pad_token_id, device)
        input_ids = prompts.repeat_interleave(n, dim=0)
        attention_mask = prompt_mask.repeat_interleave(n, dim=0)
        suppress = special_ids_to_suppress(tok)
        use_kv = self.kv_decode and is_full_attention_llama(model)
        if temperature_fn is not None and not use_kv:
            raise ConfigError(ADAPTIVE_NEEDS_KV)
        was_training = model.training
        model.eval()
        if use_kv:
            decoded = KVDecoder(model).decode(
                prompts,
                prompt_mask,
                n=n,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                greedy=greedy,
                suppress_ids=suppress,
                temperature_fn=temperature_fn,
                top_logprobs=top_logprobs,
            )
            response_ids, extras = decoded.ids, decoded.extras
        else:
            response_ids, extras = self._generate(
                model, input_ids, attention_mask, max_new_tokens, temperature, top_p, top_k, greedy, suppress, top_logprobs
            )
        model.train(was_training)
        prompt_len = input_ids.shape[1]
        response_mask, truncated = response_mask_from_ids(response_ids, tok.eos_token_id)
        response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
        full_ids = torch.cat([input_ids, response_ids], dim=1)
        full_mask = torch.cat([attention_mask, response_mask.long()], dim=1)
        responses = decode_responses(tok, response_ids, response_mask)
        group_ids = torch.arange(len(prompt_ids), device=device).repeat_interleave(n)
        return RolloutBatch(full_ids, full_mask, prompt_len, response_mask, responses, truncated, group_ids, extras)

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
        top_logprobs: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Response ids from transformers ``generate`` (architectures the KV decoder does not cover),
        and the raw top-``top_logprobs`` lists (``output_logits``) when asked."""
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
        if top_logprobs > 0:
            gen_kwargs.update(output_logits=True, return_dict_in_generate=True)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        if top_logprobs <= 0:
            return out[:, input_ids.shape[1] :], {}
        values, ids = zip(*(top_logprob_list(step, top_logprobs) for step in out.logits))
        extras = {TOP_LOGPROBS: torch.stack(values, dim=1), TOP_IDS: torch.stack(ids, dim=1)}
        return out.sequences[:, input_ids.shape[1] :], extras


ADAPTIVE_NEEDS_KV = (
    "rollout.adaptive_temperature needs rlvr's KV-cache sampling loop (rollout.backend=hf, rollout.kv_decode=true, "
    "a Llama/Qwen2/Qwen3/Mistral model): transformers generate and vLLM sample every token of a row at one temperature"
)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | Problem], chat_template: str) -> list[list[int]]:
    """The token ids of each prompt after :func:`format_prompts` (no special tokens added, no padding)."""
    texts = format_prompts(tokenizer, prompts, chat_template)
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def decode_responses(tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Text of each response without special tokens."""
    out = []
    for ids, m in zip(response_ids.tolist(), mask.tolist()):
        valid = [t for t, keep in zip(ids, m) if keep]
        out.append(tokenizer.decode(valid, skip_special_tokens=True))
    return out
