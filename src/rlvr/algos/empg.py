"""EMPG, Entropy-Modulated Policy Gradients (stage: advantage), arXiv 2509.09265 (agents; adapted to single-turn RLVR).

Sourced from the project page's pseudocode (https://empgseed-seed.github.io,
``compute_empg_advantage(tokenizer, batch, k=1.0, k_f=1.0, zeta=0.1)``); no code repository. Over
every step ``s`` of every response ``i`` of the rollout batch:

    H_{i,s}  = mean of the rollout policy's token entropy (ctx.old_entropy) over the step's tokens
    H~       = (H - min H) / (max H - min H + 1e-8)           min / max over all steps of the batch
    g(H~)    = exp(-k H~) / (mean_batch exp(-k H~) + 1e-8)    self-calibrating scale, batch mean 1
    f(H~)    = exp(-k_f H~)                                    future-clarity bonus

The pseudocode stops there (the combination was not retrieved). **[INFERENCE]** (the paper's stated
intent: amplify confident steps, attenuate uncertain ones, reward a clear next step)::

    A_{i,t} = g(H~_{i,s(t)}) * A^base_{i,t} + zeta * f(H~_{i,s(t)+1})       (bonus 0 on a response's last step)

then a batch normalisation over all valid tokens (knob ``normalize``): ``"mean"`` (default) subtracts
the token mean, ``"mean_std"`` whitens (``(A - mean) / sqrt(var + 1e-8)``, verl's ``masked_whiten``),
``"none"`` keeps the values.

**Steps [INFERENCE for single-turn RLVR].** The official steps are agent turns (segments between
``<|im_start|>assistant\\n`` and ``<|im_end|>``). Here a step is a segment of the response
(:mod:`rlvr.algos.steps`, knob ``split``): ``"length"`` (default) fixed steps of ``step_len`` valid
tokens, ``"delimiter"`` steps ending at each ``delimiter`` in the text (e.g. ``"\\n\\n"`` reasoning
paragraphs), ``"token"`` every token. ``A^base`` comes from the ``base`` advantage (default ``"grpo"``,
any estimator whose inputs are among ``rewards, group_ids, old_entropy``).

Defaults ``k = k_f = 1``, ``zeta = 0.1`` (pseudocode). Metrics: ``empg/step_entropy_mean``,
``empg/scale_min`` / ``empg/scale_max`` (g), ``empg/bonus_mean`` (mean ``zeta f`` over valid tokens),
``empg/steps_mean``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.aggregation import masked_mean, masked_whiten
from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice
from rlvr.algos.steps import StepSplit, check_step_split, step_ends, step_index
from rlvr.errors import ConfigError

EMPG_REQUIRES = ("rewards", "group_ids", "old_entropy")
EmpgNormalize = Literal["mean", "mean_std", "none"]
EMPG_NORMALIZE: tuple[str, ...] = get_args(EmpgNormalize)
EPS = 1e-8


def flat_step_ids(ends: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(flat step id per token (-1 on padding), number of steps per row, id of each row's first step)``.

    Steps are numbered row by row over the batch: row ``i``'s step ``s`` has id ``first[i] + s``.
    """
    local = step_index(ends, mask)
    counts = (ends & (mask > 0)).sum(-1)
    first = torch.cumsum(counts, 0) - counts
    flat = torch.where(local >= 0, local + first.unsqueeze(-1), torch.full_like(local, -1))
    return flat, counts, first


def step_means(values: Tensor, flat: Tensor, num_steps: int) -> Tensor:
    """Mean of ``values`` over the tokens of each flat step, ``(num_steps,)``."""
    valid = flat >= 0
    ids = flat[valid]
    sums = torch.zeros(num_steps, dtype=values.dtype, device=values.device).index_add_(0, ids, values[valid])
    counts = torch.zeros(num_steps, dtype=values.dtype, device=values.device).index_add_(
        0, ids, torch.ones_like(values[valid])
    )
    return sums / counts.clamp(min=1.0)


