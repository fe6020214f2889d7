"""T1: oversampling and a dynamic KL anchor (token_weight ``t1_oversample``, controller ``t1_anchor``), arXiv 2501.11651.

**Partly inferred.** THUDM/T1 holds only a README (no training code); sourced from the abstract: RL
is scaled by promoting sampling diversity through **oversampling**, with an **entropy bonus** as an
auxiliary loss and a **dynamic anchor** for regularisation. The entropy bonus is rlvr's
``entropy_bonus`` regularizer (its coefficient is not in the abstract). The other two are our
reconstructions [INFERENCE]:

**t1_oversample** (stage: token_weight). Sample ``K`` responses per prompt (``rollout.group_size=K``)
and train on ``keep < K`` of them; the others are masked out of the loss and out of its denominator
(the mask is also the ``loss_mask``; it depends only on the rewards, so the mini-batch token counts
are exact). ``select="balanced"`` (default): split the group at its mean reward into responses above
it (``P``) and the rest (``N``) and take alternately from ``P`` and ``N`` in sampling order, ``P``
first, until ``keep`` are taken (so a group with both kinds keeps as even a mix as it can).
``select="first"``: the first ``keep`` in sampling order, a uniform random subset since samples are
i.i.d. The advantage is the configured estimator's over all ``K`` responses (computed before token
weights); re-estimating it on the kept subset needs the trainer to drop rows. The selection is made
once per step on the whole rollout batch (``prepare``), so micro-batches may split groups.

**t1_anchor** (stage: controller). Every ``every`` steps (after the update) the KL reference is moved
to the current policy: ``ref <- mix * pi + (1 - mix) * ref`` parameter-wise (``mix = 1``: reset, the
default; ``mix < 1``: TRL's ``ref_model_mixup_alpha`` style EMA), so the ``kl`` regularizer keeps the
policy near a moving anchor rather than the initial model. **The trainer provides**
``ctx.extras["refresh_reference"]``: a callable ``refresh(mix: float) -> None`` that applies
:func:`mix_parameters_` to the reference model's and the policy's parameters (rlvr's learner:
``Learner.refresh_reference``, shard by shard under FSDP2; it needs a reference model, i.e. a method
reading ``ref_logprobs`` such as ``kl``, and full fine-tuning: with LoRA the reference is the
adapter-disabled policy and cannot move); without the callable the controller raises
MissingInputError at the first step.
Defaults ``every = 100``, ``mix = 1.0`` (the paper's period was not retrieved).

Metrics: ``t1_oversample/kept_frac``, ``t1_oversample/kept_positive_frac``; ``t1_anchor/refreshed``,
``t1_anchor/steps_since_refresh``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext, TokenWeightOutput, kept_rows_mask
from rlvr.algos.groups import group_index, group_mean
from rlvr.algos.registry import controller, token_weight
from rlvr.algos.shaping import check_choice, check_positive
from rlvr.errors import ConfigError, MissingInputError

OversampleSelect = Literal["balanced", "first"]
OVERSAMPLE_SELECTS: tuple[str, ...] = get_args(OversampleSelect)


def above_group_mean(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Bool ``(B,)`` on the CPU: the reward is above its group's mean."""
    values = rewards.detach().cpu().to(torch.float64)
    return values > group_mean(values, group_ids.cpu())


def oversample_keep(rewards: Tensor, group_ids: Tensor, keep: int, select: OversampleSelect) -> Tensor:
    """Bool ``(B,)``: the ``keep`` responses of each group to train on (all of a group with at most ``keep``)."""
    check_choice("token_weight 't1_oversample'", "select", select, OVERSAMPLE_SELECTS)
    kept = torch.zeros(rewards.shape[0], dtype=torch.bool)
    dense, k = group_index(group_ids.cpu())
    above = above_group_mean(rewards, group_ids).tolist()
    for g in range(k):
        rows = (dense == g).nonzero().flatten().tolist()
        if select == "first" or len(rows) <= keep:
            chosen = rows[:keep]
        else:
            pos = [r for r in rows if above[r]]
            neg = [r for r in rows if not above[r]]
            chosen = []
            while len(chosen) < keep and (pos or neg):
                if pos:
                    chosen.append(pos.pop(0))
                if neg and len(chosen) < keep:
                    chosen.append(neg.pop(0))
        kept[chosen] = True
    return kept


