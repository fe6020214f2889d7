"""A lean sampling loop for Llama-family decoders: preallocated KV cache, shrinking batch.

``transformers.generate`` is general (any architecture, any logits processor, any cache), and that
generality costs several milliseconds of Python per decoding step: the attention mask is rebuilt,
the dynamic KV cache grows by ``torch.cat`` on every layer, and processors and stopping criteria run
for every row, finished or not. For the small models of RL experiments on CPU that overhead is
larger than the model itself. This loop does the same sampling with less:

* the KV cache is preallocated once (``B x kv_heads x (prompt + max_new) x head_dim`` per layer)
  and written in place;
* attention is computed directly with grouped-query heads (no ``repeat_kv`` copy) under a padding
  mask built once;
* each prompt is prefilled once for its ``n`` samples;
* finished rows are dropped from the batch whenever the running rows fall to 3/4 of the rows the
  cache holds (until then they ride along on the pad token), so a batch whose answers end early
  stops paying for them.

The model's own modules do the rest (embedding, RMSNorms, the q/k/v/o projections, with their
biases and any PEFT LoRA layers, Qwen3's q/k norms, the MLP, the rotary embedding with its
scaling, the LM head), so there is no second copy of the weights and no weight sync.
Architectures: ``llama``, ``qwen2``, ``qwen3`` and ``mistral`` without sliding-window layers
(:func:`rlvr.models.architecture.is_full_attention_llama`); anything else uses ``generate``.

Sampling follows ``generate``'s order and rules (suppressed ids set to ``-inf``, then temperature,
top-k, top-p; rows after their EOS hold the pad id), so for greedy decoding the tokens equal
``generate``'s and sampled tokens come from the same distribution. The draw itself is inverse-CDF
(:func:`sample_categorical`, one uniform per running row) rather than ``torch.multinomial``, so the
sampled sequences for a given seed differ from ``generate``'s.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlvr.models.architecture import is_full_attention_llama, unwrap_peft
from rlvr.ops.logprobs import default_position_ids
from rlvr.rollout.base import SAMPLING_ENTROPY, TOKEN_TEMPERATURE, TOP_IDS, TOP_LOGPROBS

COMPACT_FRACTION = 0.75
"""The cache is compacted when the running rows fall to this fraction of the rows it holds."""

TemperatureFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Per-token temperature: raw next-token logits ``(B, V)`` (float32) -> ``(temperature, entropy)``, each
``(B,)``: the temperature to sample each row at and the entropy it was derived from (recorded)."""


class Decoded(NamedTuple):
    """Response ids ``(B, T)`` and what :meth:`KVDecoder.decode` recorded per response position."""

    ids: Tensor
    extras: dict[str, Tensor]


