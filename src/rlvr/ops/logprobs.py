"""Chunked log-probabilities and full-vocabulary entropy from hidden states and the LM-head weight.

The policy needs, at every response position, ``log pi(target)`` and (for entropy bonuses,
entropy-aware advantages and monitoring) the token entropy over the whole vocabulary (verl
``verl/utils/torch_functional.py`` ``logprobs_from_logits`` / ``entropy_from_logits``, on logits
divided by the rollout temperature)::

    z = (h @ W^T) / T                              temperature-scaled logits, shape (N, V)
    logp = z[target] - logsumexp(z)
    H = logsumexp(z) - sum_v p_v z_v,  p = softmax(z)

Materialising ``z`` for every token costs ``N x V`` floats (2048 tokens x 152k vocab = 1.2 GB in
fp32, several times that once autograd keeps softmax outputs). :func:`chunked_logprobs_entropy`
computes the same values ``chunk_size`` tokens at a time and recomputes each chunk's logits in the
backward pass, so the extra memory is ``O(chunk_size x V)`` (two re-used ``(chunk, V)`` float32
workspaces) besides the ``V x D`` weight gradient. This is the scheme verl uses in
``FusedLinearForPPO`` (volcengine/verl ``verl/utils/experimental/torch_functional.py``); the code
here is written from the formulas.

All per-chunk arithmetic is done in float32 (float64 when the inputs are float64), whatever the
dtype of ``hidden`` and ``weight``; outputs are in that compute dtype and gradients in the input
dtypes. For bf16/fp16 weights a float32 copy of ``weight`` (``V x D``) lives for the duration of the
forward and of the backward call.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

from rlvr.models.architecture import is_full_attention_llama, unwrap_peft

__all__ = [
    "chunked_logprobs_entropy",
    "default_position_ids",
    "last_hidden_states",
    "naive_logprobs_entropy",
    "output_head_weight",
    "response_hidden_states",
    "response_logprobs",
]


# --------------------------------------------------------------------------------------------
# shared helpers (also used by rlvr.ops.top_p_entropy)
# --------------------------------------------------------------------------------------------


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64 (so ``gradcheck`` can run in double)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_head_inputs(hidden: Tensor, weight: Tensor, temperature: float, chunk_size: int) -> None:
    """Validate shapes and scalar options shared by the chunked kernels; raise ``ValueError``."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (N, D); got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, D); got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden dim {hidden.shape[1]} != weight dim {weight.shape[1]} (weight must be (V, D))")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError("hidden and weight must be floating point tensors")
    if hidden.device != weight.device:
        raise ValueError(f"hidden on {hidden.device} but weight on {weight.device}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


def chunk_logits(hidden_chunk: Tensor, weight_c: Tensor, temperature: float, out: Tensor | None = None) -> Tensor:
    """``(hidden_chunk @ weight_c^T) / temperature`` in ``weight_c``'s (compute) dtype, shape (c, V).

    ``out``, if given, is a contiguous ``(c, V)`` workspace that receives the result (re-using one
    buffer across chunks avoids re-faulting fresh pages for every chunk on CPU).
    """
    h = hidden_chunk.to(weight_c.dtype)
    z = torch.mm(h, weight_c.t()) if out is None else torch.mm(h, weight_c.t(), out=out)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def workspace(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised ``(rows, vocab)`` buffer, sliced per chunk with ``buf[:c]``."""
    return torch.empty(rows, vocab, dtype=dtype, device=device)


def no_autocast(device: torch.device) -> torch.autocast:
    """Context that disables autocast, so the per-chunk matmuls stay in the compute dtype."""
    return torch.autocast(device_type=device.type, enabled=False)


def finish_weight_grad(grad_w: Tensor | None, weight: Tensor) -> Tensor | None:
    """Cast the compute-dtype weight-gradient accumulator back to ``weight.dtype``."""
    if grad_w is None:
        return None
    return grad_w if grad_w.dtype == weight.dtype else grad_w.to(weight.dtype)


# --------------------------------------------------------------------------------------------
# log-prob + entropy
# --------------------------------------------------------------------------------------------


class _ChunkedLogProbEntropy(torch.autograd.Function):
    """Autograd function behind :func:`chunked_logprobs_entropy` (see its docstring for the math)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(hidden, weight)
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        ent = torch.empty(n if with_entropy else 0, dtype=dtype, device=hidden.device)
        with torch.no_grad(), no_autocast(hidden.device):
            w_c = weight.detach().to(dtype)
            rows = min(chunk_size, n)
            z_buf = workspace(rows, weight.shape[0], dtype, hidden.device)
            p_buf = workspace(rows, weight.shape[0], dtype, hidden.device) if with_entropy else None
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = chunk_logits(hidden[s:e], w_c, temperature, out=z_buf[: e - s])
                target_z = z.gather(1, targets[s:e, None]).squeeze(1)
                lse_c, ent_c = _logsumexp_entropy_(z, p_buf[: e - s] if p_buf is not None else None)
                lse[s:e] = lse_c
                logp[s:e] = target_z - lse_c
                if ent_c is not None:
                    ent[s:e] = ent_c
            del w_c, z_buf, p_buf
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.with_entropy = with_entropy
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not ctx.with_entropy:
            g_ent = None
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None, None
        dtype = lse.dtype
        n = hidden.shape[0]
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        grad_h = torch.empty_like(hidden) if need_h else None
        with torch.no_grad(), no_autocast(hidden.device):
            w_c = weight.detach().to(dtype)
            grad_w = torch.zeros_like(w_c) if need_w else None
            rows = min(chunk_size, n)
            z_buf = workspace(rows, weight.shape[0], dtype, hidden.device)
            p_buf = workspace(rows, weight.shape[0], dtype, hidden.device) if g_ent is not None else None
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                h_c = hidden[s:e].detach().to(dtype)
                z = chunk_logits(h_c, w_c, temperature, out=z_buf[: e - s])
                dz = _dlogits_(
                    z,
                    p_buf[: e - s] if p_buf is not None else None,
                    lse[s:e],
                    ent[s:e] if g_ent is not None else None,
                    targets[s:e],
                    g_logp[s:e].to(dtype) if g_logp is not None else None,
                    g_ent[s:e].to(dtype) if g_ent is not None else None,
                )
                if temperature != 1.0:
                    dz.div_(temperature)  # z = logits / T  =>  d/dlogits = (d/dz) / T
                if grad_h is not None:
                    grad_h[s:e] = torch.mm(dz, w_c).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w.addmm_(dz.t(), h_c)
            del w_c, z_buf, p_buf
        return grad_h, finish_weight_grad(grad_w, weight), None, None, None, None


def _logsumexp_entropy_(z: Tensor, p_buf: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Row-wise ``logsumexp(z)`` and, if a workspace ``p_buf`` is given, the entropy; destroys ``z``.

    With ``u = z - max`` and ``s = sum exp(u)``: ``lse = max + log s`` and
    ``H = lse - E_p[z] = log s - E_p[u]``, a sum of two non-negative terms (no cancellation).
    Without ``p_buf`` the exponentials overwrite ``z`` and no entropy is computed.
    """
    row_max = z.amax(dim=-1, keepdim=True)
    u = z.sub_(row_max)
    e = torch.exp(u, out=p_buf) if p_buf is not None else u.exp_()
    total = e.sum(dim=-1)
    log_sum = total.log()
    entropy = log_sum - torch.einsum("ij,ij->i", e, u) / total if p_buf is not None else None
    return row_max.squeeze(-1) + log_sum, entropy


def _dlogits_(
    z: Tensor,
    p_buf: Tensor | None,
    lse: Tensor,
    ent: Tensor | None,
    targets: Tensor,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
) -> Tensor:
    """Gradient w.r.t. the scaled logits ``z`` of ``sum_i g_logp_i logp_i + g_ent_i H_i``, written into ``z``.

    ``d logp / dz_v = 1[v = target] - p_v`` and ``d H / dz_v = -p_v (z_v - E_p[z])
    = -p_v (log p_v + H)``. ``p_buf`` is a workspace, needed only when ``g_ent`` is given.
    """
    log_p = z.sub_(lse[:, None])
    if g_ent is not None:
        assert ent is not None and p_buf is not None
        p = torch.exp(log_p, out=p_buf)
        dz = log_p.add_(ent[:, None]).mul_(p).mul_(-g_ent[:, None])
        if g_logp is not None:
            dz.sub_(p.mul_(g_logp[:, None]))
    else:
        assert g_logp is not None
        dz = log_p.exp_().mul_(-g_logp[:, None])
    if g_logp is not None:
        dz.scatter_add_(1, targets[:, None], g_logp[:, None])
    return dz


def chunked_logprobs_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    r"""Per-token ``log pi(target)`` and full-vocabulary entropy, without the ``N x V`` logits.

    With ``z = (hidden @ weight^T) / temperature`` and ``p = softmax(z)`` (module docstring):

    * ``logp_i = z_{i,target_i} - logsumexp(z_i)``
    * ``H_i = logsumexp(z_i) - sum_v p_{iv} z_{iv}`` (evaluated as ``sum_v p (lse - z)``)

    Forward runs over ``chunk_size`` rows at a time and keeps only ``hidden``, ``weight``,
    ``targets`` and the per-token ``logsumexp`` and ``H``. Backward recomputes each chunk's logits
    and forms, for upstream gradients ``g_logp`` and ``g_H``::

        dL/dz_v = g_logp * (1[v = target] - p_v) + g_H * (-p_v * (z_v - E_p[z])),  E_p[z] = lse - H

    (``dH/dz_v = -p_v (log p_v + H)``: differentiate ``lse - sum_u p_u z_u`` with
    ``dp_u/dz_v = p_u (1[u=v] - p_v)``), then ``dL/dlogits = dL/dz / temperature``,
    ``grad_hidden = dL/dlogits @ weight`` and ``grad_weight = sum_chunks dL/dlogits^T @ hidden``.
    Both outputs have exact gradients; either input may be frozen (``requires_grad=False``).

    Args:
        hidden: ``(N, D)`` final hidden states (after the final norm).
        weight: ``(V, D)`` LM-head weight (no bias).
        targets: ``(N,)`` token ids in ``[0, V)``.
        temperature: logits are divided by it (verl convention: the rollout temperature).
        chunk_size: rows per chunk; the two ``(chunk_size, V)`` float32 workspaces dominate the
            extra memory (besides the ``V x D`` weight gradient itself).
        with_entropy: also compute ``H`` (otherwise ``None`` is returned for it).

    Returns:
        ``(logp, entropy)``, each ``(N,)`` float32 (float64 for float64 inputs), ``entropy`` ``None``
        when ``with_entropy`` is False.
    """
    check_head_inputs(hidden, weight, temperature, chunk_size)
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must have shape ({hidden.shape[0]},); got {tuple(targets.shape)}")
    targets = targets.to(device=hidden.device, dtype=torch.long)
    logp, ent = _ChunkedLogProbEntropy.apply(
        hidden, weight, targets, float(temperature), int(chunk_size), bool(with_entropy)
    )
    return logp, (ent if with_entropy else None)


def naive_logprobs_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Reference for :func:`chunked_logprobs_entropy`: full ``N x V`` logits and plain autograd.

    ``z = (hidden @ weight^T) / T``; ``logp = log_softmax(z)[target]``;
    ``H = logsumexp(z) - sum softmax(z) * z`` (verl ``entropy_from_logits``). ``chunk_size`` is
    accepted for signature compatibility and ignored.
    """
    del chunk_size
    check_head_inputs(hidden, weight, temperature, 1)
    dtype = compute_dtype(hidden, weight)
    logits = (hidden.to(dtype) @ weight.to(dtype).t()) / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets.long()[:, None]).squeeze(1)
    if not with_entropy:
        return logp, None
    ent = torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    return logp, ent


# --------------------------------------------------------------------------------------------
# Hugging Face causal LMs
# --------------------------------------------------------------------------------------------

# config attributes of transformers models whose LM head is not a plain ``h @ W^T``
_UNSUPPORTED_HEAD_ATTRS: dict[str, Any] = {
    "final_logit_softcapping": None,  # Gemma 2/3: tanh softcap of the logits
    "logit_scale": 1.0,  # Cohere: logits * logit_scale
    "logits_scaling": 1.0,  # Granite: logits / logits_scaling
}


def output_head_weight(model: nn.Module) -> Tensor:
    """The ``(V, D)`` LM-head weight, after checking that logits are exactly ``h @ W^T``.

    Raises ``NotImplementedError`` for logit soft-capping / scaling, a bias on the LM head, or an
    LM head that is not a plain ``nn.Linear`` (e.g. a LoRA-wrapped ``lm_head``).
    """
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name, neutral in _UNSUPPORTED_HEAD_ATTRS.items():
            value = getattr(text_config, name, neutral)
            if value is not None and value != neutral:
                raise NotImplementedError(
                    f"model config has {name}={value!r}: its logits are not h @ W^T, which "
                    "rlvr.ops computes; use the model's own logits for this model family"
                )
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise NotImplementedError(f"{type(base).__name__} has no output embeddings (get_output_embeddings() is None)")
    if type(head) is not nn.Linear:
        raise NotImplementedError(
            f"LM head is {type(head).__name__}, not a plain torch.nn.Linear (e.g. a LoRA adapter on "
            "lm_head or a quantised layer); rlvr.ops only reads the plain weight"
        )
    if head.bias is not None:
        raise NotImplementedError("LM head has a bias; rlvr.ops computes logits as h @ W^T without bias")
    return head.weight


def _decoder_body(model: nn.Module) -> nn.Module | None:
    """The module producing the final (normed) hidden states, or ``None`` if it cannot be found."""
    get_decoder = getattr(model, "get_decoder", None)
    if get_decoder is None:
        return None
    try:
        body = get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if body is None or body is model:
        return None
    return body


@functools.cache
def _forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def cache_keyword(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes a KV cache: ``cache`` (newer transformers 5.x,
    which warns on the old name) or ``past_key_values`` (transformers 5.0)."""
    return "cache" if "cache" in _forward_parameters(type(module)) else "past_key_values"


def default_position_ids(attention_mask: Tensor) -> Tensor:
    """``cumsum(mask) - 1`` (0 on padding): the positions ``generate`` uses for left-padded prompts."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 0)


def last_hidden_states(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    position_ids: Tensor | None = None,
) -> Tensor:
    """``(B, L, D)`` final hidden states of a Hugging Face causal LM, without computing logits.

    Runs the decoder body (``get_decoder()``, which for ``XForCausalLM`` returns ``model.model``;
    a PEFT ``PeftModel`` is unwrapped first, keeping its LoRA layers). If no decoder body can be
    found it falls back to ``model(..., output_hidden_states=True).hidden_states[-1]``. Position ids
    default to :func:`default_position_ids` of ``attention_mask`` (what ``generate`` used when
    sampling left-padded prompts), else ``0..L-1``.
    """
    base = unwrap_peft(model)
    if position_ids is None and attention_mask is not None:
        position_ids = default_position_ids(attention_mask)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": False,
    }
    body = _decoder_body(base)
    if body is not None:
        out = body(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    else:
        out = base(**kwargs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
    return hidden


def response_hidden_states(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    agree: Callable[[bool], bool] | None = None,
) -> Tensor:
    """``(B, T)`` final hidden states that predict the response tokens ``input_ids[:, prompt_len:]``.

    Equal to ``last_hidden_states(...)[:, prompt_len - 1 : -1]``. When rows share a prompt (a GRPO
    group holds ``n`` copies of it), each distinct prompt runs through the decoder once with its
    key/value cache, the cache is copied to the rows that share it, and only the response tokens run
    per row; gradients flow back through the copies. For ``n`` samples of a ``P``-token prompt
    this saves ``(n - 1) * P`` of every ``n * (P + T)`` token positions. The shared path is used
    for Llama-family models (:func:`rlvr.models.architecture.is_full_attention_llama`) without
    gradient checkpointing, whose prompts are left-padded (so the last prompt column is a real token).
    ``agree`` (multi-process training with sharded parameters, where both paths run collectives)
    turns the local choice into one every rank shares.
    """
    batch, seq_len = input_ids.shape
    prompt_ids, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
    body = _decoder_body(unwrap_peft(model))
    shareable = (
        body is not None
        and 1 <= prompt_len < seq_len
        and is_full_attention_llama(model)
        and not getattr(body, "gradient_checkpointing", False)
        and bool(prompt_mask[:, -1].all())
    )
    if shareable:
        unique, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
        shareable = unique.shape[0] < batch
    if agree is not None:
        shareable = agree(bool(shareable))
    if not shareable:
        return last_hidden_states(model, input_ids, attention_mask)[:, prompt_len - 1 : -1]
    from transformers import DynamicCache

    first = torch.full((unique.shape[0],), batch, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(batch, device=input_ids.device), reduce="amin")
    positions = default_position_ids(attention_mask)
    cache = DynamicCache(config=body.config)
    cache_arg = {cache_keyword(body): cache}
    prompt_out = body(
        input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=positions[first, :prompt_len],
        use_cache=True, **cache_arg,
    )  # fmt: skip
    for layer in cache.layers:  # index_select: its backward (index_add) is deterministic on CPU; [inverse] is not
        layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
    response_out = body(
        input_ids=input_ids[:, prompt_len:], attention_mask=attention_mask, position_ids=positions[:, prompt_len:],
        use_cache=True, **cache_arg,
    )  # fmt: skip
    last_prompt = prompt_out.last_hidden_state[:, -1:].index_select(0, inverse)
    return torch.cat([last_prompt, response_out.last_hidden_state[:, :-1]], dim=1)


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(B, T)`` log-probs (and entropies) of tokens ``response_start .. L-1`` under a causal LM.

    Prompts are left-padded to a common length so every response starts at column
    ``response_start``; the hidden states at positions ``response_start-1 .. L-2`` predict tokens
    ``response_start .. L-1``. All ``B*T`` rows go through :func:`chunked_logprobs_entropy` with
    the LM-head weight (values at padded response positions are computed but meaningless; mask
    them). ``T = L - response_start``. Raises ``NotImplementedError`` for LM heads that are not a
    plain bias-free linear map (see :func:`output_head_weight`).
    """
    seq_len = input_ids.shape[1]
    if not 1 <= response_start < seq_len:
        raise ValueError(f"response_start must be in [1, {seq_len - 1}] for sequences of length {seq_len}")
    weight = output_head_weight(model)
    hidden = last_hidden_states(model, input_ids, attention_mask, position_ids=position_ids)
    batch, n_resp = input_ids.shape[0], seq_len - response_start
    rows = hidden[:, response_start - 1 : seq_len - 1, :].reshape(batch * n_resp, hidden.shape[-1])
    targets = input_ids[:, response_start:].reshape(-1)
    logp, ent = chunked_logprobs_entropy(
        rows, weight, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
    return logp.view(batch, n_resp), (ent.view(batch, n_resp) if ent is not None else None)
