"""The built methods of one run, in stage order, and the one place they are composed.

reward shaping -> advantage -> (per-step ``prepare`` hooks) -> token weights x policy loss,
aggregated, + regularizers; controllers act after the update. The pipeline also says which
forward quantities (with their settings) its methods read, for the current and the rollout policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.algos import REGISTRIES, AlgoContext, Component
from rlvr.errors import ConfigError
from rlvr.ops.forward import Entropy, Quantity, quantity_field
from rlvr.train.config import AlgoConfig


@dataclass
class Pipeline:
    """The built methods of one run, in stage order."""

    advantage: Component
    policy_loss: Component
    reward_shaping: list[Component]
    token_weights: list[Component]
    regularizers: list[Component]
    controllers: list[Component]
    requires: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, algo: AlgoConfig) -> "Pipeline":
        stage_lists = {"reward_shaping": "reward", "token_weights": "token_weight", "regularizers": "regularizer", "controllers": "controller"}
        pipeline = cls(
            advantage=REGISTRIES["advantage"].build(algo.advantage.name, algo.advantage.kwargs, "algo.advantage"),
            policy_loss=REGISTRIES["policy_loss"].build(algo.policy_loss.name, algo.policy_loss.kwargs, "algo.policy_loss"),
            **{
                attr: [REGISTRIES[stage].build(m.name, m.kwargs, f"algo.{attr}[{i}]") for i, m in enumerate(getattr(algo, attr))]
                for attr, stage in stage_lists.items()
            },
        )
        pipeline.requires = frozenset().union(*(c.requires for c in pipeline.all()))
        for component in pipeline.controllers:
            bind = getattr(component.fn, "bind", None)
            if callable(bind):
                bind(pipeline)
        pipeline.forward_quantities()  # conflicting settings fail now, not at the first forward
        return pipeline

    def all(self) -> list[Component]:
        return [
            self.advantage,
            self.policy_loss,
            *self.reward_shaping,
            *self.token_weights,
            *self.regularizers,
            *self.controllers,
        ]

    def state_dict(self) -> list[dict[str, Any]]:
        return [c.state_dict() for c in self.all()]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for component, state in zip(self.all(), states):
            component.load_state_dict(state)

    # ------------------------------------------------------------------ what the methods read
    def reads(self, field_name: str) -> list[Component]:
        return [c for c in self.all() if field_name in c.requires]

    def forward_quantities(self) -> tuple[dict[str, Quantity], dict[str, Quantity]]:
        """``(current, old)``: the forward quantities the methods read from the policy being updated
        and from the rollout policy, by name, with the settings the methods declare
        (``forward_quantities()`` on a method, e.g. SIREN's ``TopPEntropy(p, top_k)``) or the
        defaults. Two methods asking for one quantity with different settings is a ConfigError.

        The rollout policy's entropy is always computed (it is logged every step).
        """
        current: dict[str, tuple[Quantity, str]] = {}
        old: dict[str, tuple[Quantity, str]] = {"entropy": (Entropy(), "the step metrics")}
        for component in self.all():
            declared = getattr(component.fn, "forward_quantities", None)
            settings = {q.name: q for q in (declared() if callable(declared) else [])}
            for name in sorted(component.requires):
                parsed = quantity_field(name)
                if parsed is None:
                    continue
                cls, is_old = parsed
                if cls.own_forward:  # a forward of its own (the learner runs it), not of the rollout rows
                    continue
                wanted = settings.get(cls.name, cls())
                table = old if is_old else current
                held = table.get(cls.name)
                if held is not None and held[0] != wanted and held[1] != "the step metrics":
                    raise ConfigError(
                        f"{held[1]} and {component.stage} '{component.name}' both read {name} but with different "
                        f"settings ({held[0]} vs {wanted}); give them the same settings"
                    )
                table[cls.name] = (wanted, f"{component.stage} '{component.name}'")
        return {k: q for k, (q, _) in current.items()}, {k: q for k, (q, _) in old.items()}

    # ------------------------------------------------------------------ the stages
    def shape_and_estimate(self, ctx: AlgoContext) -> dict[str, float]:
        """Reward shapers in order, then the advantage estimator; fills ``ctx.rewards``/``ctx.advantages``."""
        for shaper in self.reward_shaping:
            ctx.rewards = shaper(ctx)
        ctx.advantages = self.advantage(ctx)
        return dict(getattr(self.advantage.fn, "metrics", None) or {})

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Every method's per-step hook on the whole rollout batch (no grad), before the update."""
        metrics: dict[str, float] = {}
        for component in self.all():
            metrics.update(component.prepare(ctx))
        return metrics

    def loss(self, mctx: AlgoContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Policy loss (token-weighted, aggregated) + regularizers for one micro-batch."""
        metrics: dict[str, float] = {}
        weights = torch.ones_like(mctx.response_mask)
        loss_mask = mctx.response_mask
        for component in self.token_weights:
            tw = component(mctx)
            weights = weights * tw.weights
            if tw.loss_mask is not None:
                loss_mask = loss_mask * tw.loss_mask
            metrics.update(tw.metrics)
        out = self.policy_loss(mctx)
        metrics.update(out.metrics)
        loss = out.loss if out.loss is not None else mctx.aggregate(out.per_token * weights, mask=loss_mask)
        metrics["train/pg_loss"] = float(loss.detach())
        for component in self.regularizers:
            reg = component(mctx)
            loss = loss + reg.loss
            metrics.update(reg.metrics)
        metrics["train/loss"] = float(loss.detach())
        return loss, metrics

    def denominator_mask(self, mini_ctx: AlgoContext) -> torch.Tensor:
        """Mask whose totals normalise a mini-batch's loss.

        Token selections known before the forward (token weights that read no current-policy
        quantity, e.g. ``mask_truncated``) shrink the denominator as in TRL; selections that need
        the current forward (e.g. forking tokens) are normalised per micro-batch, as in their
        official code.
        """
        mask = mini_ctx.response_mask
        for component in self.token_weights:
            if not any(_reads_current_policy(name) for name in component.requires):
                out = component(mini_ctx)
                if out.loss_mask is not None:
                    mask = mask * out.loss_mask
        return mask

    def after_step(self, update_metrics: dict[str, float]) -> dict[str, float]:
        """Controllers' hooks after the update (e.g. a PID moving a regularizer's coefficient)."""
        metrics: dict[str, float] = {}
        for component in self.controllers:
            metrics.update(component.fn.after_step(update_metrics) or {})
        return metrics


def _reads_current_policy(field_name: str) -> bool:
    parsed = quantity_field(field_name)
    return parsed is not None and not parsed[1]
