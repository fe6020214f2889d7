"""SIREN selective entropy regularization and its ablations (stage: regularizer).

SIREN ("Rethinking Entropy Regularization in Large Reasoning Models", arXiv 2509.25133; code
Linn3a/siren ``verl/verl/workers/actor/dp_actor.py`` and ``verl/verl/trainer/ppo/ray_trainer.py``):

1. **Top-p mask over the vocabulary.** ``H^{top-p}_{i,t}`` is the entropy of the policy renormalised
   over the nucleus of mass ``p = 0.8`` (top-k 10000). It is computed elsewhere
   (``rlvr.ops.top_p_entropy``); the trainer fills ``ctx.top_p_entropy`` (current policy, with grad)
   and ``ctx.old_top_p_entropy`` (rollout policy, no grad). The knobs ``top_p``/``top_k`` set that
   forward quantity (:meth:`Siren.forward_quantities`, :class:`rlvr.ops.forward.TopPEntropy`).
2. **Peak-entropy mask over positions** (:func:`peak_entropy_mask`): per response, keep the tokens
   whose entropy is strictly above that response's 0.8-quantile.
3. **Selected entropy** ``H_sel = seq-mean-token-mean(H over the peak mask)``, computed on the
   micro-batch (local normalisers), as the official ``agg_loss`` call in ``update_policy``; a
   response with no selected token counts as 0 in the mean over all rows (:func:`selected_entropy`).
4. **Self-anchored loss** ``L = coef * (H_sel - H_anchor)^2 * f`` with ``coef = 0.005``;
   ``H_anchor`` is the same quantity on the *first* rollout batch under the initial policy, then held
   fixed (saved in checkpoints via ``state_dict``).

``f = ctx.micro_batch_fraction`` is this micro-batch's share of the mini-batch's sequences. The
official actor scales each micro-batch's total loss by ``len(micro)/ppo_mini_batch_size`` (dynamic
batch size, SIREN's script) or ``1/gradient_accumulation`` before ``backward()``; the accumulated
gradient is therefore ``sum_k f_k * grad[coef * (H_sel,k - a)^2]``. Our trainer does not rescale a
regularizer's loss (linear losses use global normalisers instead), and ``(H_sel - a)^2`` is not
linear in the tokens, so the factor ``f`` is applied here to reproduce that average.

Registered names (``requires`` is static per name, so each ablation has its own name):

* ``siren``            top-p entropy + peak mask + anchor (the method).
* ``siren_wo_topp``    full-vocabulary entropy + peak mask + anchor (official ``abla_wo_topp``).
* ``siren_wo_anchor``  ``-coef * H_sel``, top-p + peak mask (official ``abla_wo_anchor``).
* naive entropy bonus: the official ``naive_entropy_reg`` is ``entropy_bonus`` (entropy_bonus.py),
  aggregated with the run's loss mode as in the official actor.
* ``entropy_adaptive`` ``-c * H_bar`` with ``c <- max(0, c + lr_c (H_anchor - H_bar))``
  (official ``naive_entropy_reg_adaptive``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.aggregation import AGG_MODES, AggMode, aggregate
from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.registry import regularizer
from rlvr.errors import ConfigError, MissingInputError
from rlvr.ops.forward import Quantity, TopPEntropy

PEAK_AGG_MODE = "seq-mean-token-mean"


# --------------------------------------------------------------------------------------------------
# Pure tensor functions
# --------------------------------------------------------------------------------------------------


def peak_entropy_mask(entropy: Tensor, response_mask: Tensor, quantile: float = 0.8) -> Tensor:
    """Per-response peak-entropy mask ``1[H_{i,t} > tau_i] * m_{i,t}``, shape ``(B, T)``, no grad.

    ``tau_i = nanquantile({H_{i,t} : m_{i,t} = 1}, quantile)`` with linear interpolation (the
    ``torch.nanquantile`` default), i.e. for the ``n_i`` valid values sorted ascending ``s_0..s_{n-1}``
    and ``r = quantile * (n_i - 1)``: ``tau_i = s_floor(r) + (r - floor(r)) * (s_ceil(r) - s_floor(r))``.
    This is the official ``mask_by_quantile(x, response_mask, 1, 0.8)`` (padding set to NaN, row-wise
    ``nanquantile``, strict ``>``). Consequences of the strict comparison: a response whose valid
    entropies are all equal (e.g. all 0) or that has a single token selects nothing; ties at the
    threshold are dropped. Padding is never selected (we AND with the response mask; the official
    code relies on padding entropies being 0 and ``tau >= 0``).

    **"Applied twice".** ``update_policy`` with ``use_siren=True`` first replaces the entropy by
    ``where(x > tau_1, x, 0)`` and then calls ``mask_by_quantile`` again on that zeroed tensor
    (``experiment_type == "siren"``). For non-negative entropies the second pass returns exactly the
    same mask: the zeroed vector ``y`` satisfies ``0 <= y <= x`` elementwise, and order statistics
    (hence the interpolated quantile) are monotone, so ``0 <= tau_2 <= tau_1``; kept tokens have
    ``y = x > tau_1 >= tau_2`` (kept again) and dropped ones have ``y = 0 <= tau_2`` (dropped again).
    We therefore apply the mask once; ``tests/algos/test_siren.py`` checks the equality.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"peak_entropy_mask: quantile must be in [0, 1], got {quantile}")
    valid = response_mask > 0
    values = entropy.detach().float()
    masked = values.masked_fill(~valid, float("nan"))
    threshold = torch.nanquantile(masked, quantile, dim=-1, keepdim=True)  # NaN for an empty row
    keep = (values > threshold) & valid  # comparisons with NaN are False
    dtype = response_mask.dtype if response_mask.is_floating_point() else torch.float32
    return keep.to(dtype)


