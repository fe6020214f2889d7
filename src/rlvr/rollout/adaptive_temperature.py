"""HAPO-H adaptive temperature sampling: each token is sampled at ``T_t = T (1 + tau clip(h^_t, -1, 1))``.

HAPO-H (arXiv 2509.16591; official starriver030515/HAPO ``recipe/train.md``,
``compute_entropy_based_temperature``, applied inside a patched vLLM sampler). At every decoding step,
with ``H_t`` the entropy of the step's next-token distribution at the base temperature ``T``::

    h_t  = (log max(H_t, 1e-6) - m) / (s + 1e-6)
    h^_t = h_t * scale_pos (h_t > 0),  h_t * scale_neg (h_t <= 0)
    T_t  = T (1 + tau clip(h^_t, -1, 1))

where ``(m, s, scale_pos, scale_neg)`` are :func:`rlvr.algos.hapo_h.entropy_normalizer` statistics
of the previous step's rollout entropies (``pivot``, ``official_sign`` as there); the first step,
with no statistics yet, samples at ``T``. rlvr's KV-cache loop (:mod:`rlvr.rollout.kv_decode`)
computes this per row and step and records ``T_t`` and ``H_t`` in the rollout's ``extras``
(:data:`~rlvr.rollout.base.TOKEN_TEMPERATURE`, :data:`~rlvr.rollout.base.SAMPLING_ENTROPY`).

The statistics are taken from those recorded entropies of the step's final rollout (after dynamic
sampling): the rollout policy is the old policy and the entropies are at the base ``T``, so they are
the official "old log-prob entropies" (verl recomputes them at ``T``) without a second forward.
The official ``H_t`` is of the raw logits; here it is at ``T`` (the same for the recipes' ``T = 1``).

**Which temperature the PPO ratio uses** (``logprob_temperature``): ``sampled`` (default) evaluates
the old, current and reference log-probs at the recorded ``T_t`` (the learner scales each hidden
row by ``1 / T_t``, :func:`rlvr.ops.forward.compute_policy_forward`), so the first update is
on-policy; ``base`` evaluates them at ``T`` as the official code does (verl's ``compute_log_prob``),
which makes the stored and recomputed policies differ by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlvr.algos.hapo_h import EntropyNormalizer, adaptive_temperature, entropy_normalizer
from rlvr.rollout.base import SAMPLING_ENTROPY, TOKEN_TEMPERATURE, RolloutBatch


def logits_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``-sum_v p_v log p_v`` of ``softmax(logits / temperature)`` over the last dimension."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).nan_to_num().sum(-1)


@dataclass(frozen=True)
class EntropyTemperature:
    """A :data:`rlvr.rollout.kv_decode.TemperatureFn`: HAPO-H's ``T_t`` from each step's logits.

    ``stats`` is the previous step's :class:`EntropyNormalizer` as plain floats (None: sample at ``T``).
    """

    temperature: float
    tau: float
    stats: tuple[float, float, float, float] | None = None

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        entropy = logits_entropy(logits, self.temperature)
        if self.stats is None:
            return torch.full_like(entropy, self.temperature), entropy
        norm = EntropyNormalizer(*(torch.tensor(v, dtype=entropy.dtype, device=entropy.device) for v in self.stats))
        return adaptive_temperature(entropy, norm, temperature=self.temperature, tau=self.tau), entropy


class AdaptiveTemperature:
    """The run's adaptive-temperature state: the statistics of the last rollout (checkpointed)."""

    def __init__(self, *, tau: float = 0.05, pivot: float = 0.8, official_sign: bool = False) -> None:
        self.tau, self.pivot, self.official_sign = float(tau), float(pivot), bool(official_sign)
        self.stats: dict[str, float] | None = None

    def sampler(self, temperature: float) -> EntropyTemperature:
        """The per-token temperature of this step's sampling around base ``temperature``."""
        stats = None if self.stats is None else tuple(self.stats[k] for k in EntropyNormalizer._fields)
        return EntropyTemperature(temperature, self.tau, stats)  # type: ignore[arg-type]

    def observe(self, batch: RolloutBatch) -> dict[str, float]:
        """Take the next step's statistics from ``batch``'s recorded entropies; returns metrics."""
        entropy = batch.extras.get(SAMPLING_ENTROPY)
        if entropy is None or not bool((batch.response_mask > 0).any()):
            return {}
        norm = entropy_normalizer(entropy, batch.response_mask, pivot=self.pivot, official_sign=self.official_sign)
        self.stats = norm.to_dict()
        metrics = {f"adaptive_temperature/{k}": v for k, v in self.stats.items()}
        temps = batch.extras.get(TOKEN_TEMPERATURE)
        if temps is not None:
            valid = batch.response_mask > 0
            metrics["adaptive_temperature/mean"] = float(temps[valid].mean())
            metrics["adaptive_temperature/max"] = float(temps[valid].max())
            metrics["adaptive_temperature/min"] = float(temps[valid].min())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stats = state.get("stats")
        self.stats = None if stats is None else {k: float(v) for k, v in stats.items()}
