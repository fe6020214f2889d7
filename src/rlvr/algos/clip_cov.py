"""Clip-Cov (Entropy Mechanism of RL, arXiv 2505.22617) and the covariance machinery it shares with KL-Cov.

The paper ties entropy collapse to the covariance between a token's log-prob and its advantage.
Per valid token (official code PRIME-RL/Entropy-Mechanism-of-RL ``verl/trainer/ppo/core_algos.py`` and
verl ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_clip_cov``):

    cov_{i,t} = (A_{i,t} - mean(A)) * (log pi(o_{i,t}) - mean(log pi))        means over valid tokens

**Clip-Cov** (stage: policy_loss). Candidates are the valid tokens *not* already clipped by PPO with
``cov_low < cov < cov_high``; ``n = max(1, int(clip_ratio * N_valid))`` of them are chosen uniformly
at random and their loss is set to 0 (``corr = 0``: no gradient through them). Every other token
keeps the PPO clipped loss ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (no dual clip, as
the official function). Zeroed tokens still count in the aggregation's denominator (official:
``agg_loss(pg_losses * corr, response_mask)``). Defaults ``clip_ratio = 2e-4``, ``cov_low = 1``,
``cov_high = 5`` (official); the official 7B/32B scripts set ``clip_ratio_low = clip_ratio_high = 1``
(practically unclipped), the knobs here default to PPO's 0.2/0.2.

**Scope of the covariance** (knob ``scope``). The official code computes it inside the policy loss,
i.e. over the *micro-batch* with the current log-probs. Our policy losses also run per micro-batch,
so two readings are offered:

* ``scope="micro"``: exactly the official computation on each micro-batch (current log-probs,
  detached; the clipped-by-PPO exclusion uses the current ratio).
* ``scope="batch"`` (default): the covariance over the *whole rollout batch*, the population the paper
  defines it on. ``prepare(ctx)`` (once per step, rollout batch, after the advantages) computes it
  from ``ctx.old_logprobs`` (the current policy equals the rollout policy at the start of the step,
  so this is the official value for the first mini-batch, up to the off-policy drift of later ones),
  draws the random selection once, and stores it per (row, token); each micro-batch then applies it
  to its rows, found through ``ctx.extras["row_index"]`` (the rollout-batch row of each micro-batch
  row; the trainer sets ``extras["row_index"] = arange(B)`` and ``AlgoContext.select`` slices it).
  At the old policy every ratio is 1, so nothing is PPO-clipped when the selection is drawn; a
  selected token that the current ratio has clipped meanwhile has no gradient either way, so zeroing
  it changes only the reported loss value. Falls back to ``"micro"`` (metric ``<name>/batch_scope =
  0``, one warning) when ``prepare`` did not run for this step (or had no advantages) or the
  micro-batch carries no ``row_index``.

**Randomness.** The uniform draw uses ``ctx.generator`` when the caller provides one (the trainer
passes its checkpointed shuffle generator), else the component's own ``torch.Generator`` seeded with
the ``seed`` knob (saved in ``state_dict``).

Metrics (fractions of valid tokens): ``clip_cov/frac_selected`` (loss zeroed; official
``pg_clipfrac``), ``clip_cov/frac_candidates``, ``clip_cov/cov_mean|cov_std|cov_max`` (over valid
tokens of the population the selection was drawn from), ``clip_cov/batch_scope``, and PPO's
``clip_frac``, ``approx_kl``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.aggregation import masked_mean
from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.ppo_clip import LOG_RATIO_LIMIT, check_clip, masked_float, policy_inputs
from rlvr.algos.registry import policy_loss
from rlvr.errors import ConfigError

CovScope = Literal["batch", "micro"]
COV_SCOPES: tuple[str, ...] = get_args(CovScope)


# --------------------------------------------------------------------------------------------------
# Pure tensor functions (shared with kl_cov.py)
# --------------------------------------------------------------------------------------------------


def token_covariance(advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """``(A - mean A) * (log pi - mean log pi)`` per token, means over valid tokens, 0 on padding, no grad."""
    valid = mask > 0
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    m = valid.to(dtype)
    a = torch.where(valid, advantages.detach().to(dtype), torch.zeros((), dtype=dtype, device=mask.device))
    lp = torch.where(valid, logprobs.detach().to(dtype), torch.zeros((), dtype=dtype, device=mask.device))
    return (a - masked_mean(a, m)) * (lp - masked_mean(lp, m)) * m


def covariance_stats(cov: Tensor, mask: Tensor, prefix: str) -> dict[str, float]:
    """Mean, (population) std and max of ``cov`` over valid tokens (zeros if there are none)."""
    values = cov.detach()[mask > 0].double()
    if values.numel() == 0:
        return {f"{prefix}/cov_mean": 0.0, f"{prefix}/cov_std": 0.0, f"{prefix}/cov_max": 0.0}
    return {
        f"{prefix}/cov_mean": float(values.mean()),
        f"{prefix}/cov_std": float(values.std(unbiased=False)),
        f"{prefix}/cov_max": float(values.max()),
    }


def clip_cov_selection(
    cov: Tensor,
    mask: Tensor,
    clipped: Tensor | None,
    *,
    clip_ratio: float,
    cov_low: float,
    cov_high: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(selected, candidates)`` bool masks: ``max(1, int(clip_ratio * N_valid))`` uniform picks among
    the valid, not-clipped tokens with ``cov_low < cov < cov_high`` (all of them if fewer).

    The candidates are enumerated in row-major order and permuted with ``torch.randperm`` (official
    ``torch.nonzero`` + ``randperm``), so a given generator state reproduces the official choice.
    """
    valid = mask > 0
    candidates = valid & (cov > cov_low) & (cov < cov_high)
    if clipped is not None:
        candidates = candidates & ~clipped
    n_valid = int(valid.sum())
    clip_num = max(int(clip_ratio * n_valid), 1)
    flat_idx = candidates.reshape(-1).nonzero().squeeze(1)
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if flat_idx.numel() > 0:
        device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(flat_idx.numel(), generator=generator, device=device).to(flat_idx.device)
        selected[flat_idx[perm[:clip_num]]] = True
    return selected.view_as(cov), candidates