def selected_entropy(entropy: Tensor, response_mask: Tensor, quantile: float = 0.8) -> tuple[Tensor, Tensor]:
    """``(H_sel, peak_mask)``: seq-mean-token-mean of ``entropy`` over the peak-entropy mask.

    ``H_sel = 1/B * sum_i (sum_t H_{i,t} s_{i,t} / sum_t s_{i,t})`` with ``s`` the peak mask, ``B``
    the number of rows of ``entropy`` and a row with no selected token (``sum_t s_{i,t} = 0``)
    contributing 0, as the official ``agg_loss`` (Linn3a/siren ``verl/verl/trainer/ppo/core_algos.py``,
    ``seq-mean-token-mean``: per-row means filled only where the mask is non-empty, then
    ``torch.mean`` over all rows). A batch that selects nothing gives ``H_sel = 0``.
    The gradient flows through ``entropy`` at the selected positions only (the mask is detached):
    ``dH_sel / dH_{i,t} = s_{i,t} / (B * sum_t s_{i,t})``.
    """
    sel = peak_entropy_mask(entropy, response_mask, quantile)
    clean = torch.where(response_mask > 0, entropy, torch.zeros_like(entropy))  # NaN-safe padding
    return aggregate(clean, sel, PEAK_AGG_MODE, num_seqs=float(entropy.shape[0])), sel


def _unscaled(loss: Tensor, fraction: float) -> float:
    """The ``*/loss`` metric: the micro-batch loss *before* the share ``f``.

    The trainer averages micro-batch metrics weighted by their sequence counts, so the average of
    this value over a mini-batch's micro-batches is exactly ``sum_k f_k * loss_k``, the loss the
    mini-batch's gradient comes from.
    """
    return float(loss.detach()) / fraction if fraction > 0 else 0.0


def _fraction(part: Tensor, whole: Tensor) -> float:
    total = float(whole.sum())
    return float(part.sum()) / total if total > 0 else 0.0


def _check_common(coef: float, quantile: float, who: str) -> None:
    if not math.isfinite(coef):
        raise ConfigError(f"regularizer '{who}': coef must be finite, got {coef}")
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"regularizer '{who}': quantile must be in [0, 1], got {quantile}")


def _check_agg_mode(agg_mode: AggMode | None, who: str) -> None:
    if agg_mode is not None and agg_mode not in AGG_MODES:
        raise ConfigError(
            f"regularizer '{who}': unknown agg_mode '{agg_mode}'; valid: {', '.join(AGG_MODES)} "
            "or null (= the loss's algo.agg_mode, as the official code)"
        )


def _field(ctx: AlgoContext, name: str, who: str) -> Tensor:
    ctx.require(name, who=who)
    value = getattr(ctx, name)
    assert value is not None
    return value


