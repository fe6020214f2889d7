"""Entropy-based advantage shaping (Cheng et al., arXiv 2506.14758) as a policy-loss transform (stage: policy_loss).

"Reasoning with Exploration: An Entropy Perspective" (arXiv 2506.14758; code: the SIREN repo's
baseline, Linn3a/siren ``verl/verl/workers/actor/dp_actor.py``,
``experiment_type == "baseline_entropy_adv"``). Per valid token:

    A'_{i,t} = A_{i,t} + min(alpha * sg[H_{i,t}], |A_{i,t}| / kappa)

with ``H`` the current-policy full-vocabulary entropy *of the update forward* (detached). The bonus is
>= 0 and at most ``|A| / kappa``, so for ``kappa >= 1`` it never flips the sign of ``A``; tokens with
``A = 0`` get no bonus.

**Why a policy loss.** Advantages are computed once per rollout batch from the rollout policy, but
``H`` here is the *current* policy's entropy, known only in each micro-batch's forward. So
``entropy_adv`` is registered as a policy loss that reshapes ``ctx.advantages`` and then delegates
to a base policy loss (knob ``base``, default ``"ppo_clip"``, with ``base_kwargs``). It composes with
any advantage estimator (whatever filled ``ctx.advantages``) and with any base loss whose inputs are
among ``entropy, logprobs, old_logprobs, advantages`` (checked when built; e.g. ``ppo_clip``,
``cispo``, ``gspo``, ``clip_cov``, ``kl_cov``). A base's ``prepare`` / ``state_dict`` are forwarded; its
``prepare`` sees the unshaped advantages.

**Defaults.** ``alpha = 0.4``, ``kappa = 2.0``. The SIREN baseline code uses alpha 0.4 (``adv_alpha``
default) with kappa 1; kappa 2 is our recollection of the paper, not checked against it.
Set ``kappa=1`` to reproduce the SIREN baseline.

Metrics: ``entropy_adv/bonus_mean`` (mean bonus over valid tokens), ``entropy_adv/frac_capped``
(share of valid tokens where ``|A| / kappa < alpha H``, i.e. the cap binds), ``entropy_adv/entropy``
(mean H), then the base loss's metrics.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import Component, Registry, policy_loss
from rlvr.errors import ConfigError

ENTROPY_ADV_REQUIRES = ("entropy", "logprobs", "old_logprobs", "advantages")


def build_base_component(
    registry: Registry,
    base: str,
    base_kwargs: dict[str, Any] | None,
    own_requires: Iterable[str],
    who: str,
    own_name: str,
) -> Component:
    """Build the wrapped method ``base`` and check that the trainer will fill everything it reads.

    A registered name's ``requires`` is fixed, so the wrapper can only offer the fields in its own
    ``requires``; a base that needs more raises ConfigError (listing the missing fields).
    """
    if base == own_name:
        raise ConfigError(f"{who}: base cannot be '{own_name}' itself")
    if base_kwargs is not None and not isinstance(base_kwargs, dict):
        raise ConfigError(f"{who}: base_kwargs must be a mapping of the base's knobs, got {type(base_kwargs).__name__}")
    component = registry.build(base, dict(base_kwargs or {}), where=f"{who} base")
    missing = sorted(component.requires - frozenset(own_requires))
    if missing:
        raise ConfigError(
            f"{who}: base {registry.stage} '{base}' reads ctx.{', ctx.'.join(missing)}, which '{own_name}' "
            f"does not request (it requests {', '.join(sorted(own_requires))}); choose another base"
        )
    return component


class WrapsBase:
    """Delegation shared by methods that wrap another registered method (``self.base``).

    The base's per-step ``prepare`` hook and its checkpoint state pass through the wrapper.
    """

    base: Component

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        return self.base.prepare(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state.get("base", {}))


def entropy_shaped_advantages(
    advantages: Tensor, entropy: Tensor, response_mask: Tensor, *, alpha: float, kappa: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(A', bonus, capped)``: ``A' = A + bonus``, ``bonus = min(alpha sg[H], |A| / kappa)``, 0 on padding.

    ``capped`` is the bool mask of valid tokens where ``|A| / kappa < alpha H``.
    """
    valid = response_mask > 0
    zero = torch.zeros((), dtype=advantages.dtype, device=advantages.device)
    adv = torch.where(valid, advantages, zero)
    h = torch.where(valid, entropy.detach().to(advantages.dtype), zero)
    scaled_h = alpha * h
    cap = adv.abs() / kappa
    bonus = torch.minimum(scaled_h, cap)
    return adv + bonus, bonus, (cap < scaled_h) & valid


@policy_loss.register("entropy_adv", requires=ENTROPY_ADV_REQUIRES)
class EntropyAdvantage(WrapsBase):
    """``A' = A + min(alpha sg[H], |A| / kappa)`` (arXiv 2506.14758), then the ``base`` policy loss on ``A'``.

    Knobs: ``alpha`` (0.4), ``kappa`` (2.0; SIREN baseline code 1.0), ``base`` (``"ppo_clip"``),
    ``base_kwargs`` (knobs of the base loss, e.g. ``{"clip_high": 0.28}``).
    """

    name = "entropy_adv"

    def __init__(
        self,
        *,
        alpha: float = 0.4,
        kappa: float = 2.0,
        base: str = "ppo_clip",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"policy_loss '{self.name}'"
        if not alpha >= 0:
            raise ConfigError(f"{who}: alpha must be >= 0, got {alpha}")
        if not kappa > 0:
            raise ConfigError(f"{who}: kappa must be > 0, got {kappa}")
        self.alpha = float(alpha)
        self.kappa = float(kappa)
        self.base = build_base_component(policy_loss, base, base_kwargs, ENTROPY_ADV_REQUIRES, who, self.name)

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        ctx.require(*ENTROPY_ADV_REQUIRES, who=f"policy_loss '{self.name}'")
        assert ctx.advantages is not None and ctx.entropy is not None
        mask = ctx.response_mask
        shaped, bonus, capped = entropy_shaped_advantages(
            ctx.advantages, ctx.entropy, mask, alpha=self.alpha, kappa=self.kappa
        )
        out = self.base(replace(ctx, advantages=shaped))
        entropy = torch.where(mask > 0, ctx.entropy.detach(), torch.zeros_like(ctx.entropy))
        metrics = {
            f"{self.name}/bonus_mean": masked_float(bonus, mask),
            f"{self.name}/frac_capped": masked_float(capped.to(mask.dtype), mask),
            f"{self.name}/entropy": masked_float(entropy, mask),
        }
        metrics.update(out.metrics)
        return LossOutput(per_token=out.per_token, metrics=metrics, loss=out.loss)
