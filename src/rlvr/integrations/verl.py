"""Use rlvr advantages and policy losses inside verl (``verl.trainer.ppo.core_algos`` registries).

    from rlvr.integrations.verl import register_with_verl
    register_with_verl()                     # every rlvr advantage / policy loss as "rlvr_<name>"
    register_with_verl(policy_losses={"rlvr_dapo": ("ppo_clip", {"clip_high": 0.28})})

then select them in verl's config: ``algorithm.adv_estimator=rlvr_grpo`` and
``actor_rollout_ref.actor.policy_loss.loss_mode=rlvr_ppo_clip``. verl computes advantages on the
driver and policy losses in Ray workers, so every process must register: set
``VERL_USE_EXTERNAL_MODULES=rlvr.integrations.verl`` and ``RLVR_VERL_AUTOREGISTER=1`` in the job's
environment (verl imports the module in each process; this module then registers on import).
``RLVR_VERL_SPEC`` may hold a JSON object ``{"advantages": ..., "policy_losses": ...}`` in the
format of :func:`register_with_verl`. See docs/integrations.md.

Calling conventions adapted (verl 0.9.x, ``core_algos.py``; the same since 0.5):

* advantage estimator: ``fn(token_level_rewards (B,T), response_mask (B,T), config=AlgoConfig,
  index=uid array, reward_baselines=..., **kw) -> (advantages, returns)``. The sequence reward is
  ``token_level_rewards.sum(-1)``; the uid strings become ``group_ids`` and ``prompt_ids``;
  ``correct = reward >= correct_threshold``; ``ctx.step`` counts calls. verl passes no log-probs or
  entropies to custom estimators, so methods that need them (e.g. ``canon`` with
  ``metric="entropy"``) raise MissingInputError; use ``metric="length"``.
* policy loss: ``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
  rollout_is_weights) -> (loss, metrics)``. The rlvr per-token loss is multiplied by
  ``rollout_is_weights`` and aggregated like verl's ``agg_loss`` with ``config.global_batch_info``
  (``dp_size``, ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``), so the
  data-parallel normalisation is verl's. Entropy bonus and KL loss stay verl's (outside the plug-in).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from rlvr.algos import REGISTRIES, AlgoContext
from rlvr.algos.aggregation import AGG_MODES, aggregate
from rlvr.errors import ConfigError
from rlvr.integrations.support import VERL_ADVANTAGE_FIELDS, VERL_POLICY_LOSS_FIELDS, runs_in

SUPPORTED_VERL = ">=0.5,<0.10"
"""verl versions whose registry and call signatures this adapter follows (checked against 0.9.1)."""

PREFIX = "rlvr_"
VERL_MISSING = (
    "rlvr.integrations.verl needs verl (pip install 'verl>=0.5,<0.10' in its own environment: "
    "verl pins transformers<5.11)"
)
ADVANTAGE_FIELDS = VERL_ADVANTAGE_FIELDS
POLICY_LOSS_FIELDS = VERL_POLICY_LOSS_FIELDS

Spec = Iterable[str] | Mapping[str, "str | tuple[str, dict[str, Any]]"] | None


def _core_algos() -> Any:
    try:
        return importlib.import_module("verl.trainer.ppo.core_algos")
    except ImportError as exc:
        raise ConfigError(VERL_MISSING) from exc


def _dense_groups(index: Any, batch: int) -> tuple[Tensor, list[str]]:
    """verl's uid array -> dense group ids ``(B,)`` and the uid strings (prompt ids)."""
    if index is None:
        return torch.arange(batch), [str(i) for i in range(batch)]
    values = np.asarray(index)
    _, inverse = np.unique(values.astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long), [str(v) for v in values.tolist()]