# --------------------------------------------------------------------------------------------------
# SIREN and its masked ablations
# --------------------------------------------------------------------------------------------------


@regularizer.register("siren", requires=("top_p_entropy", "old_top_p_entropy"))
class Siren:
    """SIREN: ``coef * (H_sel - H_anchor)^2 * f`` on the top-p, peak-masked entropy (arXiv 2509.25133).

    Knobs: ``coef`` (official ``entropy_coeff`` 0.005), ``quantile`` (``mask_ratio`` 0.8),
    ``use_top_p`` / ``use_anchor`` (ablation switches; prefer the registered names
    ``siren_wo_topp`` / ``siren_wo_anchor``, whose ``requires`` match), ``top_p`` / ``top_k``
    (nucleus mass and candidate count of the top-p entropy, read by the trainer; 0.8 / 10000).

    ``prepare(ctx)`` (once per step, rollout batch, no grad) computes ``H_sel`` of
    ``ctx.old_top_p_entropy`` and, on the first call whose batch selects at least one token, stores
    it as the anchor; afterwards the anchor never changes (official: set at ``global_steps == 1`` from
    the ``compute_log_prob`` entropies, then written back unchanged every step). Waiting for a batch
    that selects something is rlvr's choice: the official step-1 anchor of such a batch would be 0.
    ``state_dict() -> {"anchor": float | None}``.
    """

    name = "siren"
    prefix = "siren"

    def __init__(
        self,
        *,
        coef: float = 0.005,
        quantile: float = 0.8,
        use_top_p: bool = True,
        use_anchor: bool = True,
        top_p: float = 0.8,
        top_k: int = 10000,
    ) -> None:
        _check_common(coef, quantile, self.name)
        if not 0.0 < top_p <= 1.0:
            raise ConfigError(f"regularizer '{self.name}': top_p must be in (0, 1], got {top_p}")
        if top_k < 1:
            raise ConfigError(f"regularizer '{self.name}': top_k must be >= 1, got {top_k}")
        self.coef = float(coef)
        self.quantile = float(quantile)
        self.use_top_p = bool(use_top_p)
        self.use_anchor = bool(use_anchor)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.anchor: float | None = None
        self._prepared = False

    # -- inputs ---------------------------------------------------------------------------------

    @property
    def current_field(self) -> str:
        return "top_p_entropy" if self.use_top_p else "entropy"

    @property
    def old_field(self) -> str:
        return "old_top_p_entropy" if self.use_top_p else "old_entropy"

    def forward_quantities(self) -> list[Quantity]:
        """The top-p entropy with this regularizer's ``top_p`` / ``top_k`` (the trainer computes it)."""
        return [TopPEntropy(p=self.top_p, top_k=self.top_k)] if self.use_top_p else []

    def _who(self) -> str:
        hint = ""
        if not self.use_top_p and self.name == "siren":
            hint = " (use the registered name 'siren_wo_topp' so the trainer fills it)"
        return f"regularizer '{self.name}'{hint}"

    # -- per-step hook --------------------------------------------------------------------------

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        """Selected entropy of the rollout batch (old policy); sets the anchor once. Returns metrics."""
        self._prepared = True
        if not self.use_anchor and getattr(ctx, self.old_field) is None:
            return {}
        old = _field(ctx, self.old_field, self._who())
        with torch.no_grad():
            h_old, sel = selected_entropy(old, ctx.response_mask, self.quantile)
        metrics = {
            f"{self.prefix}/old_frac_selected": _fraction(sel, ctx.response_mask),
            f"{self.prefix}/old_selected_entropy": float(h_old),
        }
        if self.use_anchor:
            if self.anchor is None and float(sel.sum()) > 0:  # rlvr: an empty first batch sets none
                self.anchor = float(h_old)
            if self.anchor is not None:
                metrics[f"{self.prefix}/anchor"] = self.anchor
        return metrics

    # -- loss -----------------------------------------------------------------------------------

    def __call__(self, ctx: AlgoContext) -> RegularizerOutput:
        """``coef * (H_sel - anchor)^2 * f`` (or ``-coef * H_sel * f`` without anchor) on this micro-batch.

        Without an anchor: raises MissingInputError if ``prepare`` was never called (and no state was
        loaded); if ``prepare`` ran but no rollout batch selected a token yet, the loss is 0.
        """
        current = _field(ctx, self.current_field, self._who())
        h_sel, sel = selected_entropy(current, ctx.response_mask, self.quantile)
        f = float(ctx.micro_batch_fraction)
        metrics = {
            f"{self.prefix}/frac_selected": _fraction(sel, ctx.response_mask),
            f"{self.prefix}/selected_entropy": float(h_sel.detach()),
        }
        if self.use_anchor:
            if self.anchor is None:
                if not self._prepared:
                    raise MissingInputError(
                        f"{self._who()} has no entropy anchor: call prepare(ctx) on the rollout batch "
                        "(with ctx.old_* entropies) before the loss, or load_state_dict({'anchor': ...})"
                    )
                # prepared, but no rollout batch so far selected a token: nothing to anchor to yet
                loss = h_sel * 0.0
            else:
                loss = self.coef * (h_sel - self.anchor) ** 2 * f
                metrics[f"{self.prefix}/anchor"] = self.anchor
        else:
            loss = -self.coef * h_sel * f
        metrics[f"{self.prefix}/loss"] = _unscaled(loss, f)
        return RegularizerOutput(loss=loss, metrics=metrics)

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        anchor = state.get("anchor")
        self.anchor = None if anchor is None else float(anchor)


