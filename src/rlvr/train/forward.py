"""Policy forward over rollout rows: per-token log-probs and the entropies the methods ask for.

Only the valid response positions go through the chunked log-prob / entropy kernels, so the cost
of the LM head scales with the real number of response tokens, and the full ``tokens x vocab``
logits are never held at once (``rlvr.ops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from rlvr.ops import chunked_logprobs_entropy, chunked_top_p_entropy, output_head_weight, response_hidden_states
from rlvr.ops.certainty import chunked_self_certainty
from rlvr.ops.minp import chunked_minp_logprobs
from rlvr.rollout.base import RolloutBatch


FORWARD_FIELDS = frozenset(
    {"logprobs", "entropy", "top_p_entropy", "minp_logprobs", "self_certainty", "raw_logit"}
)
"""Per-token quantities :func:`policy_forward` can compute; a method asks for the current-policy
value as ``<field>`` and for the rollout (old) policy's as ``old_<field>`` in its ``requires``.

``minp_logprobs`` (Lp-Reg's min-p proxy log-prob of the sampled token), ``self_certainty`` and
``raw_logit`` (UCAS) never carry a gradient: methods use them as fixed targets or inputs."""

NO_GRAD_FIELDS = frozenset({"minp_logprobs", "self_certainty", "raw_logit"})


@dataclass(frozen=True)
class TopPSpec:
    """Top-p renormalised entropy settings (SIREN)."""

    p: float = 0.8
    top_k: int = 10000


@dataclass(frozen=True)
class MinPSpec:
    """Min-p proxy settings (Lp-Reg): keep tokens with ``p_v >= kappa * max p`` (official scripts 0.02)."""

    kappa: float = 0.02


def policy_forward(
    model: PreTrainedModel,
    batch: RolloutBatch,
    *,
    temperature: float,
    chunk_size: int,
    fields: frozenset[str] = frozenset({"logprobs"}),
    top_p: TopPSpec | None = None,
    min_p: MinPSpec | None = None,
) -> dict[str, Tensor]:
    """The requested per-token ``fields`` (subset of FORWARD_FIELDS) of the response tokens, ``(B, T)``.

    Gradients flow when called outside ``torch.no_grad`` (except for :data:`NO_GRAD_FIELDS`). Logits
    are divided by the sampling temperature, as verl does, so that the old/current ratio refers to
    the sampling distribution (``raw_logit`` is the one pre-temperature value). ``min_p`` sets the
    min-p proxy threshold of ``minp_logprobs`` (default :class:`MinPSpec`).
    """
    unknown = set(fields) - FORWARD_FIELDS
    if unknown:
        raise ValueError(f"policy_forward cannot compute {sorted(unknown)}; known: {sorted(FORWARD_FIELDS)}")
    prompt_len = batch.prompt_len
    valid = batch.response_mask.bool()
    flat_hidden = response_hidden_states(model, batch.input_ids, batch.attention_mask, prompt_len)[valid]
    flat_targets = batch.input_ids[:, prompt_len:][valid]
    weight = output_head_weight(model)
    out: dict[str, Tensor] = {}
    logp, entropy = chunked_logprobs_entropy(
        flat_hidden,
        weight,
        flat_targets,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy="entropy" in fields,
    )
    out["logprobs"] = _scatter(logp, valid)
    if entropy is not None:
        out["entropy"] = _scatter(entropy, valid)
    if "top_p_entropy" in fields:
        spec = top_p or TopPSpec()
        top_p_h, _ = chunked_top_p_entropy(
            flat_hidden, weight, p=spec.p, top_k=spec.top_k, temperature=temperature, chunk_size=max(1, chunk_size // 4)
        )
        out["top_p_entropy"] = _scatter(top_p_h, valid)
    if "minp_logprobs" in fields:
        spec_m = min_p or MinPSpec()
        minp = chunked_minp_logprobs(
            flat_hidden.detach(),
            weight,
            flat_targets,
            kappa=spec_m.kappa,
            temperature=temperature,
            chunk_size=chunk_size,
        )
        out["minp_logprobs"] = _scatter(minp, valid)
    if fields & {"self_certainty", "raw_logit"}:
        certainty, raw = chunked_self_certainty(
            flat_hidden.detach(),
            weight,
            flat_targets,
            temperature=temperature,
            chunk_size=chunk_size,
            with_certainty="self_certainty" in fields,
        )
        if certainty is not None:
            out["self_certainty"] = _scatter(certainty, valid)
        if "raw_logit" in fields:
            out["raw_logit"] = _scatter(raw, valid)
    return out


def _scatter(values: Tensor, valid: Tensor) -> Tensor:
    """Place flat per-token ``values`` back at the ``valid`` positions of a zero ``(B, T)`` grid."""
    grid = torch.zeros(valid.shape, dtype=values.dtype, device=values.device)
    return grid.masked_scatter(valid, values)