def verl_advantage(
    name: str, knobs: dict[str, Any] | None = None, *, agg_mode: str = "token-mean", correct_threshold: float = 1.0
) -> Callable[..., tuple[Tensor, Tensor]]:
    """A verl advantage estimator running the rlvr advantage ``name`` (see the module docstring)."""
    component = REGISTRIES["advantage"].build(name, knobs or {}, f"verl advantage rlvr '{name}'")
    _check_fields(component.requires, ADVANTAGE_FIELDS, f"rlvr advantage '{name}'", "advantage estimators")
    state = {"step": 0}

    def estimator(
        token_level_rewards: Tensor,
        response_mask: Tensor,
        config: Any = None,
        index: Any = None,
        **_: Any,
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            mask = response_mask.to(token_level_rewards.dtype)
            rewards = token_level_rewards.sum(dim=-1)
            group_ids, uids = _dense_groups(index, rewards.shape[0])
            ctx = AlgoContext(
                response_mask=mask,
                rewards=rewards,
                group_ids=group_ids.to(rewards.device),
                correct=rewards >= correct_threshold,
                prompt_ids=uids,
                step=state["step"],
                max_response_length=int(mask.shape[-1]),
                agg_mode=agg_mode,
            )
            component.prepare(ctx)
            advantages = component(ctx).to(token_level_rewards.dtype) * mask
        state["step"] += 1
        return advantages, advantages

    estimator.__rlvr__ = ("advantage", name)  # type: ignore[attr-defined]
    estimator.__name__ = f"rlvr_{name}_advantage"
    return estimator


def _global_batch_info(config: Any) -> dict[str, Any]:
    try:
        info = getattr(config, "global_batch_info", None)
    except Exception:  # noqa: BLE001 - omegaconf struct errors
        info = None
    return dict(info) if info else {}


def verl_aggregate(per_token: Tensor, mask: Tensor, mode: str, info: Mapping[str, Any]) -> Tensor:
    """verl ``agg_loss`` semantics (incl. ``dp_size`` scaling) on top of :func:`rlvr.algos.aggregation.aggregate`."""
    dp_size = int(info.get("dp_size", 1) or 1)
    tokens, seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    if dp_size > 1 and ((mode == "token-mean" and tokens is None) or (mode.startswith("seq-") and seqs is None)):
        raise ValueError(f"loss_agg_mode={mode} with dp_size={dp_size} needs the global batch totals")
    if mode == "token-sum":
        return (per_token * mask).sum() * dp_size
    if mode not in AGG_MODES:
        raise ValueError(f"Invalid loss_agg_mode: {mode}")
    return aggregate(
        per_token,
        mask,
        mode,
        num_tokens=float(tokens) / dp_size if tokens is not None else None,
        num_seqs=float(seqs) / dp_size if seqs is not None else None,
        norm_length=int(info.get("loss_scale_factor") or mask.shape[-1]),
    )


def verl_policy_loss(name: str, knobs: dict[str, Any] | None = None) -> Callable[..., tuple[Tensor, dict[str, Any]]]:
    """A verl policy loss running the rlvr policy loss ``name`` (see the module docstring)."""
    component = REGISTRIES["policy_loss"].build(name, knobs or {}, f"verl policy loss rlvr '{name}'")
    _check_fields(component.requires, POLICY_LOSS_FIELDS, f"rlvr policy loss '{name}'", "policy losses")
    ok, why = runs_in("verl", "policy_loss", REGISTRIES["policy_loss"].entry(name))
    if not ok:
        raise ConfigError(f"rlvr policy loss '{name}' cannot run inside verl: it {why}; use rlvr's native trainer")

    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
        **_: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        mask = response_mask.to(log_prob.dtype)
        info = _global_batch_info(config)
        ctx = AlgoContext(
            response_mask=mask,
            logprobs=log_prob,
            old_logprobs=old_log_prob,
            advantages=advantages,
            agg_mode=loss_agg_mode if loss_agg_mode in AGG_MODES else "token-mean",
            max_response_length=int(info.get("loss_scale_factor") or mask.shape[-1]),
        )
        out = component(ctx)
        if out.loss is not None:
            loss = out.loss
        else:
            per_token = out.per_token if rollout_is_weights is None else out.per_token * rollout_is_weights
            loss = verl_aggregate(per_token, mask, loss_agg_mode, info)
        return loss, {f"actor/rlvr_{k}": v for k, v in out.metrics.items()}

    policy_loss.__rlvr__ = ("policy_loss", name)  # type: ignore[attr-defined]
    policy_loss.__name__ = f"rlvr_{name}_policy_loss"
    return policy_loss


def _check_fields(requires: Iterable[str], available: frozenset[str], who: str, where: str) -> None:
    missing = sorted(set(requires) - available)
    if missing:
        raise ConfigError(f"{who} needs {missing}, which verl does not pass to custom {where}")


def _normalise(spec: Spec, stage: str, prefix: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{verl_name: (rlvr_name, knobs)}`` from a spec (None = every method whose inputs verl provides)."""
    if spec is None:
        registry = REGISTRIES[stage]
        spec = [n for n in registry.names() if runs_in("verl", stage, registry.entry(n))[0]]
    if isinstance(spec, Mapping):
        out = {}
        for verl_name, value in spec.items():
            rlvr_name, knobs = (value, {}) if isinstance(value, str) else (value[0], dict(value[1]))
            out[str(verl_name)] = (rlvr_name, knobs)
        return out
    return {f"{prefix}{name}": (name, {}) for name in spec}


def register_with_verl(
    advantages: Spec = None, policy_losses: Spec = None, *, prefix: str = PREFIX, core_algos: Any = None
) -> dict[str, list[str]]:
    """Register rlvr methods in verl's registries; returns the verl names per stage.

    ``advantages`` / ``policy_losses``: ``None`` (every rlvr method whose inputs verl passes, as ``<prefix><name>``),
    a list of rlvr names, or ``{verl_name: rlvr_name | (rlvr_name, knobs)}``. Registering again
    replaces earlier rlvr registrations; a name taken by a non-rlvr function raises ConfigError.
    """
    core = core_algos if core_algos is not None else _core_algos()
    done: dict[str, list[str]] = {"advantage": [], "policy_loss": []}
    for verl_name, (rlvr_name, knobs) in _normalise(advantages, "advantage", prefix).items():
        _check_free(core.ADV_ESTIMATOR_REGISTRY, verl_name, "advantage estimator")
        core.ADV_ESTIMATOR_REGISTRY.pop(verl_name, None)
        core.register_adv_est(verl_name)(verl_advantage(rlvr_name, knobs))
        done["advantage"].append(verl_name)
    for verl_name, (rlvr_name, knobs) in _normalise(policy_losses, "policy_loss", prefix).items():
        _check_free(core.POLICY_LOSS_REGISTRY, verl_name, "policy loss")
        core.register_policy_loss(verl_name)(verl_policy_loss(rlvr_name, knobs))
        done["policy_loss"].append(verl_name)
    return done


def _check_free(registry: Mapping[str, Any], name: str, what: str) -> None:
    existing = registry.get(name)
    if existing is not None and not hasattr(existing, "__rlvr__"):
        raise ConfigError(f"verl {what} '{name}' is already registered by {existing!r}; choose another name")


def _autoregister_from_env() -> None:
    """Register when imported by verl with ``RLVR_VERL_AUTOREGISTER=1`` (spec from ``RLVR_VERL_SPEC``)."""
    if os.environ.get("RLVR_VERL_AUTOREGISTER", "0").lower() in ("", "0", "false", "no"):
        return
    spec = json.loads(os.environ.get("RLVR_VERL_SPEC") or "{}")
    register_with_verl(spec.get("advantages"), spec.get("policy_losses"), prefix=spec.get("prefix", PREFIX))


_autoregister_from_env()