@regularizer.register("siren_wo_topp", requires=("entropy", "old_entropy"))
class SirenWithoutTopP(Siren):
    """SIREN ablation "w/o top-p": ``coef * (H_sel - H_anchor)^2 * f`` on the full-vocabulary entropy.

    Same peak mask, seq-mean-token-mean and first-batch anchor as ``siren``, but ``H`` is the
    full-vocabulary entropy (``ctx.entropy`` / ``ctx.old_entropy``). Official ``abla_wo_topp``
    (``use_siren=False``). Note: the official trainer only sets the anchor for ``siren`` and
    ``naive_entropy_reg_adaptive``, so this ablation there needs ``entropy_anchor`` in the config;
    here the anchor comes from the first rollout batch exactly as for ``siren``.
    """

    name = "siren_wo_topp"

    def __init__(self, *, coef: float = 0.005, quantile: float = 0.8) -> None:
        super().__init__(coef=coef, quantile=quantile, use_top_p=False, use_anchor=True)


@regularizer.register("siren_wo_anchor", requires=("top_p_entropy",))
class SirenWithoutAnchor(Siren):
    """SIREN ablation "w/o anchor": ``-coef * H_sel * f`` (a selective entropy *bonus*).

    Top-p entropy and peak mask as ``siren``, but no anchor: the selected entropy is maximised.
    Official ``abla_wo_anchor`` (``entropy_loss_mse = -agg_loss(masked_entropy, value_mask,
    "seq-mean-token-mean")``). Stateless; ``prepare`` only reports the rollout's selected entropy
    when ``ctx.old_top_p_entropy`` happens to be filled.
    """

    name = "siren_wo_anchor"

    def __init__(
        self, *, coef: float = 0.005, quantile: float = 0.8, top_p: float = 0.8, top_k: int = 10000
    ) -> None:
        super().__init__(coef=coef, quantile=quantile, use_top_p=True, use_anchor=False, top_p=top_p, top_k=top_k)


# --------------------------------------------------------------------------------------------------
# Unmasked entropy baselines of the SIREN paper
# --------------------------------------------------------------------------------------------------


def _mean_entropy(values: Tensor, ctx: AlgoContext, agg_mode: AggMode | None) -> Tensor:
    """``H_bar``: ``values`` aggregated over all response tokens with local (micro-batch) normalisers."""
    clean = torch.where(ctx.response_mask > 0, values, torch.zeros_like(values))
    return aggregate(clean, ctx.response_mask, agg_mode or ctx.agg_mode, norm_length=ctx.padded_length)


AdaptiveUpdate = Literal["step", "micro_batch"]
ADAPTIVE_UPDATES: tuple[str, ...] = get_args(AdaptiveUpdate)


