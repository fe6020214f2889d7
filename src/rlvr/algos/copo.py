"""COPO, Consistency-Aware Policy Optimization: a global consistency advantage blended by outcome entropy (stage: advantage), arXiv 2508.04138.

**Partly inferred.** The official code (github.com/hijih/copo-code) could not be read; sourced from the
abstract: when all ``G`` responses of a prompt agree (all correct or all wrong) the group advantage is
0 and the prompt gives no signal; COPO adds a **global reward based on outcome consistency** and a
**global loss** on it, and an **entropy-based soft blend** weighs the local (GRPO) advantage against the
global term. Our reconstruction [INFERENCE], over the ``K`` prompts of the rollout batch:

* prompt accuracy ``p_q = mean_g R`` (clamped to [0, 1] for the entropy);
* global advantage ``A^glob_q = (p_q - mean_K p) / (std_K p + eps)`` (unbiased std over the prompts,
  each prompt once; 0 with a single prompt), broadcast to the prompt's responses, so a consistently
  solved prompt is pushed up and a consistently failed one down relative to the batch;
* blend weight ``h_q = H_b(p_q) / log 2 in [0, 1]`` with ``H_b(p) = -p log p - (1 - p) log(1 - p)``
  (0 for a consistent group, 1 for a half-correct one);
* ``A_{i,t} = h_q A^loc_{i,t} + (1 - h_q) * global_coef * A^glob_q``.

``A^loc`` is the ``base`` advantage (default ``"grpo"``, inputs among ``rewards, group_ids``). The
"global loss" is folded into the advantage (one policy loss); whether the paper uses a separate loss
term was not retrieved. Defaults ``global_coef = 1``, ``eps = 1e-6``.

Metrics: ``copo/blend_mean`` (mean ``h`` over prompts), ``copo/consistent_frac`` (prompts with
``h = 0``), ``copo/global_abs_mean`` (mean ``|A^glob|`` over prompts).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.grpo import seq_rewards
from rlvr.algos.groups import group_index
from rlvr.algos.registry import advantage
from rlvr.errors import ConfigError

COPO_REQUIRES = ("rewards", "group_ids")


def binary_entropy_ratio(p: Tensor) -> Tensor:
    """``H_b(p) / log 2`` elementwise, 0 at ``p`` in {0, 1}."""
    p = p.clamp(0.0, 1.0)
    inner = (p > 0) & (p < 1)
    safe = torch.where(inner, p, torch.full_like(p, 0.5))
    h = -(safe * safe.log() + (1 - safe) * (1 - safe).log()) / math.log(2.0)
    return torch.where(inner, h, torch.zeros_like(h))


def prompt_accuracy(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(p_q per prompt in dense-id order, dense id per response)``."""
    dense, k = group_index(group_ids)
    sums = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, dense, rewards)
    counts = torch.zeros(k, dtype=rewards.dtype, device=rewards.device).index_add_(0, dense, torch.ones_like(rewards))
    return sums / counts.clamp(min=1.0), dense


def global_advantage(p: Tensor, eps: float) -> Tensor:
    """Batch z-score of the prompt accuracies (unbiased std); 0 with fewer than two prompts."""
    if p.numel() < 2:
        return torch.zeros_like(p)
    return (p - p.mean()) / (p.std() + eps)


@advantage.register("copo", requires=COPO_REQUIRES)
class Copo(WrapsBase):
    """COPO (arXiv 2508.04138, form inferred): ``h_q A^loc + (1 - h_q) A^glob_q``, ``h_q`` the group's outcome entropy.

    Knobs: ``global_coef`` (1.0), ``eps`` (1e-6), ``base`` (``"grpo"``), ``base_kwargs``.
    """

    name = "copo"

    def __init__(
        self, *, global_coef: float = 1.0, eps: float = 1e-6, base: str = "grpo", base_kwargs: dict[str, Any] | None = None
    ) -> None:
        who = f"advantage '{self.name}'"
        if not eps >= 0:
            raise ConfigError(f"{who}: eps must be >= 0, got {eps}")
        self.global_coef = float(global_coef)
        self.eps = float(eps)
        self.base = build_base_component(advantage, base, base_kwargs, COPO_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        rewards = seq_rewards(ctx, who)
        assert ctx.group_ids is not None
        local = self.base(ctx)
        dtype = torch.promote_types(local.dtype, torch.float32)
        p, dense = prompt_accuracy(rewards.detach().to(dtype), ctx.group_ids)
        h = binary_entropy_ratio(p)
        glob = global_advantage(p, self.eps)
        blend = h[dense].unsqueeze(-1)
        glob_tokens = (self.global_coef * glob[dense]).unsqueeze(-1) * ctx.response_mask.to(dtype)
        # a consistent group (h = 0) ignores the local term, which may be 0/0 there with eps = 0
        weighted_local = torch.where(blend > 0, blend * local.to(dtype), torch.zeros((), dtype=dtype))
        out = weighted_local + (1.0 - blend) * glob_tokens
        self.metrics = {
            f"{self.name}/blend_mean": float(h.mean()) if h.numel() else 0.0,
            f"{self.name}/consistent_frac": float((h == 0).double().mean()) if h.numel() else 0.0,
            f"{self.name}/global_abs_mean": float(glob.abs().mean()) if glob.numel() else 0.0,
        }
        return out.to(local.dtype)