def _check_scope(scope: CovScope, who: str) -> None:
    if scope not in COV_SCOPES:
        raise ConfigError(f"{who}: unknown scope '{scope}'; valid: {', '.join(COV_SCOPES)}")


# --------------------------------------------------------------------------------------------------
# Shared batch-scope machinery
# --------------------------------------------------------------------------------------------------


class CovarianceSelection:
    """Per-step selection of tokens by covariance, drawn over the rollout batch or each micro-batch.

    Subclasses define ``name`` and ``_select(cov, mask, clipped, generator) -> (selected, candidates)``.
    """

    name = "cov"

    def __init__(self, *, scope: CovScope, seed: int) -> None:
        _check_scope(scope, f"policy_loss '{self.name}'")
        self.scope = scope
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._batch_selected: Tensor | None = None
        self._batch_step: int | None = None
        self._warned = False

    # -- subclass hook --------------------------------------------------------------------------

    def _select(
        self, cov: Tensor, mask: Tensor, clipped: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------

    def generator(self, ctx: AlgoContext) -> torch.Generator:
        """``ctx.generator`` if the caller gives one, else this component's seeded generator."""
        return ctx.generator if ctx.generator is not None else self._generator

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"policy_loss '{self.name}': scope='batch' unavailable ({why}); using scope='micro'")

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Batch scope: covariance of the rollout batch (old log-probs) and the step's token selection."""
        self._batch_selected = None
        self._batch_step = None
        if self.scope != "batch":
            return {}
        if ctx.advantages is None or ctx.old_logprobs is None:
            self._warn("prepare(ctx) saw no ctx.advantages / ctx.old_logprobs; call it after the advantages")
            return {f"{self.name}/batch_scope": 0.0}
        mask = ctx.response_mask
        with torch.no_grad():
            cov = token_covariance(ctx.advantages, ctx.old_logprobs, mask)
            selected, candidates = self._select(cov, mask, None, self.generator(ctx))
        self._batch_selected = selected
        self._batch_step = ctx.step
        metrics = covariance_stats(cov, mask, f"{self.name}/batch")
        metrics[f"{self.name}/batch/frac_selected"] = masked_float(selected.to(mask.dtype), mask)
        metrics[f"{self.name}/batch/frac_candidates"] = masked_float(candidates.to(mask.dtype), mask)
        return metrics

    def _stored_rows(self, ctx: AlgoContext) -> Tensor | None:
        """The batch-scope selection of this micro-batch's rows, or None (with a warning) if unavailable."""
        if self._batch_selected is None or self._batch_step != ctx.step:
            self._warn("prepare(ctx) did not run on this step's rollout batch")
            return None
        rows = ctx.extras.get("row_index")
        if not isinstance(rows, Tensor) or rows.shape != (ctx.batch_size,):
            self._warn("the micro-batch has no ctx.extras['row_index']")
            return None
        stored = self._batch_selected
        if stored.shape[1] != ctx.response_mask.shape[1] or int(rows.max()) >= stored.shape[0]:
            self._warn("ctx.extras['row_index'] does not match the prepared rollout batch")
            return None
        return stored[rows.to(stored.device).long()].to(ctx.response_mask.device) & (ctx.response_mask > 0)

    def selection(
        self, ctx: AlgoContext, logprobs: Tensor, advantages: Tensor, mask: Tensor, clipped: Tensor | None
    ) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's selected tokens and the scope metrics."""
        if self.scope == "batch":
            stored = self._stored_rows(ctx)
            if stored is not None:
                return stored, {f"{self.name}/batch_scope": 1.0}
        with torch.no_grad():
            cov = token_covariance(advantages, logprobs, mask)
            selected, candidates = self._select(cov, mask, clipped, self.generator(ctx))
        metrics = covariance_stats(cov, mask, self.name)
        metrics[f"{self.name}/frac_candidates"] = masked_float(candidates.to(mask.dtype), mask)
        metrics[f"{self.name}/batch_scope"] = 0.0
        return selected, metrics

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen_state = state.get("generator")
        if gen_state is not None:
            self._generator.set_state(gen_state)