def top_logprob_list(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(values, ids)`` ``(B, k)``: the ``k`` largest log-probs of ``softmax(logits)`` (temperature 1), descending."""
    values, ids = torch.topk(logits.float().log_softmax(-1), min(k, logits.shape[-1]), dim=-1)
    return values, ids


def warp_logits(
    logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    suppress_ids: list[int] | None = None,
) -> Tensor:
    """Next-token scores in ``generate``'s processing order: suppress, temperature, top-k, top-p.

    Removed entries are ``-inf``. ``top_k=0`` and ``top_p=1`` switch those filters off; top-p keeps
    the smallest set of tokens whose probability mass exceeds ``top_p`` (at least one token).
    ``temperature`` may be a ``(B, 1)`` tensor: one temperature per row.
    """
    scores = logits.float()
    if suppress_ids:
        scores = scores.index_fill(-1, torch.tensor(suppress_ids, device=scores.device), float("-inf"))
    if isinstance(temperature, Tensor) or temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1.0 - top_p
        drop_sorted[..., -1:] = False
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores


def sample_categorical(probs: Tensor) -> Tensor:
    """One index per row of ``probs`` ``(B, V)`` by inverse-CDF sampling: ``min{i : cumsum_i > u * total}``.

    One uniform draw per row (``torch.multinomial`` draws one exponential per vocabulary entry, which
    at a 150k vocabulary costs more than the decoding step itself); zero-probability entries are never
    picked because the comparison is strict.
    """
    cumulative = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=cumulative.dtype, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _apply_rotary(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """RoPE on ``(B, heads, S, D)``: ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``.

    ``signed_sin`` is ``[-sin_1, sin_2]`` (halves of ``sin``), so ``roll(x, D/2) * signed_sin`` is
    ``rotate_half(x) * sin`` in one op; ``cos``/``signed_sin`` are ``(B, S, D)``.
    """
    return torch.addcmul(x * cos.unsqueeze(1), x.roll(x.shape[-1] // 2, dims=-1), signed_sin.unsqueeze(1))


def _signed_sin(sin: Tensor) -> Tensor:
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Llama-family RMSNorm module's output, in one fused op (same formula: ``w * x / rms(x)``).

    Half-precision inputs go through the module, which normalises in float32 before the cast.
    """
    if x.dtype != torch.float32:
        return norm(x)
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


class _Cache:
    """Per-layer key/value buffers ``(B, kv_heads, width, head_dim)`` and an additive key mask."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], key_bias: Tensor) -> None:
        self.keys, self.values, self.key_bias = keys, values, key_bias

    def select(self, rows: Tensor) -> "_Cache":
        return _Cache([k[rows] for k in self.keys], [v[rows] for v in self.values], self.key_bias[rows])


class KVDecoder:
    """Samples continuations of left-padded prompts from a supported model (see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        if not is_full_attention_llama(model):
            raise ValueError(f"{type(unwrap_peft(model)).__name__} is not supported by KVDecoder; use generate")
        self.base = unwrap_peft(model)
        self.decoder = self.base.model
        config = self.base.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads

    def _attention(self, layer: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, cache: _Cache, i: int, start: int, bias: Tensor) -> Tensor:
        """Self-attention of ``x`` ``(B, S, hidden)`` at cache slots ``start .. start+S``; writes the cache."""
        attn = layer.self_attn
        b, s, _ = x.shape
        q = attn.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = attn.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
        q = _apply_rotary(q.transpose(1, 2), cos, sin)
        k = _apply_rotary(k.transpose(1, 2), cos, sin)
        cache.keys[i][:, :, start : start + s] = k
        cache.values[i][:, :, start : start + s] = v.transpose(1, 2)
        keys = cache.keys[i][:, :, : start + s]
        values = cache.values[i][:, :, : start + s]
        rep = self.num_heads // self.num_kv_heads
        # query head h reads kv head h // rep (transformers' repeat_kv), without copying the cache
        grouped = q.reshape(b, self.num_kv_heads, rep * s, self.head_dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * attn.scaling
        scores = scores.view(b, self.num_kv_heads, rep, s, -1) + bias
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights.view(b, self.num_kv_heads, rep * s, -1), values)
        out = out.view(b, self.num_heads, s, self.head_dim).transpose(1, 2).reshape(b, s, -1)
        return attn.o_proj(out)

    def _rotary_table(self, length: int) -> tuple[Tensor, Tensor] | None:
        """``cos``/signed ``sin`` ``(length, head_dim)`` for positions ``0..length-1`` from the model's rotary module.

        None for the rotary types whose frequencies depend on the sequence length seen so far
        (``dynamic``, ``longrope``): those are recomputed at every step, as ``generate`` does.
        """
        rotary = self.decoder.rotary_emb
        if getattr(rotary, "rope_type", "default") in ("dynamic", "longrope"):
            return None
        probe = self.decoder.embed_tokens.weight[:1]
        cos, sin = rotary(probe, torch.arange(length, device=probe.device)[None])
        return cos[0], _signed_sin(sin[0])

    def _forward(
        self, ids: Tensor, positions: Tensor, cache: _Cache, start: int, bias: Tensor, table: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """Last-position logits ``(B, V)`` of ``ids`` ``(B, S)`` placed at cache slots ``start..``."""
        x = self.decoder.embed_tokens(ids)
        if table is None:
            cos, sin = self.decoder.rotary_emb(x, positions)
            sin = _signed_sin(sin)
        else:
            cos, sin = table[0][positions], table[1][positions]
        for i, layer in enumerate(self.decoder.layers):
            x = x + self._attention(layer, _rms_norm(layer.input_layernorm, x), cos, sin, cache, i, start, bias)
            x = x + layer.mlp(_rms_norm(layer.post_attention_layernorm, x))
        x = _rms_norm(self.decoder.norm, x[:, -1:])
        return self.base.lm_head(x)[:, -1]

    def _prefill(self, input_ids: Tensor, attention_mask: Tensor, width: int) -> tuple[_Cache, Tensor, Tensor]:
        """A cache of ``width`` slots holding the prompts, their last logits and each row's next position."""
        prompts, prompt_len = input_ids.shape
        device = input_ids.device
        dtype = self.decoder.embed_tokens.weight.dtype
        keys = [torch.zeros(prompts, self.num_kv_heads, width, self.head_dim, dtype=dtype, device=device) for _ in self.decoder.layers]
        valid = torch.ones(prompts, width, dtype=torch.bool, device=device)
        valid[:, :prompt_len] = attention_mask.bool()
        key_bias = torch.zeros(prompts, width, dtype=dtype, device=device).masked_fill(~valid, torch.finfo(dtype).min)
        cache = _Cache(keys, [torch.zeros_like(k) for k in keys], key_bias)
        positions = default_position_ids(attention_mask)  # real tokens only, as generate counts them
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).tril()
        bias = key_bias[:, None, None, None, :prompt_len].masked_fill(~causal, torch.finfo(dtype).min)
        logits = self._forward(input_ids, positions, cache, 0, bias)
        return cache, logits, positions[:, -1] + 1

    def sample(self, input_ids: Tensor, attention_mask: Tensor, **options: Any) -> Tensor:
        """Response ids ``(B * n, T)`` (``T <= max_new_tokens``; pad after each row's EOS): :meth:`decode`'s ids.

        Each of the ``B`` left-padded prompts is prefilled once and its cache copied to its ``n``
        sampled rows (rows ``i*n .. i*n+n-1`` continue prompt ``i``). Prompts of different lengths
        (e.g. a prompt followed by a prefix of an earlier response) continue at their own next
        position: positions count the real tokens only.
        """
        return self.decode(input_ids, attention_mask, **options).ids

    @torch.no_grad()
    def decode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        n: int = 1,
        max_new_tokens: int,
        eos_token_id: int | list[int],
        pad_token_id: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        suppress_ids: list[int] | None = None,
        temperature_fn: TemperatureFn | None = None,
        top_logprobs: int = 0,
    ) -> Decoded:
        """Sample continuations (see :meth:`sample`), with per-position records in ``extras`` (each ``(B * n, T, ...)``).

        ``temperature_fn`` (see :data:`TemperatureFn`) sets each row's temperature at every step from
        that step's raw logits, in place of ``temperature``; the temperatures and entropies are
        recorded (:data:`~rlvr.rollout.base.TOKEN_TEMPERATURE`, :data:`~rlvr.rollout.base.SAMPLING_ENTROPY`).
        ``top_logprobs = k > 0`` records the ``k`` largest raw log-probs of every step and their ids
        (:data:`~rlvr.rollout.base.TOP_LOGPROBS`, :data:`~rlvr.rollout.base.TOP_IDS`).
        """
        prompts, prompt_len = input_ids.shape
        device = input_ids.device
        eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
        cache, logits, next_pos = self._prefill(input_ids, attention_mask, prompt_len + max_new_tokens)
        table = self._rotary_table(int(next_pos.max()) + max_new_tokens)
        if n > 1:
            copies = torch.arange(prompts, device=device).repeat_interleave(n)
            cache, logits, next_pos = cache.select(copies), logits[copies], next_pos[copies]
        total = prompts * n
        out = torch.full((total, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        records: dict[str, Tensor] = {}
        if temperature_fn is not None:
            records[TOKEN_TEMPERATURE] = torch.full((total, max_new_tokens), float(temperature), device=device)
            records[SAMPLING_ENTROPY] = torch.zeros(total, max_new_tokens, device=device)
        if top_logprobs > 0:
            k = min(top_logprobs, logits.shape[-1])
            records[TOP_LOGPROBS] = torch.zeros(total, max_new_tokens, k, device=device)
            records[TOP_IDS] = torch.zeros(total, max_new_tokens, k, dtype=torch.long, device=device)
        rows = torch.arange(total, device=device)  # original row of each cache row
        done = torch.zeros(total, dtype=torch.bool, device=device)
        length = 0
        for step in range(max_new_tokens):
            live = (~done).nonzero().squeeze(1)
            raw = logits[live]
            step_temperature: float | Tensor = temperature
            if temperature_fn is not None:
                temps, entropy = temperature_fn(raw.float())
                records[TOKEN_TEMPERATURE][rows[live], step] = temps
                records[SAMPLING_ENTROPY][rows[live], step] = entropy
                step_temperature = temps.unsqueeze(-1)
            if top_logprobs > 0:
                values, ids = top_logprob_list(raw, top_logprobs)
                records[TOP_LOGPROBS][rows[live], step] = values
                records[TOP_IDS][rows[live], step] = ids
            scores = warp_logits(raw, temperature=1.0 if greedy else step_temperature, top_k=0 if greedy else top_k,
                                 top_p=1.0 if greedy else top_p, suppress_ids=suppress_ids)  # fmt: skip
            sampled = scores.argmax(-1) if greedy else sample_categorical(scores.softmax(-1))
            out[rows[live], step] = sampled
            length = step + 1
            tokens = torch.full_like(rows, pad_token_id).index_copy(0, live, sampled)
            done = done.index_fill(0, live[torch.isin(sampled, eos_ids)], True)
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            if int((~done).sum()) <= COMPACT_FRACTION * len(rows):
                keep = (~done).nonzero().squeeze(1)
                cache, rows, done, tokens, next_pos = cache.select(keep), rows[keep], done[keep], tokens[keep], next_pos[keep]
            slot = prompt_len + step
            bias = cache.key_bias[:, None, None, None, : slot + 1]
            logits = self._forward(tokens[:, None], next_pos[:, None], cache, slot, bias, table)
            next_pos = next_pos + 1
        return Decoded(out[:, :length], {key: value[:, :length] for key, value in records.items()})