def empg_modulation(step_entropy: Tensor, k: float, k_f: float) -> tuple[Tensor, Tensor]:
    """``(g, f)`` per step from the batch's step entropies (pseudocode Eqs. 10-12)."""
    if step_entropy.numel() == 0:
        return step_entropy.clone(), step_entropy.clone()
    lo, hi = step_entropy.min(), step_entropy.max()
    normed = (step_entropy - lo) / (hi - lo + EPS)
    raw = torch.exp(-k * normed)
    return raw / (raw.mean() + EPS), torch.exp(-k_f * normed)


def normalise(values: Tensor, mask: Tensor, mode: EmpgNormalize) -> Tensor:
    """Batch normalisation of the modulated advantages over the valid tokens, 0 on padding."""
    check_choice("advantage 'empg'", "normalize", mode, EMPG_NORMALIZE)
    valid = mask > 0
    if mode == "mean":
        values = values - masked_mean(values, mask.to(values.dtype))
    elif mode == "mean_std":
        values = masked_whiten(values, mask.to(values.dtype), eps=EPS)
    return torch.where(valid, values, torch.zeros_like(values))


@advantage.register("empg", requires=EMPG_REQUIRES)
class Empg(WrapsBase):
    """EMPG (arXiv 2509.09265): ``g(H~_s) A + zeta f(H~_{s+1})`` per reasoning step, from step entropies (combination inferred).

    Knobs: ``k`` (1.0), ``k_f`` (1.0), ``zeta`` (0.1), ``split`` (length | delimiter | token),
    ``step_len`` (64), ``delimiter`` (``"\\n\\n"``), ``normalize`` (mean | mean_std | none), ``base``
    (``"grpo"``) and ``base_kwargs``.
    """

    name = "empg"

    def __init__(
        self,
        *,
        k: float = 1.0,
        k_f: float = 1.0,
        zeta: float = 0.1,
        split: StepSplit = "length",
        step_len: int = 64,
        delimiter: str = "\n\n",
        normalize: EmpgNormalize = "mean",
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_step_split(who, split, step_len, delimiter)
        check_choice(who, "normalize", normalize, EMPG_NORMALIZE)
        if k < 0 or k_f < 0:
            raise ConfigError(f"{who}: k and k_f must be >= 0, got {k}, {k_f}")
        self.k, self.k_f, self.zeta = float(k), float(k_f), float(zeta)
        self.split = split
        self.step_len = int(step_len)
        self.delimiter = delimiter
        self.normalize = normalize
        self.base = build_base_component(advantage, base, base_kwargs, EMPG_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require(*EMPG_REQUIRES, who=who)
        assert ctx.old_entropy is not None
        base = self.base(ctx)
        mask = ctx.response_mask
        dtype = torch.promote_types(base.dtype, torch.float32)
        valid = mask > 0
        entropy = torch.where(valid, ctx.old_entropy.detach().to(dtype), torch.zeros((), dtype=dtype))
        ends = step_ends(ctx, self.split, step_len=self.step_len, delimiter=self.delimiter, who=who)
        flat, counts, _first = flat_step_ids(ends, mask)
        num_steps = int(counts.sum())
        h = step_means(entropy, flat, num_steps)
        g, f = empg_modulation(h, self.k, self.k_f)
        # the next step's bonus; a row's last step has none
        is_last = torch.zeros(num_steps, dtype=torch.bool, device=h.device)
        is_last[(torch.cumsum(counts, 0) - 1)[counts > 0]] = True
        next_f = torch.where(is_last, torch.zeros_like(f), torch.roll(f, -1) if num_steps else f)
        safe = flat.clamp(min=0)
        scale = torch.where(valid, g[safe] if num_steps else torch.ones_like(entropy), torch.zeros_like(entropy))
        bonus = torch.where(valid, self.zeta * next_f[safe] if num_steps else torch.zeros_like(entropy), torch.zeros_like(entropy))
        modulated = scale * base.to(dtype) + bonus
        out = normalise(modulated, mask, self.normalize)
        self.metrics = {
            f"{self.name}/step_entropy_mean": float(h.mean()) if num_steps else 0.0,
            f"{self.name}/scale_min": float(g.min()) if num_steps else 0.0,
            f"{self.name}/scale_max": float(g.max()) if num_steps else 0.0,
            f"{self.name}/bonus_mean": masked_float(bonus, mask),
            f"{self.name}/steps_mean": float(counts.double().mean()) if ctx.batch_size else 0.0,
        }
        return out.to(base.dtype)