# --------------------------------------------------------------------------------------------------
# Clip-Cov
# --------------------------------------------------------------------------------------------------


@policy_loss.register("clip_cov", requires=("logprobs", "old_logprobs", "advantages"))
class ClipCov(CovarianceSelection):
    """Clip-Cov (arXiv 2505.22617): PPO-clip with a random few high-covariance tokens' loss set to 0.

    Knobs: ``clip_ratio`` (fraction of valid tokens to zero, 2e-4), ``cov_low`` / ``cov_high``
    (candidate covariance window, 1.0 / 5.0), ``clip_low`` / ``clip_high`` (PPO ratio clip, 0.2 / 0.2;
    official scripts 1 / 1), ``scope`` (``"batch"`` | ``"micro"``, see the module docstring),
    ``seed`` (own generator, used when ``ctx.generator`` is None).
    """

    name = "clip_cov"

    def __init__(
        self,
        *,
        clip_ratio: float = 2e-4,
        cov_low: float = 1.0,
        cov_high: float = 5.0,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        scope: CovScope = "batch",
        seed: int = 0,
    ) -> None:
        who = f"policy_loss '{self.name}'"
        check_clip(who, clip_low, clip_high)
        if not 0.0 <= clip_ratio <= 1.0:
            raise ConfigError(f"{who}: clip_ratio is a fraction in [0, 1], got {clip_ratio}")
        if not (math.isfinite(cov_low) and math.isfinite(cov_high)) or cov_low >= cov_high:
            raise ConfigError(f"{who}: need finite cov_low < cov_high, got {cov_low}, {cov_high}")
        super().__init__(scope=scope, seed=seed)
        self.clip_ratio = float(clip_ratio)
        self.cov_low = float(cov_low)
        self.cov_high = float(cov_high)
        self.clip_low = float(clip_low)
        self.clip_high = float(clip_high)

    def _select(
        self, cov: Tensor, mask: Tensor, clipped: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return clip_cov_selection(
            cov,
            mask,
            clipped,
            clip_ratio=self.clip_ratio,
            cov_low=self.cov_low,
            cov_high=self.cov_high,
            generator=generator,
        )

    def __call__(self, ctx: AlgoContext) -> LossOutput:
        logprobs, log_ratio, advantages, mask = policy_inputs(ctx, f"policy_loss '{self.name}'")
        ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()
        unclipped = -advantages * ratio
        clipped_loss = -advantages * ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        is_clipped = (clipped_loss > unclipped) & (mask > 0)
        selected, metrics = self.selection(ctx, logprobs, advantages, mask, is_clipped)
        corr = (~selected).to(mask.dtype)
        per_token = torch.maximum(unclipped, clipped_loss) * corr * mask
        metrics.update(
            {
                f"{self.name}/frac_selected": masked_float(selected.to(mask.dtype), mask),
                "clip_frac": masked_float(is_clipped.to(mask.dtype), mask),
                "approx_kl": masked_float(-log_ratio, mask),
            }
        )
        return LossOutput(per_token=per_token, metrics=metrics)