@regularizer.register("entropy_adaptive", requires=("entropy", "old_entropy"))
class AdaptiveEntropyBonus:
    """Adaptive-coefficient entropy bonus of the SIREN paper: ``-c * H_bar * f``.

    ``c <- max(0, c + lr_c * (H_anchor - H_bar))``: ``c`` grows while the entropy is below the
    anchor and shrinks (down to 0) above it. ``H_anchor`` = ``H_bar`` of the first rollout batch
    (full-vocabulary ``ctx.old_entropy``, all tokens, ``agg_mode``), then fixed.

    Official ``naive_entropy_reg_adaptive`` (Linn3a/siren ``dp_actor.update_policy``): after every
    micro-batch's ``backward()`` it sets ``c += entropy_coeff_lr * (anchor - H_bar_mb)`` and clamps at
    0, where ``H_bar_mb`` is that micro-batch's entropy under the *current* policy (the training
    forward), aggregated with the PG ``loss_agg_mode``; the anchor comes from the step-1 rollout
    batch (``compute_log_prob`` entropies, same aggregation). So ``c`` moves
    ``epochs x mini-batches x micro-batches`` times per step.

    ``update="step"`` (default, the reading asked for here): one update per step in ``prepare``,
    with ``H_bar`` of the rollout batch's ``ctx.old_entropy`` (the policy before this step's update,
    i.e. after the previous step's updates); on the first step ``H_bar == H_anchor`` so ``c`` stays.
    ``lr_c`` therefore means "per step", not "per micro-batch".
    ``update="micro_batch"``: the official timing; each ``__call__`` (one micro-batch) uses the
    current ``c`` and then updates it with that micro-batch's detached ``H_bar``.

    Knobs: ``coef`` = initial ``c`` (0.005, SIREN's ``entropy_coeff``), ``lr_c`` (0.01; the official
    default ``entropy_coeff_lr`` is 0, which disables adaptation, and no released script sets it, so
    this value is our choice), ``agg_mode`` (seq-mean-token-mean; null = ``ctx.agg_mode``, official),
    ``update``. State: ``{"coef": c, "anchor": float | None}``.
    """

    def __init__(
        self,
        *,
        coef: float = 0.005,
        lr_c: float = 0.01,
        agg_mode: AggMode | None = PEAK_AGG_MODE,
        update: AdaptiveUpdate = "step",
    ) -> None:
        _check_agg_mode(agg_mode, "entropy_adaptive")
        if update not in ADAPTIVE_UPDATES:
            raise ConfigError(
                f"regularizer 'entropy_adaptive': unknown update '{update}'; valid: {', '.join(ADAPTIVE_UPDATES)}"
            )
        if coef < 0 or not math.isfinite(coef):
            raise ConfigError(f"regularizer 'entropy_adaptive': coef must be finite and >= 0, got {coef}")
        self.coef = float(coef)
        self.lr_c = float(lr_c)
        self.agg_mode = agg_mode
        self.update = update
        self.anchor: float | None = None

    def _step_coef(self, h_bar: float) -> None:
        """``c <- max(0, c + lr_c * (H_anchor - H_bar))`` (no-op before the anchor exists)."""
        if self.anchor is not None:
            self.coef = max(0.0, self.coef + self.lr_c * (self.anchor - h_bar))

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        old = _field(ctx, "old_entropy", "regularizer 'entropy_adaptive'")
        with torch.no_grad():
            h_old = float(_mean_entropy(old, ctx, self.agg_mode))
        if self.anchor is None and float(ctx.response_mask.sum()) > 0:
            self.anchor = h_old
        if self.update == "step":
            self._step_coef(h_old)
        metrics = {"entropy_adaptive/old_entropy": h_old, "entropy_adaptive/coef": self.coef}
        if self.anchor is not None:
            metrics["entropy_adaptive/anchor"] = self.anchor
        return metrics

    def __call__(self, ctx: AlgoContext) -> RegularizerOutput:
        current = _field(ctx, "entropy", "regularizer 'entropy_adaptive'")
        h_bar = _mean_entropy(current, ctx, self.agg_mode)
        coef = self.coef
        f = float(ctx.micro_batch_fraction)
        loss = -coef * h_bar * f
        if self.update == "micro_batch":
            self._step_coef(float(h_bar.detach()))
        metrics = {
            "entropy_adaptive/entropy": float(h_bar.detach()),
            "entropy_adaptive/coef": coef,
            "entropy_adaptive/loss": _unscaled(loss, f),
        }
        return RegularizerOutput(loss=loss, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "coef" in state and state["coef"] is not None:
            self.coef = float(state["coef"])
        anchor = state.get("anchor")
        self.anchor = None if anchor is None else float(anchor)