@token_weight.register("t1_oversample", requires=("rewards", "group_ids"))
class T1Oversample:
    """T1 oversampling (arXiv 2501.11651, rule inferred): train on ``keep`` of each group's ``K`` responses, chosen balanced or first.

    Knobs: ``keep`` (8), ``select`` (balanced | first). Set ``rollout.group_size`` to the oversampled ``K``.
    """

    name = "t1_oversample"

    def __init__(self, *, keep: int = 8, select: OversampleSelect = "balanced") -> None:
        who = f"token_weight '{self.name}'"
        check_positive(who, keep=keep)
        check_choice(who, "select", select, OVERSAMPLE_SELECTS)
        self.keep = int(keep)
        self.select = select
        self.kept: Tensor | None = None

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Choose the kept rows of the whole rollout batch (indexed by ``ctx.extras["row_index"]`` later)."""
        who = f"token_weight '{self.name}'"
        ctx.require("rewards", "group_ids", who=who)
        assert ctx.rewards is not None and ctx.group_ids is not None
        self.kept = oversample_keep(ctx.rewards.detach(), ctx.group_ids, self.keep, self.select)
        above = above_group_mean(ctx.rewards, ctx.group_ids)
        return {
            f"{self.name}/kept_frac": float(self.kept.double().mean()) if self.kept.numel() else 0.0,
            f"{self.name}/kept_positive_frac": float(above[self.kept].double().mean()) if bool(self.kept.any()) else 0.0,
        }

    def __call__(self, ctx: AlgoContext) -> TokenWeightOutput:
        mask = kept_rows_mask(ctx, self.kept, f"token_weight '{self.name}'", "selects rows on the whole rollout batch")
        return TokenWeightOutput(weights=mask, loss_mask=mask)


def mix_parameters_(reference: Iterable[Tensor], policy: Iterable[Tensor], mix: float) -> None:
    """In place, without gradient: ``ref <- mix * pi + (1 - mix) * ref`` for each parameter pair."""
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(f"mix must be in [0, 1], got {mix}")
    ref_list, pol_list = list(reference), list(policy)
    if len(ref_list) != len(pol_list):
        raise ConfigError(f"reference has {len(ref_list)} parameters, the policy {len(pol_list)}")
    with torch.no_grad():
        for ref, pol in zip(ref_list, pol_list):
            if ref.shape != pol.shape:
                raise ConfigError(f"parameter shapes differ: {tuple(ref.shape)} vs {tuple(pol.shape)}")
            ref.mul_(1.0 - mix).add_(pol.detach().to(ref.dtype), alpha=mix)


@controller.register("t1_anchor")
class T1Anchor:
    """T1 dynamic anchor (arXiv 2501.11651, form inferred): every ``every`` steps ``ref <- mix * pi + (1 - mix) * ref``.

    Knobs: ``every`` (100), ``mix`` (1.0 = reset to the policy). Needs the trainer's
    ``ctx.extras["refresh_reference"]`` callable (see the module docstring).
    """

    name = "t1_anchor"

    def __init__(self, *, every: int = 100, mix: float = 1.0) -> None:
        who = f"controller '{self.name}'"
        check_positive(who, every=every)
        if not 0.0 < mix <= 1.0:
            raise ConfigError(f"{who}: mix must be in (0, 1], got {mix}")
        self.every = int(every)
        self.mix = float(mix)
        self.steps = 0
        self._refresh: Callable[[float], None] | None = None

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        refresh = ctx.extras.get("refresh_reference")
        if not callable(refresh):
            raise MissingInputError(
                f"controller '{self.name}' needs ctx.extras['refresh_reference'], a callable refresh(mix) that moves "
                "the reference model toward the policy (rlvr.algos.t1.mix_parameters_); the trainer must provide it"
            )
        self._refresh = refresh
        return {}

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        self.steps += 1
        refreshed = self.steps % self.every == 0
        if refreshed:
            if self._refresh is None:
                raise MissingInputError(f"controller '{self.name}': no refresh_reference callable was seen this run")
            self._refresh(self.mix)
        return {f"{self.name}/refreshed": float(refreshed), f"{self.name}/steps_since_refresh": float(self.steps % self.every)}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
